"""The resumable, signal-safe trainer and the Distiller that owns the frozen guides.

`train(config, data_path, out_dir, guide_checkpoints)` trains one model. Every epoch it writes
its resume state atomically (`out_dir/resume.pt`); a restarted run picks it up and ends
bit-identical to an uninterrupted one (CPU). On SIGTERM/SIGUSR1, or when the time budget runs
out, it finishes the current step, writes the resume state and exits with `EXIT_RESUMABLE`.
Final outputs (`model.pt`, `metrics.json`, `history.csv`) are written atomically at the end only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from dgkd_core import io
from dgkd_core.config import TRAINING_CODE_VERSION, config_hash, resolve_run_config
from dgkd_core.data import epoch_seed, load_prepared, make_loaders, resolve_device
from dgkd_core.evaluate import evaluate
from dgkd_core.losses import dgkd_loss, draw_keep_mask, draw_released_drop_mask, guide_term_names
from dgkd_core.models import build_model

log = logging.getLogger("dgkd_core.train")

# Exit status of a run that stopped early but left a resume state (EX_TEMPFAIL): retry it.
EXIT_RESUMABLE = 75
CHECKPOINT_FORMAT = 1
FINAL_OUTPUTS = ("model.pt", "metrics.json", "history.csv")
RESUME_FILE = "resume.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (bad guide, non-finite loss, ...). No final output is written."""


class TrainingInterrupted(SystemExit):
    """Raised after the resume state is written on a signal or an exhausted time budget."""

    def __init__(self, reason: str):
        super().__init__(EXIT_RESUMABLE)
        self.reason = reason


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: nn.Module, cfg: dict, meta: dict, extra: dict) -> None:
    """The final model checkpoint: weights plus what a guide check needs."""
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
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated zip/pickle data
        raise TrainingError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}); "
            "delete it and train that model again"
        ) from None
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
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device)


# --------------------------------------------------------------------------- distiller


class Distiller(nn.Module):
    """A student plus its frozen guides (teacher first, then TAs largest to smallest).

    The guides never train: their parameters do not require grad, they stay in eval() whatever
    `train()` is called with, and they run under inference mode.
    """

    def __init__(self, student: nn.Module, guides: Sequence[nn.Module], loss_cfg: dict):
        super().__init__()
        self.student = student
        self.guides = nn.ModuleList(guides)
        for guide in self.guides:
            guide.requires_grad_(False)
        self.loss_cfg = loss_cfg
        self.train()

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.guides.eval()
        return self

    @property
    def term_names(self) -> list[str]:
        return ["ce", *guide_term_names(len(self.guides)), "total"]

    def forward(self, images: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None):
        """images [B,3,H,W] normalised; targets [B] int64; keep [n] 0/1 or None.

        Returns (total loss, terms dict of scalar tensors named by `term_names`)."""
        student_logits = self.student(images)
        with torch.inference_mode():
            guide_logits = [guide(images) for guide in self.guides]
        # Inference tensors cannot be saved for backward: clone them out of inference mode.
        guide_logits = [g.clone() for g in guide_logits]
        return dgkd_loss(
            student_logits, guide_logits, targets,
            lam=self.loss_cfg["lam"], temperature=self.loss_cfg["temperature"],
            keep=keep, convention=self.loss_cfg["convention"],
        )


# --------------------------------------------------------------------------- helpers


def lr_at(cfg: dict, epoch: int) -> float:
    """Learning rate for a 0-based epoch; a pure function, so resuming needs no scheduler state."""
    base, sched, epochs = cfg["optimizer"]["lr"], cfg["schedule"], cfg["epochs"]
    if sched["name"] == "constant":
        return base
    if sched["name"] == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    passed = sum(epoch >= round(m * epochs) for m in sched["milestones"])
    return base * sched["gamma"] ** passed


def pick_device(cfg: dict) -> torch.device:
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run-config 'device' is cuda but no CUDA device is visible; "
                            "set device: auto or cpu")
    return resolve_device(cfg["device"])


