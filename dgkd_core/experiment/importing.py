"""Models trained elsewhere, imported as a run's outputs: a teacher or TA that is not trained here.

    metrics = import_model("ckpt/resnet20.pth", "results/data/cifar10.pt", out_dir, cfg=run_config)

The file is read with torch.load(weights_only=True) only (dgkd_core.io.load_tensor_file): tensors
and plain values, never arbitrary objects. Its layout is recognised by `read_state_dict`:

- this project's model.pt (dgkd_core.guides.checkpoints.save_checkpoint): its `state_dict`; its recorded `model`
  and `num_classes` are checked too;
- a plain state_dict (name -> tensor), which is also what a torchvision weights file is;
- a dict holding the state_dict under `state_dict`, `model` or `net` (RepDistiller, mdistiller,
  pytorch-cifar, torchvision's reference scripts); its other entries (optimizer, epoch, accuracy)
  are ignored;

each with the `module.` (DataParallel) and `_orig_mod.` (torch.compile) key prefixes removed,
and RepDistiller's and mdistiller's ResNet, WRN and VGG key names mapped onto ours
(dgkd_core.experiment.peer_layouts). RepDistiller's `*_last.pth` also holds its options as an
argparse.Namespace, the one class the safe loader lets through.
The import checks the class count and then the architecture against the registry model, evaluates
the model on the test split as training evaluates, and writes what a trained run writes:
`model.pt` (so dgkd_core.guides.checkpoints.load_guide takes it as a guide), `metrics.json` (`"imported": true`,
the source's path and sha256, `epochs: 0`, the test accuracy as top1_last and top1_best) and a
one-row `history.csv`. Which runs are imported is the plan's business (Plan.import_source).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from dgkd_core import io
from dgkd_core.config import config_hash
from dgkd_core.data import load_prepared
from dgkd_core.device import resolve_device
from dgkd_core.errors import DgkdError
from dgkd_core.experiment.peer_layouts import LayoutMismatch, peer_layout, renamed_to_ours
from dgkd_core.guides.checkpoints import (file_fingerprint, first_non_finite, save_checkpoint,
                                          state_dict_mismatch)
from dgkd_core.io import UnreadableFile, load_tensor_file
from dgkd_core.method.models import build_model, model_family
from dgkd_core.training.evaluate import evaluate_on_test
from dgkd_core.training.history import history_csv

__all__ = ["ImportFailed", "fitted_model", "import_model", "near_chance_warning",
           "read_state_dict", "tested_import"]

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "net")  # where other projects keep the state_dict
KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel, torch.compile


class ImportFailed(DgkdError, ValueError):
    """A checkpoint cannot be imported; the one-line message names the file and why."""


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _without_prefixes(state: dict) -> dict:
    """`state` with a prefix shared by every key removed (repeatedly: `module.module.` too)."""
    changed = True
    while changed:
        changed = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: str | os.PathLike, what: str | None = None) -> tuple[dict, dict]:
    """(state_dict, about) of a checkpoint file in any accepted layout (see the module's doc).

    about: {"layout": how it was stored, "model": its recorded registry name or None,
    "num_classes": its recorded class count or None}. what: how messages name the file
    (default: its path). Raises ImportFailed for a refused, corrupt or unrecognised file."""
    what = what or str(path)
    try:
        obj = load_tensor_file(path)
    except UnreadableFile as err:
        end = "nothing in it ran" if err.refused else "replace it"
        raise ImportFailed(f"{what} {err.reason}; it was not imported ({end})") from None
    about = {"layout": None, "model": None, "num_classes": None}
    if (isinstance(obj, Mapping) and "format" in obj and isinstance(obj.get("model"), str)
            and "state_dict" in obj):
        about.update(layout="dgkd_core model.pt", model=obj["model"],
                     num_classes=obj.get("num_classes"))
        state = obj["state_dict"]
    elif _is_state_dict(obj):
        about["layout"], state = "state_dict", obj
    else:
        found = [k for k in WRAPPER_KEYS if isinstance(obj, Mapping) and _is_state_dict(obj.get(k))]
        if not found:
            keys = (f" with keys {', '.join(map(repr, list(obj)[:6]))}"
                    if isinstance(obj, Mapping) else "")
            raise ImportFailed(
                f"{what} holds no state_dict: a {type(obj).__name__}{keys}; expected a "
                f"state_dict (name -> tensor) or a dict with one under "
                f"{', '.join(map(repr, WRAPPER_KEYS))}")
        about["layout"], state = f"{{'{found[0]}': state_dict}}", obj[found[0]]
    if not _is_state_dict(state):
        raise ImportFailed(f"{what}: its state_dict is not a mapping of names to tensors")
    return _without_prefixes(dict(state)), about


def _classifier_weight(model: nn.Module) -> str | None:
    """The key of the model's last Linear layer's weight, whose rows are the classes."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return f"{names[-1]}.weight" if names else None


def _peer_classifier_weight(state: dict) -> str | None:
    """A peer layout's classifier weight: its last 2-D tensor (their layers are in forward order)."""
    matrices = [k for k, v in state.items() if v.dim() == 2]
    return matrices[-1] if matrices else None


def fitted_model(state: dict, about: dict, model_name: str, meta: dict, what: str) -> nn.Module:
    """Registry model `model_name` for the prepared data `meta`, holding `state`.

    A state_dict in a peer's key layout (dgkd_core.experiment.peer_layouts: RepDistiller's and
    mdistiller's ResNet, WRN, VGG) is renamed to ours first, and `about["layout"]` says so.
    Checks, in this order, the recorded model name, the class count (the classifier's rows,
    or the recorded count) and the architecture (every key and shape), then that every tensor
    is finite; raises ImportFailed naming `what` (the file) and the first mismatch."""
    classes, dataset = int(meta["num_classes"]), meta["name"]
    if about["model"] is not None and about["model"] != model_name:
        raise ImportFailed(f"{what} holds a {about['model']} (its recorded 'model'), not the "
                           f"{model_name} it is imported as")
    model = build_model(model_name, classes, dataset=dataset)
    peer = (None if set(state) == set(model.state_dict())
            else peer_layout(model_family(model_name), state))
    head = _classifier_weight(model) if peer is None else _peer_classifier_weight(state)
    if about["num_classes"] is not None:
        theirs, detail = int(about["num_classes"]), "its recorded 'num_classes'"
    elif head in state and state[head].dim() == 2:
        theirs, detail = int(state[head].shape[0]), f"{head} has shape {list(state[head].shape)}"
    else:
        theirs, detail = classes, ""
    if theirs != classes:
        raise ImportFailed(f"{what} has {theirs} classes ({detail}), but the prepared data "
                           f"'{dataset}' has {classes}; import a {model_name} trained on these "
                           "classes")
    if peer is not None:
        try:
            state = renamed_to_ours(state, model.state_dict(), peer)
        except LayoutMismatch as err:
            raise ImportFailed(f"{what} is not a {model_name}: {err}") from None
        about["layout"] = f"{about['layout']} with {peer} keys"
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError):  # torch's message lists every key: summarise
        raise ImportFailed(f"{what} is not a {model_name}: "
                           f"{state_dict_mismatch(model.state_dict(), state)}") from None
    bad = first_non_finite(state)
    if bad is not None:
        raise ImportFailed(f"{what} holds non-finite values (inf or NaN) in {bad!r}")
    return model


