"""The resume state, `out_dir/resume.pt`: where a run stands (`TrainState`), written atomically
at every epoch's end and on a stop, read when a run starts.

It holds tensors and plain Python values only (dicts, lists, numbers, strings, None) and is read
with `torch.load(weights_only=True)`, which unpickles nothing else: a crafted file cannot run
code. It is refused and ignored like a truncated one, and the run starts from scratch.

A state of another run (other settings, guides or data, or saved by another number of ranks)
is renamed `resume.pt.other-<what>` or `resume.pt.from-<N>-ranks`, the warning says exactly
why it does not fit, and the run starts from scratch: overwriting it would lose it.

A state of this run (its identity fits) whose contents do not (a key missing, a tensor of
another shape, a non-finite weight or optimizer buffer) is renamed `resume.pt.damaged-<reason>`
and the run starts from scratch with a one-line warning naming both files: resuming it would
fail, or carry the damage into every retry, and setting it aside loses nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from dgkd_core import io
from dgkd_core.io import UnreadableFile, load_tensor_file
from dgkd_core.method.losses import SegmentKeepMasks
from dgkd_core.runtime import rng_state, set_rng_state

__all__ = ["RESUME_FILE", "TrainState", "note_step", "read_resume_state",
           "restore_resume_state", "write_resume_state"]

# The trainer's logger: these lines have always come from it, and job logs are read by its name.
log = logging.getLogger("dgkd_core.training.trainer")

RESUME_FILE = "resume.pt"


@dataclass
class TrainState:
    """Where a run stands. `epoch` to `history` go into the resume state (`keep_gen` only
    mid-epoch); `epoch_times` is rebuilt from `history`.

    A segment is the part of one epoch run in this process: all of it, or what is left of it
    after a mid-epoch resume. Its sums stay on the device until it ends (no sync per step)."""

    epoch: int = 0  # 0-based epoch in progress; == epochs when training is done
    step: int = 0  # next step within `epoch`
    sums: dict[str, float] | None = None  # per loss term: sum of (term x batch size), this epoch
    images: int = 0  # training images seen in this epoch
    train_time_s: float = 0.0  # seconds spent on training steps in this epoch
    keep_gen: torch.Generator | None = None  # the keep-mask RNG at this segment's start
    history: list[dict] = field(default_factory=list)  # history.csv's rows, one per epoch done
    epoch_times: list[float] = field(default_factory=list)  # train_time_s of each epoch done
    previous_stop: str | None = None  # why the attempt resumed from stopped; None: fresh start
    segment_start: float = 0.0  # time.perf_counter() when this segment started
    sums_dev: torch.Tensor | None = None  # float64 [n terms]: this segment's sums
    bad_step: torch.Tensor | None = None  # int64 []: first non-finite step of the segment, or -1
    last_terms: torch.Tensor | None = None  # float32 [n terms]: the last step's loss terms
    keep_masks: SegmentKeepMasks | None = None  # this segment's masks, drawn from keep_gen

    def fold_sums(self, term_names: list[str]) -> None:
        """Add the segment's device sums into `sums` (one sync) and zero them."""
        values = self.sums_dev.cpu().tolist()
        for k, v in zip(term_names, values):
            # A term missing from an older version's mid-epoch state (train top-1 came later)
            # is unknown for that epoch: NaN, not a sum over part of it.
            self.sums[k] = self.sums.get(k, math.nan) + v
        self.sums_dev.zero_()


def note_step(bad_step: torch.Tensor, step, sums: torch.Tensor, terms: torch.Tensor,
              batch_size: int, finite: torch.Tensor) -> torch.Tensor:
    """A step's device-side bookkeeping, for one run (0-d bad_step, int step, sums [n terms])
    or a horizontal group's members at once (bad_step and step [K], sums [K, n]): `terms`
    x `batch_size` added to the float64 sums (exact there: one kernel, terms.double() * B);
    returns the first non-finite step so far (-1: none), where `finite` (bool, bad_step's
    shape) says whether this step's total loss is. Noted on the device and checked when the
    segment ends: no GPU sync per step."""
    sums.add_(terms, alpha=batch_size)
    return torch.where(finite | (bad_step >= 0), bad_step, step)