# Which fast-path parts a device supports. channels_last also helps oneDNN's CPU convolutions
# (about 2x for these ResNets on a 2-core x86 CPU); bf16 and CUDA graphs are CUDA-only.
_FAST_ON_CPU = {"bf16": False, "channels_last": True, "cuda_graph": False}
# Every part off: the plain fp32 eager path (parity checks, debugging).
FAST_OFF = {"bf16": False, "channels_last": False, "cuda_graph": False}


def fast_settings(cfg: dict, device: torch.device) -> dict[str, bool]:
    """Resolve `fast.*` (auto/true/false) to what runs on `device`; auto = on where supported."""
    cuda = device.type == "cuda"
    return {k: (v is True or v == "auto") and (cuda or _FAST_ON_CPU[k])
            for k, v in cfg["fast"].items()}


def make_autocast(fast: dict[str, bool]):
    """bf16 autocast on CUDA when `fast["bf16"]`, else a no-op context (reusable)."""
    if not fast["bf16"]:
        return nullcontext()
    # The weight-cast cache must be off for CUDA-graph capture (PyTorch's CUDA graph notes).
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    if deterministic and torch.cuda.is_available():
        # CPU kernels are deterministic already; this call also costs seconds of imports.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every new allocation with NaN guards against reading uninitialised memory,
        # which this code never does; it would add a kernel per allocation to each step.
        torch.utils.deterministic.fill_uninitialized_memory = False


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, epoch, stream)."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream))


