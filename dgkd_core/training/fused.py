"""Fused training: several models trained in one process, in lockstep (horizontal fusion).

    FusedTrainer(members).run()       # members: {config, data, out_dir, guides, guide_tables}
    train_fused(members)              # the same

Each member is a whole `Trainer`: its own loader and batch stream, guides (or guide tables),
optimizer, keep-mask RNG, learning-rate schedule, resume state and outputs (`model.pt`,
`metrics.json`, `history.csv`) at its own out_dir. Its maths is its solo maths; what the group
adds is:

- one process, and one loaded copy of each prepared data file;
- lockstep: each round runs every unfinished member's current epoch, their steps interleaved
  (member 1's step k, member 2's step k, ...); a member with fewer steps left ends its epoch and
  waits for the round to end;
- one StopFlag: after every step the group asks the members that stepped whether they must stop
  (a signal, the workflow gone, or a member's time budget); if one must, every member saves its
  resume state at that step boundary and the group raises TrainingInterrupted (exit 75). A
  restart resumes every member; one already at its end only writes its outputs;
- the end: every member's outputs first, then every resume state removed, so that a kill in
  between leaves each member resumable at its end, not retrained;
- metrics.json's `fused_group`: {"members": [every member's out_dir], "mechanism": ...}, and
  `cuda_graph_fallback` (why) where a horizontal group's CUDA graph could not be captured.

The mechanism (docs/performance.md, "Fused training"): `cuda_streams` on CUDA, where each
member's work, its captured CUDA-graph step included, runs on a CUDA stream of its own, so
kernels of different members overlap on the GPU; `sequential` on a CPU (or when asked for): the
members' steps one after another on one stream, bit-identical to training each alone;
`horizontal`: members of one architecture stacked into one model, their steps
one step of K-times-wider kernels (dgkd_core.training.horizontal; on CUDA replayed from a CUDA
graph), each within float rounding of alone;
`auto` picks one per device kind from measurements (dgkd_core.training.fuse_choice).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

from dgkd_core.config import resolve_run_config
from dgkd_core.data import PreparedData, load_prepared
from dgkd_core.runtime import StopFlag, pick_device
from dgkd_core.schema import ConfigError
from dgkd_core.training.fuse_choice import MECHANISMS, auto_mechanism
from dgkd_core.training.horizontal import HorizontalGroup, check_stackable
from dgkd_core.training.resume import TrainState
from dgkd_core.training.trainer import Trainer, TrainingInterrupted

__all__ = ["MECHANISMS", "FusedMember", "FusedTrainer", "MemberStreams", "train_fused"]

log = logging.getLogger("dgkd_core.training.fused")


class MemberStreams:
    """Where each member's GPU work is queued: a CUDA stream per member (`cuda_streams`), or
    the current stream for all (`sequential`, and always on a CPU)."""

    def __init__(self, count: int, mechanism: str):
        self.mechanism = mechanism
        self.streams = ([torch.cuda.Stream() for _ in range(count)]
                        if mechanism == "cuda_streams" else None)

    def on(self, index: int):
        """A context queuing work on member `index`'s stream."""
        return nullcontext() if self.streams is None else torch.cuda.stream(self.streams[index])

    def fork(self, indices: Sequence[int]) -> None:
        """Members' streams wait for what the current stream queued (set-up, epoch start)."""
        if self.streams is not None:
            current = torch.cuda.current_stream()
            for i in indices:
                self.streams[i].wait_stream(current)

    def join(self, indices: Sequence[int]) -> None:
        """The current stream waits for the members' work (before evaluating or saving)."""
        if self.streams is not None:
            current = torch.cuda.current_stream()
            for i in indices:
                current.wait_stream(self.streams[i])


class FusedMember(Protocol):
    """What FusedTrainer asks of each member (a dgkd_core.training.trainer.Trainer, built with
    the group's `prepared`, `stop` and `fused_group`), in this order: `setup()` once; per
    epoch `begin_epoch()` (its lr), `run_step(batch, lr)` per batch (the segment's seconds so
    far), `stop_reason(elapsed)` after each step, `end_epoch(lr)`; `stop_or_save(elapsed)` to
    save its resume state when the group stops; `finish(remove_resume_state=False)` at the end;
    `close_trackers()` and `release_folder()` however the group ends."""

    out_dir: Path
    data_path: str | os.PathLike
    cfg: dict
    state: TrainState
    device: torch.device
    train_loader: Any
    guide_paths: list[str]
    resume_path: Path

    def setup(self) -> None: ...
    def begin_epoch(self) -> float: ...
    def run_step(self, batch: Sequence[torch.Tensor], lr: float) -> float: ...
    def end_epoch(self, lr: float) -> None: ...
    def stop_reason(self, elapsed: float) -> str | None: ...
    def stop_or_save(self, elapsed: float) -> None: ...
    def finish(self, remove_resume_state: bool = True) -> dict: ...
    def close_trackers(self) -> None: ...
    def release_folder(self) -> None: ...