def write_resume_state(path: Path, state: TrainState, *, identity: dict,
                       stop_reason: str | None, model: nn.Module,
                       optimizer: torch.optim.Optimizer, loader) -> None:
    """Write `state` with the model's, optimizer's, loader's and global RNGs' states atomically.

    identity: what the state belongs to (config hash, guide fingerprints, data checksum);
    stop_reason: why the run stops here, None at an ordinary epoch's end."""
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
        "history": state.history,
        "loader": loader.state_dict() if state.step else None,
        # mid-epoch only: a new epoch derives its keep RNG from (seed, epoch). The RNG as one
        # draw per step leaves it after `step` steps (the segment drew its masks at once).
        "keep_gen": state.keep_masks.generator_state_at(state.step) if state.step else None,
        "rng": rng_state(),
    }
    io.atomic_torch_save(payload, path)


def read_resume_state(path: Path, identity: dict, model: nn.Module | None = None,
                      optimizer: torch.optim.Optimizer | None = None) -> dict | None:
    """The resume state at `path` if it belongs to `identity`; None (with a warning) when it
    does not (then it is set aside, `identity_mismatch`), or is unreadable: truncated, or
    holding anything but tensors and plain values.

    With `model` and `optimizer`, a state that belongs to the run but is damaged (a key missing,
    a tensor of another shape, a non-finite weight or optimizer value) is renamed to
    `resume.pt.damaged-<reason>`, kept for inspection, and None is returned: the run starts
    from scratch, as resuming it would fail, or carry the damage into every retry."""
    if not path.exists():
        return None
    try:
        payload = load_tensor_file(path)
    except UnreadableFile as err:
        if not path.exists():  # another rank of this run set it aside as this one read it
            return None
        log.warning("ignoring unreadable resume state %s (it %s); starting from scratch",
                    path, err.reason)
        return None
    saved = payload.get("identity") if isinstance(payload, dict) else None
    if saved != identity:
        problem, suffix = identity_mismatch(saved, identity)
        aside = _set_aside(path, suffix)
        log.warning("resume state %s %s; set aside as %s; starting from scratch", path,
                    problem, aside)
        return None
    if model is not None and optimizer is not None:
        damage = resume_state_damage(payload, model, optimizer)
        if damage is not None:
            reason, problem = damage
            aside = _set_aside(path, f"damaged-{reason}")
            log.warning("resume state %s is damaged (%s); set aside as %s; starting from "
                        "scratch", path, problem, aside)
            return None
    return payload


# Each part of a resume state's identity: (its words in a warning, its set-aside suffix).
_IDENTITY_PARTS = {"config_hash": ("settings", "settings"), "guides": ("guides", "guides"),
                   "data_checksum": ("data", "data"),
                   "guide_tables": ("guide-table use", "guide-tables")}


def identity_mismatch(saved, identity: dict) -> tuple[str, str]:
    """(why a resume state of identity `saved` does not fit this run's `identity`, the suffix
    of the name it is set aside under). Set aside, not overwritten: it may be resumed where it
    fits (renamed back to resume.pt), e.g. by as many ranks as saved it."""
    if not isinstance(saved, dict):
        return "holds no run identity", "other-run"
    saved_ranks, ranks = saved.get("world_size", 1), identity.get("world_size", 1)
    if saved_ranks != ranks:
        # Per-rank BatchNorm statistics and each rank's share of a batch make a step depend
        # on the number of ranks: the state is not this run's to go on from.
        saved_text = f"{saved_ranks} rank{'s' * (saved_ranks != 1)}"
        return (f"was saved by {saved_text} and this run has {ranks}, so it does not fit (a "
                f"step depends on the number of ranks); to go on from it, rename it back to "
                f"{RESUME_FILE} and start {saved_text}"), f"from-{saved_text.replace(' ', '-')}"
    differ = [part for key, part in _IDENTITY_PARTS.items()
              if saved.get(key) != identity.get(key)] or [_IDENTITY_PARTS["config_hash"]]
    return (f"belongs to other {' and '.join(words for words, _ in differ)} than this run's",
            f"other-{differ[0][1]}")


_PAYLOAD_KEYS = ("model", "optimizer", "epoch", "step", "sums", "images", "train_time_s",
                 "history", "loader", "keep_gen", "rng")


