"""Final model checkpoints (`model.pt`): writing, reading, and loading one as a frozen guide.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dgkd_core import io
from dgkd_core.config import config_hash
from dgkd_core.errors import TrainingError
from dgkd_core.io import UnreadableFile, load_tensor_file
from dgkd_core.method.models import build_model

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, model: nn.Module, cfg: dict, meta: dict, extra: dict) -> None:
    """The final model checkpoint: weights (on the CPU) plus what a guide check needs.

    cfg: the resolved run config; meta: the prepared data's meta; extra: more top-level keys."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    io.atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": state,
            "model": cfg["model"],
            "dataset": meta["name"],
            "data_checksum": meta.get("checksum"),
            "num_classes": int(meta["num_classes"]),
            "config_hash": config_hash(cfg),
            "config": cfg,
            **extra,
        },
        path,
    )


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a final checkpoint; a truncated or corrupt file raises TrainingError naming it."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist; train that model first")
    try:
        ckpt = load_tensor_file(path)
    except UnreadableFile as err:
        end = ("so it was not loaded; it is not a dgkd_core model checkpoint: delete it"
               if err.refused else "delete it")
        raise TrainingError(f"checkpoint {path} {err.reason}; {end} and train that model "
                            "again") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "model", "num_classes"} <= ckpt.keys():
        raise TrainingError(f"checkpoint {path} is not a dgkd_core model checkpoint")
    return ckpt


def load_guide(path: str | os.PathLike, meta: dict, device: torch.device,
               ckpt: dict | None = None) -> nn.Module:
    """Build a frozen guide from its checkpoint, after checking it fits this dataset.

    ckpt: `load_checkpoint(path)`'s result, where the caller has it already."""
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    if int(ckpt["num_classes"]) != int(meta["num_classes"]):
        raise TrainingError(
            f"guide {path} was trained with {ckpt['num_classes']} classes on "
            f"'{ckpt.get('dataset')}', but this run's dataset '{meta['name']}' has "
            f"{meta['num_classes']}; use guides trained on the same dataset"
        )
    theirs, ours = ckpt.get("data_checksum"), meta.get("checksum")
    if theirs and ours and theirs != ours:
        raise TrainingError(
            f"guide {path} was trained on dataset '{ckpt.get('dataset')}' (checksum {theirs[:12]}), "
            f"not on this run's '{meta['name']}' (checksum {ours[:12]}); use guides trained on "
            "the same prepared data"
        )
    model = build_model(ckpt["model"], int(ckpt["num_classes"]), dataset=ckpt.get("dataset"))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError):  # torch's message lists every key: summarise
        raise TrainingError(
            f"checkpoint {path} does not fit its architecture {ckpt['model']!r}: "
            f"{state_dict_mismatch(model.state_dict(), ckpt['state_dict'])}; train that model "
            "again"
        ) from None
    bad = first_non_finite(ckpt["state_dict"])
    if bad is not None:
        raise TrainingError(f"checkpoint {path} holds non-finite values (inf or NaN) in {bad!r}; "
                            "train that model again")
    return model.to(device)


def first_non_finite(state: Mapping[str, Any]) -> str | None:
    """The key of the first floating-point tensor of `state` (a state_dict) that holds inf or
    NaN, or None when all are finite.

    One reduction per tensor and one device sync in all; the key is looked for only when some
    tensor is bad. The tensors must be on one device."""
    floats = [(k, v) for k, v in state.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not floats:
        return None
    finite = torch.stack([v.isfinite().all() for _, v in floats])
    if bool(finite.all()):
        return None
    return next(k for (k, _), ok in zip(floats, finite.tolist()) if not ok)


def state_dict_mismatch(expected: Mapping[str, Any], given: Any) -> str:
    """One line on how state_dict `given` differs from `expected` (a model's own): its first
    missing key, unexpected key or shape mismatch, and how many differences there are."""
    if not isinstance(given, Mapping):
        return f"its state_dict is a {type(given).__name__}, not a mapping of tensors"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} has shape {list(getattr(given[k], 'shape', []))}, the model's is "
              f"{list(expected[k].shape)}" for k in expected
              if k in given and getattr(given[k], "shape", None) != expected[k].shape]
    found = ([f"missing key {k!r}" for k in missing[:1]]
             + [f"unexpected key {k!r}" for k in unexpected[:1]] + shapes[:1])
    if not found:
        return "its tensors cannot be loaded into the model"
    total = len(missing) + len(unexpected) + len(shapes)
    more = f" ({total} differences in all)" if total > 1 else ""
    return ", ".join(found) + more


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes: a retrained guide (same name and size) must not match."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def weights_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (hex) of a checkpoint's weights alone: each state_dict entry's name, dtype, shape
    and bytes, in order. Equal weights give equal fingerprints whatever else the file records,
    so a run that is not kept can still be compared with another (the campaign's students)."""
    digest = hashlib.sha256()
    for key, tensor in load_checkpoint(path)["state_dict"].items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_writable_dir(path: Path) -> None:
    """Make `path` and write and remove a probe file in it, so that a file in its place or a
    folder without write access fails now, in one line, not after an epoch has trained."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        in_the_way = next((p for p in (path, *path.parents) if p.is_file()), None)
        cause = (f"{in_the_way} is a file, not a folder" if in_the_way is not None
                 else err.strerror or str(err))
        raise TrainingError(f"out_dir {path} cannot be written: {cause}") from None
