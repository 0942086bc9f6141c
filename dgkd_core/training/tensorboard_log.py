"""TensorBoard scalars of a training run (run config `logging.tensorboard`): one value per tag
and epoch, written from the epoch's history.csv row.

The tensorboard package is optional (`pip install 'dgkd-core[tensorboard]'`); `check_available`
says so in one line before a run starts. A resumed run writes into the same folder with
`purge_step` = its next epoch, so that TensorBoard drops what an interrupted attempt wrote for
the epochs it reruns and every curve holds each epoch once.

A finished run also writes its settings for TensorBoard's HParams tab (`write_hparams`): every
resolved run-config key, dotted, with the last epoch's test/top1, test/top5 and test/loss as the
metrics, read from the curves the run already wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

from dgkd_core.errors import TrainingError
from dgkd_core.schema import ConfigError

__all__ = ["HPARAM_METRIC_TAGS", "MISSING_PACKAGE", "EpochWriter", "check_available",
           "hparam_values", "open_writer", "resolve_dir", "tag_for"]

MISSING_PACKAGE = ("logging.tensorboard is on but the tensorboard package is not installed: "
                   "pip install 'dgkd-core[tensorboard]' or set logging.tensorboard: false")

# history.csv columns that are not `train_*`/`test_*`, and their tags.
_OTHER_TAGS = {"lr": "train/lr", "img_s": "speed/img_per_s", "time_s": "speed/train_time_s"}


# The HParams tab's metrics: scalar tags every run writes, shown at their last epoch's value.
HPARAM_METRIC_TAGS = ("test/top1", "test/top5", "test/loss")


def hparam_values(cfg: dict, prefix: str = "") -> dict:
    """A run config as HParams values: dotted keys, each an int, float, bool or text (a list
    as its JSON text, null as "null"), which is what TensorBoard's HParams tab takes."""
    import json

    out: dict = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(hparam_values(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def check_available(logging_cfg: dict) -> None:
    """ConfigError when logging.tensorboard is on and the tensorboard package cannot be imported."""
    if not logging_cfg["tensorboard"]:
        return
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError:
        raise ConfigError(MISSING_PACKAGE) from None


def resolve_dir(logging_cfg: dict, out_dir: str | os.PathLike) -> Path:
    """logging.tensorboard_dir, or `<out_dir>/tensorboard` where it is null."""
    directory = logging_cfg["tensorboard_dir"]
    return Path(directory) if directory is not None else Path(out_dir) / "tensorboard"


def tag_for(column: str) -> str:
    """The TensorBoard tag of a history.csv column: `train_ce` -> `train/ce`,
    `test_top1` -> `test/top1`, `lr` -> `train/lr`, `img_s` -> `speed/img_per_s`."""
    if column in _OTHER_TAGS:
        return _OTHER_TAGS[column]
    prefix, sep, rest = column.partition("_")
    if sep and prefix in ("train", "test"):
        return f"{prefix}/{rest}"
    return f"other/{column}"


class EpochWriter:
    """A SummaryWriter on one run's folder; `write(row)` adds one history row's scalars."""

    def __init__(self, directory: Path, next_epoch: int):
        """next_epoch: the 1-based epoch the run records next (1 on a fresh start); events an
        earlier attempt wrote at that step or later are purged."""
        from torch.utils.tensorboard import SummaryWriter

        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(directory), purge_step=next_epoch)
        except OSError as err:
            raise TrainingError(f"logging.tensorboard_dir {directory} cannot be written: "
                                f"{err.strerror or err}") from None
        self.directory = directory

    def write(self, row: dict) -> None:
        """Every column of `row` but `epoch` at global step `row["epoch"]` (1-based); flushed,
        so that a run killed afterwards keeps them."""
        step = int(row["epoch"])
        for column, value in row.items():
            if column != "epoch":
                self.writer.add_scalar(tag_for(column), float(value), global_step=step)
        self.writer.flush()

    def write_hparams(self, cfg: dict) -> None:
        """The run's settings (`hparam_values(cfg)`) for the HParams tab, into the run's own
        folder, with HPARAM_METRIC_TAGS as its metrics."""
        from torch.utils.tensorboard.summary import hparams

        summaries = hparams(hparam_values(cfg), dict.fromkeys(HPARAM_METRIC_TAGS, 0.0))
        for summary in summaries:  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_writer(logging_cfg: dict, out_dir: str | os.PathLike,
                next_epoch: int) -> EpochWriter | None:
    """An EpochWriter where logging.tensorboard is on, else None."""
    if not logging_cfg["tensorboard"]:
        return None
    check_available(logging_cfg)
    return EpochWriter(resolve_dir(logging_cfg, out_dir), next_epoch)