def resume_state_damage(payload: dict, model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> tuple[str, str] | None:
    """(reason for the file name, one-line problem) if `payload` cannot be resumed into `model`
    and `optimizer` as it is, else None: every key, every tensor's shape, every value finite."""
    missing = [key for key in _PAYLOAD_KEYS if key not in payload]
    if missing:
        return "missing", f"it lacks {', '.join(missing)}"
    wrong = [key for key in ("epoch", "step", "images")
             if not isinstance(payload[key], int) or isinstance(payload[key], bool)
             or payload[key] < 0]
    if wrong or not isinstance(payload["history"], list) or not isinstance(payload["rng"], dict):
        return "value", f"{', '.join(wrong) or 'history or rng'} has a value of the wrong kind"
    rng = payload["rng"]
    if not isinstance(rng.get("torch"), torch.Tensor) or not isinstance(rng.get("python"), list):
        return "value", "its rng state lacks the torch or Python generator"
    if payload["step"] and (payload["loader"] is None or payload["keep_gen"] is None):
        return "missing", "it stops mid-epoch but lacks the loader's or keep-mask RNG's state"
    if not isinstance(payload["model"], dict) or not isinstance(payload["optimizer"], dict):
        return "value", "its model or optimizer state is not a mapping"
    return (_model_damage(payload["model"], model.state_dict())
            or _optimizer_damage(payload["optimizer"], optimizer))


def _model_damage(saved: dict, expected: dict) -> tuple[str, str] | None:
    missing = [key for key in expected if key not in saved]
    if missing:
        return "missing", f"its model state lacks {', '.join(missing[:3])}"
    unexpected = [str(key) for key in saved if key not in expected]
    if unexpected:
        return "unexpected", f"its model state has keys the run's model lacks: {unexpected[:3]}"
    for key, want in expected.items():
        if isinstance(want, torch.Tensor) and not isinstance(saved[key], torch.Tensor):
            return "value", f"its model entry {key!r} is not a tensor"
        problem = _tensor_damage(saved[key], tuple(want.shape), f"model tensor {key!r}")
        if problem:
            return problem
    return None


def _optimizer_damage(saved: dict, optimizer: torch.optim.Optimizer) -> tuple[str, str] | None:
    """Each saved per-parameter buffer (momentum, Adam's averages) has its parameter's shape
    and is finite; scalars (a step count) need only be finite."""
    per_param, groups = saved.get("state"), saved.get("param_groups")
    if not isinstance(per_param, dict) or not isinstance(groups, list):
        return "missing", "its optimizer state lacks 'state' or 'param_groups'"
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if [len(g.get("params", ())) if isinstance(g, dict) else None for g in groups] != sizes:
        return "shape", f"its optimizer has other parameter groups than the run's ({sizes})"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, buffers in per_param.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(
                buffers, dict):
            return "shape", f"its optimizer state has an entry {index!r} for no parameter"
        for name, value in buffers.items():
            per_element = isinstance(value, torch.Tensor) and value.dim() > 0
            shape = tuple(params[index].shape) if per_element else ()
            problem = _tensor_damage(value, shape, f"optimizer buffer {name!r} of parameter "
                                                   f"{index}")
            if problem:
                return problem
    return None


def _tensor_damage(value, shape: tuple, what: str) -> tuple[str, str] | None:
    if not isinstance(value, torch.Tensor):
        if isinstance(value, float) and not math.isfinite(value):
            return "nonfinite", f"its {what} is {value}"
        return None  # plain values (a step count) are not tensors
    if tuple(value.shape) != shape:
        return "shape", f"its {what} has shape {list(value.shape)}, the run's {list(shape)}"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return "nonfinite", f"its {what} holds inf or NaN"
    return None


def _set_aside(path: Path, suffix: str) -> Path:
    """Rename `path` to `<name>.<suffix>` (numbered if that exists); the new path."""
    aside = path.with_name(f"{path.name}.{suffix}")
    number = 1
    while aside.exists():
        aside, number = path.with_name(f"{path.name}.{suffix}.{number}"), number + 1
    try:
        path.rename(aside)
    except FileNotFoundError:  # another rank of the run set it aside first
        pass
    return aside


def restore_resume_state(payload: dict, state: TrainState, model: nn.Module,
                         optimizer: torch.optim.Optimizer, loader) -> str:
    """Load `read_resume_state`'s payload into the run; returns why the previous attempt
    stopped."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state.epoch, state.step = payload["epoch"], payload["step"]
    state.sums, state.images = payload["sums"], payload["images"]
    state.train_time_s = payload["train_time_s"]
    state.history.extend(payload["history"])
    if state.step:
        loader.load_state_dict(payload["loader"])
        state.keep_gen = torch.Generator()
        state.keep_gen.set_state(payload["keep_gen"])
    set_rng_state(payload["rng"])
    return payload.get("stop_reason") or "killed without notice, resumed from the last epoch"