def near_chance_warning(top1: float, classes: int, what: str, cfg: dict) -> str | None:
    """A warning when an imported model scores below twice chance (top-1 in percent), else None.

    A network trained elsewhere that fails this test was almost always fed other inputs than it
    was trained on: another per-channel mean and std."""
    if top1 >= 2 * 100.0 / classes:
        return None
    ours = ("this data's own train-split statistics" if cfg.get("normalize") is None
            else f"mean {cfg['normalize']['mean']}, std {cfg['normalize']['std']}")
    return (f"{what} scores {top1:.2f}% top-1 on {classes} classes, below twice chance "
            f"({200.0 / classes:.1f}%): the likely cause is normalisation; it is evaluated with "
            f"{ours}; set the run config's normalize to the mean and std it was trained with")


def tested_import(source: str | os.PathLike, data_path: str | os.PathLike, cfg: dict,
                  what: str) -> tuple:
    """(model, data, about, test, device): checkpoint `source` fitted into cfg's model
    (fitted_model) and evaluated on the test split of `data_path` as training evaluates; logs
    near_chance_warning's warning where there is one."""
    state, about = read_state_dict(source, what)
    data = load_prepared(data_path)
    model = fitted_model(state, about, cfg["model"], data.meta, what)
    device = resolve_device(cfg["device"])
    test = evaluate_on_test(model.to(device), data, cfg, device)
    warning = near_chance_warning(test["top1"], int(data.meta["num_classes"]), what, cfg)
    if warning:
        log.warning("%s", warning)
    return model, data, about, test, device