class FusedTrainer:
    """Train `members` together: each a mapping {config, data, out_dir, guides (optional),
    guide_tables (optional)} with `train()`'s meanings, out_dirs distinct.

    mechanism: auto (per device kind, dgkd_core.training.fuse_choice), cuda_streams, sequential
    or horizontal. compile: torch.compile the horizontal step (opt-in; HorizontalGroup).
    watch_pid: as `train()`'s, for the whole group."""

    def __init__(self, members: Sequence[dict], progress: bool | None = None, *,
                 mechanism: str = "auto", watch_pid: int | None = None, compile: bool = False):
        if not members:
            raise ConfigError("a fused group needs at least one member")
        if mechanism not in MECHANISMS:
            raise ConfigError(f"fused mechanism {mechanism!r} is unknown; use one of "
                              f"{', '.join(MECHANISMS)}")
        for i, spec in enumerate(members):
            missing = [k for k in ("config", "data", "out_dir") if k not in spec]
            if missing:
                raise ConfigError(f"fused member {i + 1} lacks {', '.join(missing)}")
        dirs = [os.path.realpath(spec["out_dir"]) for spec in members]
        twice = sorted({d for d in dirs if dirs.count(d) > 1})
        if twice:
            raise ConfigError(f"fused members share the out_dir {twice[0]}; give each member "
                              "its own")
        devices = [pick_device(resolve_run_config(spec["config"])) for spec in members]
        self.requested = _checked_request(mechanism, devices)
        self.compile = compile
        self.stop = StopFlag(watch_pid=watch_pid)
        # metrics.json's record of the group; its mechanism is set once the members are set up
        self.record = {"members": [str(Path(spec["out_dir"])) for spec in members],
                       "mechanism": self.requested}
        loaded: dict[str, PreparedData] = {}  # one loaded copy of each data file
        self.members: list[FusedMember] = []
        for spec in members:
            key = os.path.realpath(spec["data"])
            if key not in loaded:
                loaded[key] = load_prepared(spec["data"])
            self.members.append(Trainer(
                spec["config"], spec["data"], Path(spec["out_dir"]), spec.get("guides", ()),
                progress, guide_tables=spec.get("guide_tables", ()), prepared=loaded[key],
                stop=self.stop, fused_group=self.record))
        self.streams: MemberStreams | None = None
        self.horizontal: HorizontalGroup | None = None  # the stacked step (`horizontal`)

    # ------------------------------------------------------------------ set up and run

    def setup(self) -> None:
        """Set every member up, one after another (each seeds the global RNG before building
        its models, as alone)."""
        for member in self.members:
            member.setup()
        self.set_mechanism(self._resolved_mechanism(), compile=self.compile)

    def set_mechanism(self, mechanism: str, compile: bool = False,
                      cuda_graph: bool = True) -> None:
        """Step the set-up members by `mechanism` (not auto) from now on, the horizontal step
        through torch.compile where `compile`, and without its CUDA graph where not
        `cuda_graph` (the bench switches all three)."""
        if compile and mechanism != "horizontal":
            raise ConfigError(f"compile is a setting of the horizontal mechanism; this group "
                              f"runs {mechanism} (ask for --mechanism horizontal)")
        if self.horizontal is not None:
            self.horizontal.write_back()
        self.horizontal = None
        self.compile = compile
        if mechanism == "horizontal":  # refuses members of different architectures
            self.horizontal = HorizontalGroup(self.members, compile=compile,
                                              cuda_graph=cuda_graph, record=self.record)
        self.streams = MemberStreams(len(self.members), mechanism)
        self.record["mechanism"] = mechanism  # every member holds this record

    def _resolved_mechanism(self) -> str:
        """What `auto` runs for these set-up members (dgkd_core.training.fuse_choice)."""
        if self.requested != "auto":
            return self.requested
        kinds = {m.device.type for m in self.members}
        try:
            check_stackable(self.members)
            stackable = True
        except ConfigError:
            stackable = False
        return auto_mechanism(kinds.pop() if len(kinds) == 1 else "mixed", stackable)

    def run(self) -> list[dict]:
        """Set up, train every member's remaining epochs, write every member's outputs; the
        members' metrics.json contents, in order. Raises TrainingInterrupted (after every
        member saved its resume state) on a signal or a member's nearly spent time budget."""
        try:
            self.setup()
            with self.stop:
                self._log_start()
                while self._unfinished():
                    self.run_round()
            return self.finish()
        finally:  # finished, stopped to be resumed, or failed: the events so far are kept
            for member in self.members:
                member.close_trackers()
                member.release_folder()

    def _log_start(self) -> None:
        log.info("training %d models as one fused group (%s)", len(self.members),
                 self.streams.mechanism)
        for m in self.members:
            log.info("  %s: %s (%s, seed %d) on %s, %d/%d epochs done, %d guides, %d steps/epoch",
                     m.out_dir, m.cfg["model"], m.cfg["method"], m.cfg["seed"], m.device,
                     m.state.epoch, m.cfg["epochs"], len(m.guide_paths), len(m.train_loader))

    def _unfinished(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if m.state.epoch < m.cfg["epochs"]]

    # ------------------------------------------------------------------ one round

    def run_round(self) -> None:
        """The rest of every unfinished member's current epoch, steps interleaved; each member
        ends its epoch (evaluation, history, resume state) when its loader runs out."""
        active = self._unfinished()
        lrs = {i: self.members[i].begin_epoch() for i in active}
        self.streams.fork(active)
        batches = {i: self.epoch_batches(i) for i in active}
        stepping = list(active)
        while stepping:
            self._stop_if_asked(self.step_once(stepping, batches, lrs))

    def epoch_batches(self, index: int) -> Iterator:
        """Member `index`'s batches for the rest of its epoch, as `step_once` takes them (a
        horizontal group may make all members' batches as one)."""
        if self.horizontal is not None:
            return self.horizontal.epoch_batches(index)
        return iter(self.members[index].train_loader)

    def step_once(self, stepping: list[int], batches: dict, lrs: dict[int, float]
                  ) -> list[tuple[int, float]]:
        """One step of each member in `stepping` on its next batch (batches[i]:
        `epoch_batches(i)`) at lrs[i]; a member whose loader ran out ends its epoch and
        leaves `stepping`. Returns (index, segment seconds so far) of each member that
        stepped. The loop `run_round` runs, and what `bench --fused` times."""
        if self.horizontal is not None:
            stepped, ended = self.horizontal.step_once(stepping, batches, lrs)
            for i in ended:  # written back: each ends its epoch as a solo member does
                self._end_epoch(i, lrs[i])
            return stepped
        stepped: list[tuple[int, float]] = []
        for i in list(stepping):
            elapsed = self.step_member(i, batches[i], lrs[i])
            if elapsed is None:
                stepping.remove(i)
                self._end_epoch(i, lrs[i])
            else:
                stepped.append((i, elapsed))
        return stepped

    def step_member(self, index: int, batches: Iterator, lr: float) -> float | None:
        """Member `index`'s next step, on its stream, from its epoch's `batches`: the segment's
        seconds so far (as `run_step`), or None where the batches ran out."""
        with self.streams.on(index):
            batch = next(batches, None)
            return None if batch is None else self.members[index].run_step(batch, lr)

    def _end_epoch(self, index: int, lr: float) -> None:
        self.streams.join([index])
        try:
            self.members[index].end_epoch(lr)
        except TrainingInterrupted as stopped:  # it saved; the others stop with it
            self.stop.reason = stopped.reason
            self._stop_all(saved={index})

    def _stop_if_asked(self, stepped: list[tuple[int, float]]) -> None:
        """After one step of each member that stepped: stop the group if one must stop."""
        reason = next((r for i, elapsed in stepped
                       if (r := self.members[i].stop_reason(elapsed)) is not None), None)
        if reason is not None:
            self.stop.reason = reason  # every member now sees it
            self._stop_all(saved=set())

    def _stop_all(self, saved: set[int]) -> None:
        """Every unfinished member saves its resume state here; then TrainingInterrupted."""
        pending = [i for i in self._unfinished() if i not in saved]
        if self.horizontal is not None:
            self.horizontal.write_back()
        self.streams.join(pending)
        for i in pending:
            member = self.members[i]
            mid_epoch = member.state.step > 0
            elapsed = time.perf_counter() - member.state.segment_start if mid_epoch else 0.0
            try:
                member.stop_or_save(elapsed)
            except TrainingInterrupted:
                pass
        log.warning("fused group stopped (%s): every member saved its resume state; run "
                    "again to continue", self.stop.reason)
        raise TrainingInterrupted(self.stop.reason)

    # ------------------------------------------------------------------ finish

    def finish(self) -> list[dict]:
        """Every member's outputs, then every member's resume state removed."""
        self.streams.join(range(len(self.members)))
        metrics = [m.finish(remove_resume_state=False) for m in self.members]
        for member in self.members:
            member.resume_path.unlink(missing_ok=True)
        return metrics


def _checked_request(requested: str, devices: Sequence[torch.device]) -> str:
    """`requested`, refused in one line where it cannot run on `devices`."""
    on_cuda = all(device.type == "cuda" for device in devices)
    if requested == "cuda_streams" and not on_cuda:
        raise ConfigError("fused mechanism cuda_streams needs every member on CUDA; use "
                          "auto or sequential")
    return requested


def train_fused(members: Sequence[dict], progress: bool | None = None, *,
                mechanism: str = "auto", watch_pid: int | None = None,
                compile: bool = False) -> list[dict]:
    """Train the members together (FusedTrainer; mechanism and compile: its). Returns their
    metrics.json contents, in order.

    Raises ConfigError / TrainingError on bad input before training, TrainingInterrupted
    (exit status 75) after saving every member's resume state on a stop."""
    return FusedTrainer(members, progress, mechanism=mechanism, watch_pid=watch_pid,
                        compile=compile).run()