def environment_info(device: torch.device) -> dict:
    import torchvision

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "training_code_version": TRAINING_CODE_VERSION,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    return info


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop checks it after each step."""

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, _frame):
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- trainer


@dataclass
class _Progress:
    epoch: int = 0
    step: int = 0  # next step within `epoch`
    sums: dict | None = None  # running sums of the loss terms in this epoch
    images: int = 0
    train_time_s: float = 0.0  # time spent on training steps in this epoch
    keep_gen: torch.Generator | None = None  # keep-mask RNG, restored when resuming mid-epoch


def train(
    config: dict,
    data_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    guide_checkpoints: Sequence[str | os.PathLike] = (),
    progress: bool | None = None,
) -> dict:
    """Train one model, resuming from `out_dir/resume.pt` if a compatible one exists.

    config: a run config (docs/design.md), resolved here. data_path: a prepared data file.
    guide_checkpoints: teacher first, then TAs from largest to smallest. Returns metrics.json's
    content. Raises TrainingError / ConfigError on bad input before writing anything."""
    cfg = resolve_run_config(config)
    out_dir = Path(out_dir)
    guide_checkpoints = [str(p) for p in guide_checkpoints]
    n_guides = len(guide_checkpoints)
    loss_cfg = cfg["loss"]
    if loss_cfg["convention"] == "released_code" and loss_cfg["drop_num"] > n_guides:
        raise TrainingError(f"loss.drop_num is {loss_cfg['drop_num']} but the run has only "
                            f"{n_guides} guides")

    wall_start = time.time()
    device = pick_device(cfg)
    fast = fast_settings(cfg, device)
    seed_everything(cfg["seed"], cfg["deterministic"])
    data = load_prepared(data_path)
    meta = data.meta
    guides = [load_guide(p, meta, device) for p in guide_checkpoints]
    model = build_model(cfg["model"], data.num_classes, dataset=meta["name"]).to(device)
    memory_format = torch.channels_last if fast["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    guides = [g.to(memory_format=memory_format) for g in guides]
    distiller = Distiller(model, guides, loss_cfg)
    train_loader, test_loader = make_loaders(
        data, batch_size=cfg["batch_size"], eval_batch_size=cfg["eval_batch_size"],
        device=device, seed=cfg["seed"], augment=cfg["augment"],
        channels_last=fast["channels_last"],
    )
    if len(train_loader) == 0:
        raise TrainingError(f"batch_size {cfg['batch_size']} is larger than the training set "
                            f"({len(data.train_labels)} images); lower batch_size")
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr_at(cfg, 0), momentum=cfg["optimizer"]["momentum"],
        weight_decay=cfg["optimizer"]["weight_decay"], nesterov=cfg["optimizer"]["nesterov"],
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )
    run_hash = config_hash(cfg)
    identity = {"config_hash": run_hash, "guides": [_file_fingerprint(p) for p in guide_checkpoints],
                "data_checksum": meta.get("checksum")}
    state = _Progress()
    history: list[dict] = []
    resume_path = out_dir / RESUME_FILE
    resumed = _try_resume(resume_path, identity, model, optimizer, state, history, train_loader)
    if resumed:
        log.info("resumed from %s at epoch %d step %d (the previous attempt stopped: %s)",
                 resume_path, state.epoch + 1, state.step, resumed)

    term_names = distiller.term_names
    keep_stochastic = loss_cfg["keep_prob"] is not None and n_guides > 0
    keep_released = loss_cfg["convention"] == "released_code" and loss_cfg["drop_num"] > 0
    autocast = make_autocast(fast)
    budget = cfg["time_budget_s"]
    epoch_times: list[float] = [h["time_s"] for h in history]
    interactive = sys.stderr.isatty() if progress is None else progress

    step_fn = _make_step(distiller, optimizer, autocast, fast["cuda_graph"], device, term_names)

    with _StopFlag() as stop:
        log.info("training %s (%s, seed %d) on %s for %d epochs, %d guides, %d steps/epoch",
                 cfg["model"], cfg["method"], cfg["seed"], device, cfg["epochs"], n_guides,
                 len(train_loader))
        while state.epoch < cfg["epochs"]:
            epoch = state.epoch
            lr = lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if state.step == 0:
                train_loader.set_epoch(epoch)
                state.sums = {k: 0.0 for k in term_names}
                state.images, state.train_time_s = 0, 0.0
                keep_gen = _epoch_generator(cfg["seed"], epoch, stream="keep")
            else:
                keep_gen = state.keep_gen  # restored mid-epoch
            distiller.train()
            bar = _bar(len(train_loader), epoch, cfg["epochs"], interactive, state.step)
            t0 = time.perf_counter()
            sums_dev = torch.zeros(len(term_names), device=device, dtype=torch.float64)
            bad_step = torch.full((), -1, device=device, dtype=torch.long)
            for x, y in train_loader:
                keep = None
                if keep_stochastic:
                    keep = draw_keep_mask(n_guides, loss_cfg["keep_prob"],
                                          drop_teacher=loss_cfg["drop_teacher"], generator=keep_gen)
                elif keep_released:
                    keep = draw_released_drop_mask(n_guides, loss_cfg["drop_num"], generator=keep_gen)
                terms = step_fn(x, y, keep, lr)
                finite = torch.isfinite(terms[-1])
                bad_step = torch.where((bad_step < 0) & ~finite,
                                       torch.full_like(bad_step, state.step), bad_step)
                sums_dev += terms.double() * y.shape[0]
                state.images += y.shape[0]
                state.step += 1
                if device.type == "cpu" and not bool(finite):
                    _raise_non_finite(epoch, state.step - 1, terms, term_names, resume_path)
                if bar is not None:
                    bar.update(1)
                elapsed = time.perf_counter() - t0
                over_budget = budget is not None and _out_of_time(
                    wall_start, budget, epoch_times, elapsed, state.step, len(train_loader))
                if stop.reason or over_budget:
                    reason = stop.reason or f"time budget of {budget:.0f} s nearly spent"
                    if int(bad_step) >= 0:
                        _raise_non_finite(epoch, int(bad_step), terms, term_names, resume_path)
                    state.train_time_s += elapsed
                    _accumulate(state, sums_dev, term_names)
                    state.keep_gen = keep_gen
                    _save_resume(resume_path, identity, model, optimizer, state, history,
                                 train_loader, keep_gen, reason)
                    if bar is not None:
                        bar.close()
                    log.warning("stopping early (%s): resume state written to %s; run again "
                                "to continue", reason, resume_path)
                    raise TrainingInterrupted(reason)
            if bar is not None:
                bar.close()
            if int(bad_step) >= 0:
                _raise_non_finite(epoch, int(bad_step), terms, term_names, resume_path)
            state.train_time_s += time.perf_counter() - t0
            _accumulate(state, sums_dev, term_names)
            test = evaluate(model, test_loader, bf16=fast["bf16"])
            row = {"epoch": epoch + 1, "lr": lr}
            row.update({f"train_{k}": state.sums[k] / max(state.images, 1) for k in term_names})
            row.update({"test_top1": test["top1"], "test_top5": test["top5"],
                        "img_s": state.images / max(state.train_time_s, 1e-9),
                        "time_s": state.train_time_s})
            history.append(row)
            epoch_times.append(state.train_time_s)
            log.info("epoch %3d/%d  lr %.4g  %s  test top1 %.2f top5 %.2f  %.0f img/s  %.1f s",
                     epoch + 1, cfg["epochs"], lr,
                     "  ".join(f"{k} {row['train_' + k]:.4f}" for k in term_names),
                     test["top1"], test["top5"], row["img_s"], row["time_s"])
            state.epoch, state.step = epoch + 1, 0
            reason = None
            if stop.reason or (budget is not None and state.epoch < cfg["epochs"]
                               and _out_of_time(wall_start, budget, epoch_times, 0.0, 0, 1)):
                reason = stop.reason or f"time budget of {budget:.0f} s nearly spent"
            _save_resume(resume_path, identity, model, optimizer, state, history, train_loader,
                         None, reason)
            if reason:
                log.warning("stopping after epoch %d (%s): resume state written to %s",
                            state.epoch, reason, resume_path)
                raise TrainingInterrupted(reason)

    metrics = _final_metrics(cfg, meta, history, device, fast, guide_checkpoints, wall_start,
                             resumed, graph_fallback=getattr(step_fn, "disabled_reason", None))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "model.pt", model, cfg, meta,
                    {"method": cfg["method"], "guides": guide_checkpoints,
                     "top1_last": metrics["top1_last"]})
    io.atomic_write_text(_history_csv(history), out_dir / "history.csv")
    io.atomic_write_json(metrics, out_dir / "metrics.json")
    resume_path.unlink(missing_ok=True)
    log.info("done: %s top-1 %.2f (last epoch), best %.2f at epoch %d",
             cfg["model"], metrics["top1_last"], metrics["top1_best"], metrics["best_epoch"])
    return metrics


def _make_step(distiller, optimizer, autocast, use_graph, device, term_names):
    """Return step(x, y, keep, lr) -> tensor of the loss terms (in `term_names` order)."""
    eager = _EagerStep(distiller, optimizer, autocast, term_names)
    if use_graph:
        from dgkd_core.fast import CudaGraphStep

        return CudaGraphStep.or_fallback(eager, distiller, optimizer, device)
    return eager


class _EagerStep:
    def __init__(self, distiller, optimizer, autocast, term_names):
        self.distiller, self.optimizer, self.autocast = distiller, optimizer, autocast
        self.term_names = term_names

    def forward_backward(self, x, y, keep):
        with self.autocast:
            total, terms = self.distiller(x, y, keep)
        total.backward()
        return torch.stack([terms[k].detach().float() for k in self.term_names])

    def __call__(self, x, y, keep, lr):
        self.optimizer.zero_grad(set_to_none=True)
        if keep is not None:
            keep = keep.to(x.device, non_blocking=True)
        out = self.forward_backward(x, y, keep)
        self.optimizer.step()
        return out


def _accumulate(state: _Progress, sums_dev: torch.Tensor, term_names: list[str]) -> None:
    values = sums_dev.cpu().tolist()
    for k, v in zip(term_names, values):
        state.sums[k] += v
    sums_dev.zero_()


def _raise_non_finite(epoch, step, terms, term_names, resume_path):
    values = ", ".join(f"{k}={v:.4g}" for k, v in zip(term_names, terms.float().cpu().tolist()))
    kept = (f"the last good resume state ({resume_path}) is kept" if resume_path.exists()
            else "no resume state had been written yet")
    raise TrainingError(
        f"non-finite loss at epoch {epoch + 1}, step {step + 1} (last step's terms: {values}); "
        f"{kept}. Lower the learning rate or check the data and guides."
    )


def _out_of_time(wall_start, budget, epoch_times, elapsed, steps_done, steps_total) -> bool:
    """True when finishing the next unit of work would likely overrun the time budget."""
    used = time.time() - wall_start
    if steps_done:  # mid-epoch: stop when the remaining steps of this epoch will not fit
        per_step = elapsed / steps_done
        remaining = per_step * (steps_total - steps_done)
    else:
        remaining = max(epoch_times[-3:]) if epoch_times else 0.0
    margin = max(0.05 * budget, 10.0)
    return used + remaining + margin > budget


def _file_fingerprint(path: str) -> str:
    """sha256 of a guide checkpoint: a retrained guide (same name and size) must not match."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _save_resume(path, identity, model, optimizer, state, history, loader, keep_gen,
                 stop_reason=None):
    payload = {
        "identity": identity,
        "stop_reason": stop_reason,  # logged on resume: a retried job's log is cleared
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "sums": state.sums,
        "images": state.images,
        "train_time_s": state.train_time_s,
        "history": history,
        "loader": loader.state_dict() if state.step else None,
        "keep_gen": keep_gen.get_state() if keep_gen is not None else None,
        "rng": _rng_state(),
    }
    io.atomic_torch_save(payload, path)