def import_model(source: str | os.PathLike, data_path: str | os.PathLike,
                 out_dir: str | os.PathLike, *, cfg: dict, key: str | None = None,
                 expected_sha256: str | None = None) -> dict:
    """Import checkpoint `source` as the run of resolved run config `cfg` into `out_dir`.

    cfg's model, method and seed name the run; its device, fast settings, normalisation and
    eval_batch_size drive the evaluation on the test split of `data_path`, as in training.
    key: the config key that names `source` (for messages). expected_sha256: the content the
    workflow planned with; a file changed since is refused. Returns metrics.json's content
    (accuracies in percent, times in seconds); raises ImportFailed with a one-line reason."""
    start = time.time()
    what = f"{source} ({key})" if key else str(source)
    sha256 = file_fingerprint(source)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ImportFailed(f"{what} changed while the workflow ran (sha256 {sha256[:12]}, "
                           f"planned {expected_sha256[:12]}); run Snakemake again")
    model, data, about, test, device = tested_import(source, data_path, cfg, what)
    identity = {"imported": True, "source_path": str(source), "source_sha256": sha256,
                "source_layout": about["layout"]}
    out_dir = Path(out_dir)
    save_checkpoint(out_dir / "model.pt", model, cfg, data.meta,
                    {"method": cfg["method"], "guides": [], "top1_last": test["top1"],
                     **identity})
    # history.csv's test columns (dgkd_core.training.history), at epoch 0: no training ran here.
    io.atomic_write_text(history_csv([{"epoch": 0, "test_top1": test["top1"],
                                       "test_top5": test["top5"], "test_loss": test["loss"]}]),
                         out_dir / "history.csv")
    metrics = {
        "model": cfg["model"], "method": cfg["method"], "seed": cfg["seed"],
        "dataset": data.meta["name"], "num_classes": int(data.meta["num_classes"]),
        "guides": [], **identity,
        "epochs": 0,
        "top1_last": test["top1"], "top5_last": test["top5"],
        # One evaluation of a model not trained here: "best" and "last" are the same numbers.
        "top1_best": test["top1"], "top5_best": test["top5"], "best_epoch": 0,
        "test_loss": test["loss"], "test_images": test["n"],
        "reported": "the imported model's test accuracy; it was not trained here",
        "wall_time_s": time.time() - start, "train_time_s": 0.0,
        "evaluation": {"device": str(device), "bf16": test["bf16"],
                       "channels_last": test["channels_last"]},
        "config": cfg, "config_hash": config_hash(cfg),
    }
    io.atomic_write_json(metrics, out_dir / "metrics.json")
    log.info("imported %s as %s (%s): test top-1 %.2f, top-5 %.2f", what, cfg["model"],
             about["layout"], test["top1"], test["top5"])
    return metrics
