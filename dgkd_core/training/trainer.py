"""The resumable, signal-safe trainer.

`train(config, data_path, out_dir, guide_checkpoints)` trains one model. Every epoch it writes
its resume state atomically (`out_dir/resume.pt`); a restarted run picks it up and ends
bit-identical to an uninterrupted one (CPU). On SIGTERM/SIGUSR1, or when the time budget runs
out, it finishes the current step, writes the resume state and exits with `EXIT_RESUMABLE`.
Final outputs (`model.pt`, `metrics.json`, `history.csv`) are written atomically at the end only;
TensorBoard scalars (`logging.tensorboard`, tensorboard_log.py), per epoch. Started as several
ranks (torchrun, srun) it trains data-parallel, rank 0 writing every file (distributed.py).

`train()` is `Trainer(...).run()`: `setup()` (setup.py), then `run_epoch()` per epoch
(`run_step()` per batch), `stop_or_save()` after each step and epoch, and `finish()`
(outputs.py). Where the run stands lives in one `TrainState`, which is what the resume state
saves (resume.py). A model state with inf or NaN in it is never saved, as a resume state or as
`model.pt`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from dgkd_core.config import resolve_run_config
from dgkd_core.data import PreparedData
from dgkd_core.errors import TrainingError
from dgkd_core.guides.checkpoints import first_non_finite
from dgkd_core.guides.logit_tables import aligned_tables
from dgkd_core.method.losses import SegmentKeepMasks, step_mask_drawer
from dgkd_core.method.registry import check_guides
from dgkd_core.runtime import StopFlag, elapsed_s, epoch_generator
from dgkd_core.schema import ConfigError
from dgkd_core.training.distributed import Distributed
from dgkd_core.training.evaluate import evaluate
from dgkd_core.training.history import (epoch_line, eta_seconds, history_row, out_of_time,
                                        progress_bar)
from dgkd_core.training.outputs import TrainerOutputs
from dgkd_core.training.resume import RESUME_FILE, TrainState, note_step, write_resume_state
from dgkd_core.training.setup import TrainerSetup, lr_at
from dgkd_core.training import tensorboard_log, wandb_log

__all__ = ["EXIT_RESUMABLE", "Trainer", "TrainingInterrupted", "train"]

log = logging.getLogger("dgkd_core.training.trainer")

# Exit status of a run that stopped early but left a resume state (EX_TEMPFAIL): retry it.
EXIT_RESUMABLE = 75


class TrainingInterrupted(SystemExit):
    """Raised after the resume state is written on a signal or an exhausted time budget."""

    def __init__(self, reason: str):
        super().__init__(EXIT_RESUMABLE)
        self.reason = reason


class Trainer(TrainerSetup, TrainerOutputs):
    """One training run of `train()`; see the module docstring for the order of the methods.

    A fused group (dgkd_core.training.fused) gives each member what the group shares:
    prepared: the data file, loaded once (None: `setup()` loads `data_path`); stop: the group's
    StopFlag, which the group enters (None: `run()` enters its own for `watch_pid`);
    fused_group: metrics.json's record of the group (None: trained alone)."""

    def __init__(self, config: dict, data_path: str | os.PathLike, out_dir: str | os.PathLike,
                 guide_checkpoints: Sequence[str | os.PathLike] = (),
                 progress: bool | None = None, *, watch_pid: int | None = None,
                 guide_tables: Sequence[str | os.PathLike | None] = (),
                 prepared: PreparedData | None = None, stop: StopFlag | None = None,
                 fused_group: dict | None = None):
        self.cfg = resolve_run_config(config)
        self.data_path = data_path
        self.out_dir = Path(out_dir)
        self.guide_paths = [str(p) for p in guide_checkpoints]
        self.table_paths = aligned_tables(guide_tables, len(self.guide_paths))
        loss_cfg, n_guides = self.cfg["loss"], len(self.guide_paths)
        try:
            check_guides(self.cfg["method"], n_guides, loss_cfg["keep_prob"],
                         loss_cfg["drop_num"])
        except ValueError as err:  # else the run would be recorded under the wrong method
            raise ConfigError(str(err)) from None
        for tracker in (tensorboard_log, wandb_log):  # a missing package fails now, not after setup
            tracker.check_available(self.cfg["logging"])
        # One rank of several where torchrun or srun started this process (distributed.py).
        self.dist = Distributed.from_environment()
        self.dist.check_batch_size(self.cfg["batch_size"])
        self.resume_path = self.out_dir / RESUME_FILE
        self.interactive = sys.stderr.isatty() if progress is None else progress
        self.watch_pid = watch_pid
        self.state = TrainState()
        self.stop = stop
        self.bar = None  # this segment's progress bar, when interactive
        self.good_resume_state = False  # a resume state this run loaded or wrote is on disk
        self.tensorboard = None  # the EpochWriter, from setup() on, where logging.tensorboard
        self.wandb = None  # the WandbRun, from setup() on, where logging.wandb
        self.epoch_walls: list[float] = []  # s per epoch run here, evaluation included (ETA)
        self.prepared = prepared
        self.fused_group = fused_group

    # ------------------------------------------------------------------------ the loop

    def run(self) -> dict:
        """Set up, train the remaining epochs and write the final outputs; metrics.json's content.

        Raises TrainingInterrupted (after saving) on a signal or a nearly spent time budget."""
        cfg = self.cfg
        try:
            self.setup()
            stop = self.stop if self.stop is not None else StopFlag(watch_pid=self.watch_pid)
            with stop as self.stop:
                log.info("training %s (%s, seed %d) on %s for %d epochs, %d guides, "
                         "%d steps/epoch", cfg["model"], cfg["method"], cfg["seed"],
                         self.device, cfg["epochs"], len(self.guide_paths),
                         len(self.train_loader))
                while self.state.epoch < cfg["epochs"]:
                    self.run_epoch()
            return self.finish()
        except RuntimeError as err:  # a rank killed mid-run: one line, not gloo's page
            gone = self.dist.peer_gone(err)
            if gone is None:
                raise
            # The file, not good_resume_state: rank 0 may have written it as this rank waited.
            then = (f"the run resumes on restart from {self.resume_path}"
                    if self.resume_path.is_file() else
                    "no resume state was written yet: a restart starts from scratch")
            raise TrainingError(f"{gone}; {then}") from err
        finally:  # finished, stopped to be resumed, or failed: the events so far are kept
            self.close_trackers()
            self.release_folder()
            self.dist.close()

    def close_trackers(self) -> None:
        """Close TensorBoard's writer and the W&B run, keeping what they logged."""
        for tracker in (self.tensorboard, self.wandb):
            if tracker is not None:
                tracker.close()
        self.tensorboard = self.wandb = None

    def run_epoch(self) -> None:
        """The rest of epoch `state.epoch`, then its evaluation, log line and resume state."""
        lr = self.begin_epoch()
        for batch in self.train_loader:
            elapsed = self.run_step(batch, lr)
            self.stop_or_save(elapsed)
        self.end_epoch(lr)

    def end_epoch(self, lr: float) -> None:
        """After the epoch's last step: fold the segment in, evaluate, log, save the resume
        state (and stop there on a signal or a spent time budget)."""
        self._end_segment(elapsed_s(self.device, self.state.segment_start))
        self._record_epoch(lr)
        self.stop_or_save(0.0)

    def begin_epoch(self) -> float:
        """Set the epoch's lr and start a segment; a fresh epoch (step 0) also resets its sums,
        counts and keep RNG, a resumed one goes on with those restored. The segment's keep
        masks are drawn here, at once. Returns the lr."""
        s, cfg = self.state, self.cfg
        lr = lr_at(cfg, s.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if s.step == 0:
            self.train_loader.set_epoch(s.epoch)
            s.sums = {k: 0.0 for k in self.term_names}
            s.images, s.train_time_s = 0, 0.0
            s.keep_gen = epoch_generator(cfg["seed"], s.epoch, stream="keep")
        s.keep_masks = SegmentKeepMasks(step_mask_drawer(cfg["loss"], len(self.guide_paths)),
                                        s.keep_gen, s.step, len(self.train_loader), self.device)
        self.distiller.train()
        self.bar = progress_bar(len(self.train_loader), s.epoch, cfg["epochs"], self.interactive,
                                s.step)
        s.segment_start = time.perf_counter()
        s.sums_dev = torch.zeros(len(self.term_names), device=self.device, dtype=torch.float64)
        s.bad_step = torch.full((), -1, device=self.device, dtype=torch.long)
        return lr

    def run_step(self, batch: Sequence[torch.Tensor], lr: float) -> float:
        """One optimizer step on a train-loader batch: (x [B,3,H,W], y [B]), or (x, y, views
        [B]) where guide tables stand in for the guides. Returns the segment's seconds so far,
        without a device sync (for the time budget; work still queued on a GPU is not in it)."""
        s = self.state
        x, y, views = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
        terms = self.step_fn(x, y, s.keep_masks.at(s.step), lr, views)
        return self.record_step(terms, y)

    def record_step(self, terms: torch.Tensor, y: torch.Tensor) -> float:
        """`run_step`'s bookkeeping of a step already run: terms [len(term_names)], labels y
        [B]. Returns the segment's seconds so far."""
        s = self.state
        finite = torch.isfinite(terms[self.total_index])
        s.bad_step = note_step(s.bad_step, s.step, s.sums_dev, terms, y.shape[0], finite)
        return self.count_step(terms, y.shape[0], finite)

    def count_step(self, terms: torch.Tensor, batch_size: int, finite: torch.Tensor) -> float:
        """The host side of `record_step` (step and image counts, the last terms, the bar);
        finite: whether the step's total loss is finite (0-d bool), checked at once on a CPU,
        where the sync is free. Returns the segment's seconds so far."""
        s = self.state
        s.images += batch_size * self.dist.world_size  # the global batch: equal shards
        s.step += 1
        s.last_terms = terms
        if self.device.type == "cpu" and not bool(finite):  # a CPU sync is free: fail now
            self._raise_non_finite(s.step - 1)
        if self.bar is not None:
            self.bar.update(1)
        return time.perf_counter() - s.segment_start

    def _end_segment(self, elapsed: float) -> None:
        """Close the bar, fail on a non-finite step, fold the segment's time and sums in."""
        s = self.state
        if self.bar is not None:
            self.bar.close()
        if int(s.bad_step) >= 0:
            self._raise_non_finite(int(s.bad_step))
        s.train_time_s += elapsed
        self.dist.sum_(s.sums_dev)  # every rank's shard of the loss sums
        s.fold_sums(self.term_names)

    def _record_epoch(self, lr: float) -> None:
        """Evaluate, append the history row (and its TensorBoard scalars), log the epoch line
        and move to the next epoch."""
        s, cfg = self.state, self.cfg
        eval_start = time.perf_counter()
        test = evaluate(self.model, self.test_loader, bf16=self.fast["bf16"],
                        sum_over_ranks=self.dist.sum_ if self.dist.active else None)
        self.epoch_walls.append(s.train_time_s + time.perf_counter() - eval_start)
        row = history_row(s.epoch + 1, lr, s.sums, s.images, self.term_names, test,
                          s.train_time_s)
        if self.val_loader is not None:  # held-out training images (validation_images)
            row["val_top1"] = evaluate(self.model, self.val_loader, bf16=self.fast["bf16"],
                                       sum_over_ranks=self.dist.sum_ if self.dist.active
                                       else None)["top1"]
        s.history.append(row)
        s.epoch_times.append(s.train_time_s)
        for tracker in (self.tensorboard, self.wandb):
            if tracker is not None:
                tracker.write(row)
        eta = eta_seconds(cfg["epochs"] - row["epoch"], self.epoch_walls)
        log.info("%s", epoch_line(row, cfg["epochs"], self.distiller.loss_term_names, eta))
        s.epoch, s.step = s.epoch + 1, 0

    def _raise_non_finite(self, step: int) -> None:
        s = self.state
        values = ", ".join(f"{k}={v:.4g}"
                           for k, v in zip(self.term_names, s.last_terms.float().cpu().tolist()))
        raise TrainingError(
            f"non-finite loss at epoch {s.epoch + 1}, step {step + 1} (last step's terms: "
            f"{values}); {self._kept()}. Lower the learning rate or check the data and guides."
        )

    def _check_finite_model(self) -> None:
        """TrainingError unless every floating tensor of the model's state_dict (weights and
        BatchNorm statistics) is finite: a loss can stay finite while they overflow, and a
        non-finite state must never be written as the last good one."""
        bad = first_non_finite(self.model.state_dict())
        if bad is None:
            return
        s = self.state
        # The last step run: at an epoch's end `epoch` has moved on and `step` is back at 0.
        epoch, step = (s.epoch, len(self.train_loader)) if s.step == 0 else (s.epoch + 1, s.step)
        raise TrainingError(
            f"non-finite model state at epoch {epoch}, step {step}: {bad!r} holds inf or NaN; "
            f"{self._kept()}. Lower the learning rate or check the data and guides."
        )

    def _kept(self) -> str:
        return (f"the last good resume state ({self.resume_path}) is kept"
                if self.good_resume_state else "no resume state had been written yet")

    # ------------------------------------------------------------------------ stop and save

    def stop_or_save(self, elapsed: float) -> None:
        """After a step (state.step > 0) or at an epoch's end (state.step == 0, once counted).

        On SIGTERM/SIGUSR1, or when the next unit of work (the epoch's remaining steps, or the
        next epoch) would overrun the time budget: end the segment, write the resume state and
        raise TrainingInterrupted. At an epoch's end the resume state is written in any case.
        elapsed: seconds of training in this segment so far (0 at an epoch's end)."""
        s = self.state
        at_epoch_end = s.step == 0
        reason = self.dist.agree_stop(self.stop_reason(elapsed))  # ranks: all stop at one step
        if reason is None and not at_epoch_end:
            return
        if not at_epoch_end:  # the segment's time with its queued work done (elapsed has not)
            self._end_segment(elapsed_s(self.device, s.segment_start))
        self._save_resume(reason)
        if reason is None:
            return
        if at_epoch_end:
            log.warning("stopping after epoch %d (%s): resume state written to %s",
                        s.epoch, reason, self.resume_path)
        else:
            log.warning("stopping early (%s): resume state written to %s; run again "
                        "to continue", reason, self.resume_path)
        raise TrainingInterrupted(reason)

    def stop_reason(self, elapsed: float) -> str | None:
        """Why the run must stop at this step boundary (a signal, or a time budget the next
        unit of work would overrun), or None. elapsed: as in `stop_or_save`."""
        s, cfg = self.state, self.cfg
        budget = cfg["time_budget_s"]
        over_budget = budget is not None and s.epoch < cfg["epochs"] and out_of_time(
            self.wall_start, budget, s.epoch_times, elapsed, s.step, len(self.train_loader))
        return self.stop.reason or (
            f"time budget of {budget:.0f} s nearly spent" if over_budget else None)

    def _save_resume(self, stop_reason: str | None) -> None:
        self._check_finite_model()
        if self.dist.is_main:  # the ranks hold the same state: one writes it
            write_resume_state(self.resume_path, self.state, identity=self.identity,
                               stop_reason=stop_reason, model=self.model,
                               optimizer=self.optimizer, loader=self.train_loader)
        self.dist.barrier()  # no rank goes on (or exits) before the state is on disk
        self.good_resume_state = True



def train(
    config: dict,
    data_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    guide_checkpoints: Sequence[str | os.PathLike] = (),
    progress: bool | None = None,
    *,
    watch_pid: int | None = None,
    guide_tables: Sequence[str | os.PathLike | None] = (),
) -> dict:
    """Train one model, resuming from `out_dir/resume.pt` if a compatible one exists.

    config: a run config (docs/design.md), resolved here. data_path: a prepared data file.
    guide_checkpoints: teacher first, then TAs from largest to smallest; their number must fit
    the config's method (`dgkd_core.method.registry.check_guides`). progress: a tqdm bar per epoch (None: when
    stderr is a terminal). watch_pid: the workflow process that started this run
    (`runtime.workflow_ancestor_pid()`); once it is gone the run stops as on SIGTERM.
    Returns metrics.json's content. Raises TrainingError / ConfigError on bad input before
    training (an unwritable out_dir included) and before writing any output."""
    return Trainer(config, data_path, out_dir, guide_checkpoints, progress,
                   watch_pid=watch_pid, guide_tables=guide_tables).run()