def _try_resume(path, identity, model, optimizer, state, history, loader) -> str | None:
    """Load a compatible resume state; returns why the previous attempt stopped, or None."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        log.warning("ignoring unreadable resume state %s (%s); starting from scratch", path, err)
        return None
    if payload.get("identity") != identity:
        log.warning("resume state %s belongs to other settings, guides or data; starting from "
                    "scratch", path)
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state.epoch, state.step = payload["epoch"], payload["step"]
    state.sums, state.images = payload["sums"], payload["images"]
    state.train_time_s = payload["train_time_s"]
    history.extend(payload["history"])
    if state.step:
        loader.load_state_dict(payload["loader"])
        state.keep_gen = torch.Generator()
        state.keep_gen.set_state(payload["keep_gen"])
    _set_rng_state(payload["rng"])
    return payload.get("stop_reason") or "killed without notice, resumed from the last epoch"


def _bar(total, epoch, epochs, interactive, initial):
    if not interactive:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                unit="step", dynamic_ncols=True)


def _history_csv(history: list[dict]) -> str:
    import csv
    import io as _io

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _final_metrics(cfg, meta, history, device, fast, guides, wall_start, resumed,
                   graph_fallback: str | None = None) -> dict:
    best = max(history, key=lambda h: h["test_top1"])
    last = history[-1]
    total_images = sum(h["img_s"] * h["time_s"] for h in history)
    total_train_s = sum(h["time_s"] for h in history)
    return {
        "model": cfg["model"],
        "method": cfg["method"],
        "seed": cfg["seed"],
        "dataset": meta["name"],
        "num_classes": int(meta["num_classes"]),
        "guides": guides,
        "epochs": cfg["epochs"],
        "top1_last": last["test_top1"],
        "top5_last": last["test_top5"],
        # The test set is not a validation set: the best epoch is reported, labelled, never
        # used to pick the model. The saved model is the last epoch's.
        "top1_best": best["test_top1"],
        "top5_best": best["test_top5"],
        "best_epoch": best["epoch"],
        "reported": "last epoch (top1_last); best-epoch values are for reference only",
        "wall_time_s": time.time() - wall_start,
        "train_time_s": total_train_s,
        "img_per_s": total_images / max(total_train_s, 1e-9),
        "resumed": bool(resumed),
        "config": cfg,
        "config_hash": config_hash(cfg),
        "determinism": {"deterministic": cfg["deterministic"], "fast": fast,
                        # why the CUDA graph was given up for the eager step, if it was
                        "cuda_graph_fallback": graph_fallback,
                        # CPU: always. CUDA: with `deterministic`, checked on an H200 (the
                        # resume and same-seed tests of tests/test_train.py, 2026-11-28).
                        "bit_identical_resume": device.type == "cpu" or cfg["deterministic"]},
        "versions": environment_info(device),
        "device": str(device),
        "data_checksum": meta.get("checksum"),
    }
