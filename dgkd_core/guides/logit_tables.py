"""Guide tables: a frozen guide's logits for every view of every training image, computed once.

With the pad-`pad` random crop and horizontal flip of the cached data path
(`data.augment.crop_flip`), a training image has exactly `views_per_image(pad)` possible views:
(2·pad+1)² offsets × 2 flips, 162 for pad 4 (the numbering is data.augment's). A guide in eval mode gives each view the same
logits whatever batch it is in, so a student can look them up instead of running its guides.

    table = build_guide_table(guide, images, normalize)   # [N, V, C]
    save_guide_table(path, table, ...); GuideTable = load_guide_table(path, ...)
    logits = GuideTable.lookup(rows)                     # rows: int64 [B], data.view_rows()

Row `i·V + v` of the flattened table is image i under view v, where
`v = (dy·(2·pad+1) + dx)·2 + flip` and (dy, dx, flip) are `draw_augment_params`' numbers; the
train loader yields those rows with each batch (`TensorLoader(with_views=True)`), as a device
tensor, so a CUDA graph's step gathers from the table like any other kernel.

A table file records the sha256 of the guide checkpoint and the checksum of the prepared data
it was built from, the normalisation its inputs had, and the guide's model and seed; a run given
a table that does not fit its guide, data or normalisation refuses it in one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import nullcontext
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from dgkd_core import io
from dgkd_core.config import resolve_run_config
from dgkd_core.data import (CROP_PAD, Normalizer, crop_flip, load_prepared, view_params,
                            views_per_image)
from dgkd_core.errors import TrainingError
from dgkd_core.guides.checkpoints import file_fingerprint, load_checkpoint, load_guide
from dgkd_core.guides.prepared import prepare_guide
from dgkd_core.runtime import fast_settings, pick_device
from dgkd_core.schema import ConfigError

__all__ = ["GUIDE_TABLE_FORMAT", "GuideTable", "aligned_tables", "build_guide_table",
           "load_guide_table", "make_guide_table", "save_guide_table"]

log = logging.getLogger("dgkd_core.guides.logit_tables")

GUIDE_TABLE_FORMAT = 2  # 2: the record holds the table's sha256 (`table_sha256`)
_KIND = "dgkd_core guide table"
_TABLE_DTYPES = ("float32", "bfloat16")
_RECORD_KEYS = ("format", "guide_checkpoint", "guide_sha256", "guide_model", "guide_seed",
                "dataset", "data_checksum", "num_images", "views_per_image", "num_classes", "pad",
                "normalization", "dtype", "table", "table_sha256")


def build_guide_table(guide: nn.Module, images_uint8: torch.Tensor, normalize, *, pad: int = 4,
                      batch_size: int = 1024, bf16: bool = False) -> torch.Tensor:
    """Logits [N, V, C] of `guide` for every view of every image (V = views_per_image(pad)).

    guide: a frozen guide in eval mode on the images' device (`dgkd_core.guides.prepared.prepare_guide`);
    images_uint8: [N,3,H,W] uint8 training images; normalize: uint8 batch -> the guide's input
    (`data.augment.Normalizer`, the run's normalisation and memory format); batch_size: views per
    forward pass (rounded down to whole images, at least one image); bf16: run under bf16
    autocast (CUDA), as the training step does, and store bf16. Float32 otherwise."""
    n = images_uint8.shape[0]
    per_image = views_per_image(pad)
    device = images_uint8.device
    all_views = torch.arange(per_image, device=device)
    dy_v, dx_v, flip_v = view_params(all_views, pad)
    chunk = max(1, batch_size // per_image)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext())
    table = None
    guide.eval()
    with torch.inference_mode(), autocast:
        for lo in range(0, n, chunk):
            block = images_uint8[lo:lo + chunk]
            b = block.shape[0]
            views = crop_flip(block.repeat_interleave(per_image, dim=0), dy_v.repeat(b),
                              dx_v.repeat(b), flip_v.repeat(b), pad)
            logits = guide(normalize(views))
            if table is None:
                dtype = torch.bfloat16 if bf16 else torch.float32
                table = torch.empty(n, per_image, logits.shape[1], dtype=dtype, device=device)
            table[lo:lo + b] = logits.view(b, per_image, -1).to(table.dtype)
    return table


def make_guide_table(guide_checkpoint: str | os.PathLike, data_path: str | os.PathLike,
                     out_path: str | os.PathLike, config: dict | None = None,
                     batch_size: int | None = None) -> dict:
    """Build the table of guide checkpoint `guide_checkpoint` on prepared data `data_path` and
    write it to `out_path`, with the device, precision, memory format, folding and
    normalisation of run config `config` (that of the runs the table serves; None: defaults).

    batch_size: views per forward pass (default: 8192 on CUDA, where large batches keep a big
    GPU busy; the config's eval_batch_size elsewhere). Returns the table's record plus
    `views_per_s` (images × views per second of the build)."""
    ckpt = load_checkpoint(guide_checkpoint)
    # The table serves runs of any student: a config without one (the command line's default)
    # is completed with the guide's own model, which only the config's check reads.
    cfg = resolve_run_config({"model": ckpt["model"], **(config or {})})
    device = pick_device(cfg)
    fast = fast_settings(cfg, device)
    data = load_prepared(data_path)
    if data.is_stream:
        raise TrainingError(f"{data_path} is streamed from disk; guide tables are for cached "
                            "data (set guide_tables: false)")
    normalization = cfg["normalize"] or {"mean": data.mean, "std": data.std}
    guide = prepare_guide(load_guide(guide_checkpoint, data.meta, device, ckpt=ckpt),
                          fold=fast["fold_guides"], channels_last=fast["channels_last"],
                          dtype=torch.bfloat16 if fast["bf16"] else torch.float32)
    normalize = Normalizer(normalization["mean"], normalization["std"], device, torch.float32,
                           fast["channels_last"])
    images = data.train_images.to(device)
    start = time.perf_counter()
    table = build_guide_table(guide, images, normalize, pad=CROP_PAD,
                              batch_size=batch_size or _build_batch_size(cfg, device),
                              bf16=fast["bf16"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    record = save_guide_table(out_path, table, guide_checkpoint=str(guide_checkpoint),
                              data_meta=data.meta, normalization=normalization, pad=CROP_PAD,
                              build_s=build_s)
    record["views_per_s"] = table.shape[0] * table.shape[1] / max(build_s, 1e-9)
    log.info("guide table of %s: %d images x %d views in %.1f s (%.0f views/s) -> %s",
             guide_checkpoint, table.shape[0], table.shape[1], build_s, record["views_per_s"],
             out_path)
    return record


def aligned_tables(tables: Sequence[str | os.PathLike | None], n_guides: int
                    ) -> list[str | None]:
    """One entry per guide: its table's path, or None (run inline). Empty: all inline."""
    if not tables:
        return [None] * n_guides
    if len(tables) != n_guides:
        raise ConfigError(f"{len(tables)} guide tables for {n_guides} guide checkpoints; give "
                          "one per guide (None where a guide runs inline)")
    return [None if t is None else str(t) for t in tables]


def _build_batch_size(cfg: dict, device: torch.device) -> int:
    return max(8192, cfg["eval_batch_size"]) if device.type == "cuda" else cfg["eval_batch_size"]


def table_checksum(table: torch.Tensor) -> str:
    """sha256 of a table's bytes (any dtype; bf16 is hashed as raw 16-bit words)."""
    raw = table.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(raw)).hexdigest()


def _non_finite_count(table: torch.Tensor, rows_per_chunk: int = 256) -> int:
    """How many values of `table` are inf or NaN, a block of images at a time: a mask of a whole
    CIFAR-100 table would take another 3 GB. A float64 sum (which no finite float32 or bf16
    table can overflow) is finite exactly when every value is: one fast pass for a sound table."""
    if bool(torch.isfinite(table.sum(dtype=torch.float64))):
        return 0
    return sum(int((~torch.isfinite(table[lo:lo + rows_per_chunk])).sum())
               for lo in range(0, table.shape[0], rows_per_chunk))


class GuideTable:
    """A loaded guide table: `lookup(rows)` -> logits [B, C] for int64 rows [B] (`view_rows`).

    rows_by_view: the table flattened to [N·V, C] on the training device."""

    def __init__(self, rows_by_view: torch.Tensor, meta: dict):
        self.rows_by_view = rows_by_view
        self.meta = meta

    def lookup(self, rows: torch.Tensor) -> torch.Tensor:
        return self.rows_by_view.index_select(0, rows)


def save_guide_table(path: str | os.PathLike, table: torch.Tensor, *, guide_checkpoint: str,
                     data_meta: dict, normalization: dict, pad: int, build_s: float) -> dict:
    """Write `table` [N, V, C] atomically with what it was built from; returns that record.

    normalization: {"mean": [3], "std": [3]} the guide's inputs had (0-1 scale)."""
    table = table.detach().cpu().contiguous()
    bad = _non_finite_count(table)
    if bad:  # refused here, not 18 epochs into every run that uses it
        raise TrainingError(f"the guide table of {guide_checkpoint} holds {bad} logits that are "
                            "not finite; check that checkpoint (train it again), then rebuild")
    ckpt = load_checkpoint(guide_checkpoint)
    record = {
        "kind": _KIND,
        "format": GUIDE_TABLE_FORMAT,
        "guide_checkpoint": str(guide_checkpoint),
        "guide_sha256": file_fingerprint(guide_checkpoint),
        "guide_model": ckpt["model"],
        "guide_seed": (ckpt.get("config") or {}).get("seed"),
        "dataset": data_meta["name"],
        "data_checksum": data_meta.get("checksum"),
        "num_images": int(table.shape[0]),
        "views_per_image": int(table.shape[1]),
        "num_classes": int(table.shape[2]),
        "pad": int(pad),
        "normalization": {"mean": [float(v) for v in normalization["mean"]],
                          "std": [float(v) for v in normalization["std"]]},
        "dtype": str(table.dtype).removeprefix("torch."),
        "build_s": float(build_s),
        "table_sha256": table_checksum(table),
    }
    io.atomic_torch_save({**record, "table": table}, path)
    return record


def load_guide_table(path: str | os.PathLike, *, guide_checkpoint: str | os.PathLike,
                     data_meta: dict, normalization: dict, pad: int,
                     device: torch.device) -> GuideTable:
    """The table at `path` on `device`, after checking it was built from this guide checkpoint
    (sha256), this prepared data (checksum, image count), this normalisation and this pad.
    Raises TrainingError in one line naming what differs and how to rebuild it."""
    path = Path(path)
    rebuild = (f"rebuild it (python -m dgkd_core guide-table --guide {guide_checkpoint} "
               f"--data <prepared data> --out {path}), or run without guide tables")
    if not path.is_file():
        raise TrainingError(f"guide table {path} does not exist; {rebuild}")
    start = time.perf_counter()
    try:
        payload = io.load_tensor_file(path)
    except io.UnreadableFile as err:
        raise TrainingError(f"guide table {path} {err.reason}; delete it and {rebuild}") from None
    if not isinstance(payload, dict) or payload.get("kind") != _KIND:
        raise TrainingError(f"{path} is not a dgkd_core guide table; {rebuild}")
    problem = _contents_problem(payload)
    if problem:
        raise TrainingError(f"guide table {path} is damaged or outdated: {problem}; delete it "
                            f"and {rebuild}")
    problem = _mismatch(payload, guide_checkpoint, data_meta, normalization, pad)
    if problem:
        raise TrainingError(f"guide table {path} does not fit this run: {problem}; {rebuild}")
    table = payload.pop("table")
    rows = table.to(device).reshape(-1, table.shape[-1])
    log.info("guide table %s: %d images x %d views x %d classes (%s), %.1f s to read and place",
             path, *table.shape, payload["dtype"], time.perf_counter() - start)
    return GuideTable(rows, payload)


def _contents_problem(payload: dict) -> str | None:
    """What makes a table file's own contents wrong (keys, format, shape, dtype, checksum,
    finiteness), or None; checked before its record is trusted."""
    missing = [key for key in _RECORD_KEYS if key not in payload]
    if missing:
        return f"its record lacks {', '.join(missing)}"
    if payload["format"] != GUIDE_TABLE_FORMAT:
        return f"it has format {payload['format']!r}, this code reads {GUIDE_TABLE_FORMAT}"
    table = payload["table"]
    if not isinstance(table, torch.Tensor):
        return f"its table is not a tensor but a {type(table).__name__}"
    recorded = [payload["num_images"], payload["views_per_image"], payload["num_classes"]]
    if list(table.shape) != recorded:
        return f"its table has shape {list(table.shape)}, its record says {recorded}"
    dtype = str(table.dtype).removeprefix("torch.")
    if dtype != payload["dtype"] or dtype not in _TABLE_DTYPES:
        return f"its table has dtype {dtype}, its record says {payload['dtype']}"
    if table_checksum(table) != payload["table_sha256"]:
        return "its table's checksum differs from the one recorded when it was built"
    bad = _non_finite_count(table)
    if bad:
        return f"its table holds {bad} values that are not finite"
    return None


def _mismatch(payload: dict, guide_checkpoint, data_meta: dict, normalization: dict,
              pad: int) -> str | None:
    """What makes a table's record differ from this run's guide and data, or None."""
    sha = file_fingerprint(guide_checkpoint)
    if payload["guide_sha256"] != sha:
        seed = (load_checkpoint(guide_checkpoint).get("config") or {}).get("seed")
        return (f"it was built from another guide ({payload['guide_model']}, seed "
                f"{payload['guide_seed']}, sha256 {payload['guide_sha256'][:12]}), not from "
                f"{guide_checkpoint} (seed {seed}, sha256 {sha[:12]})")
    if payload["data_checksum"] != data_meta.get("checksum"):
        return (f"it was built on dataset '{payload['dataset']}' (checksum "
                f"{str(payload['data_checksum'])[:12]}), not on this run's "
                f"'{data_meta['name']}' (checksum {str(data_meta.get('checksum'))[:12]})")
    if payload["num_images"] != int(data_meta["num_train"]):
        return (f"it has {payload['num_images']} images, the training set "
                f"{data_meta['num_train']}")
    if payload["pad"] != pad or payload["views_per_image"] != views_per_image(pad):
        return f"it holds the views of pad {payload['pad']}, this run crops with pad {pad}"
    ours = {"mean": [float(v) for v in normalization["mean"]],
            "std": [float(v) for v in normalization["std"]]}
    if payload["normalization"] != ours:
        return (f"its inputs were normalised with {payload['normalization']}, this run's "
                f"with {ours}")
    return None
