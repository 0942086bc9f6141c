"""Weights & Biases tracking of a training run (run config `logging.wandb`): the run's settings
as its config, each epoch's history.csv row as one `log` call at step = epoch, the final
metrics as its summary.

The wandb package is optional (`pip install 'dgkd-core[wandb]'`); `check_available` says so in
one line before a run starts. `logging.wandb_mode` is `offline` by default: compute nodes often
have no network, and `wandb sync <out_dir>/wandb/offline-run-*` uploads later. A run's W&B id
is derived from its out_dir, so a resumed run continues the same W&B run (`resume="allow"`);
W&B keeps the last value logged at a step, so the epochs an interrupted attempt logged and the
resumed run logs again end as the resumed run's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dgkd_core.errors import TrainingError
from dgkd_core.schema import ConfigError
from dgkd_core.training.tensorboard_log import hparam_values

__all__ = ["MISSING_PACKAGE", "WandbRun", "check_available", "open_run", "run_id"]

MISSING_PACKAGE = ("logging.wandb is on but the wandb package is not installed: "
                   "pip install 'dgkd-core[wandb]' or set logging.wandb: false")


def check_available(logging_cfg: dict) -> None:
    """ConfigError when logging.wandb is on and the wandb package cannot be imported."""
    if not logging_cfg.get("wandb"):
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_PACKAGE) from None


def run_id(out_dir: str | os.PathLike) -> str:
    """The W&B run id of the run in `out_dir`: 16 hex digits of its absolute path's sha256,
    the same for every attempt of that run."""
    return hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]


class WandbRun:
    """One training run's W&B run; `write(row)` logs one history row."""

    def __init__(self, logging_cfg: dict, out_dir: Path, cfg: dict):
        import wandb

        directory = Path(out_dir) / "wandb"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=logging_cfg["wandb_project"], mode=logging_cfg["wandb_mode"],
                dir=str(out_dir), id=run_id(out_dir), resume="allow",
                name=str(out_dir), config=hparam_values(cfg))
        except OSError as err:
            raise TrainingError(f"logging.wandb cannot write under {directory}: "
                                f"{err.strerror or err}") from None

    def write(self, row: dict) -> None:
        """Every column of `row` but `epoch`, at step `row["epoch"]` (1-based)."""
        self.run.log({k: float(v) for k, v in row.items() if k != "epoch"},
                     step=int(row["epoch"]))

    def write_summary(self, metrics: dict) -> None:
        """The run's final numbers (metrics.json's numeric entries) as its W&B summary."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


def open_run(logging_cfg: dict, out_dir: str | os.PathLike, cfg: dict) -> WandbRun | None:
    """A WandbRun where logging.wandb is on, else None."""
    if not logging_cfg.get("wandb"):
        return None
    check_available(logging_cfg)
    return WandbRun(logging_cfg, Path(out_dir), cfg)
