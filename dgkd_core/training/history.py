"""What the trainer records and shows per epoch, and its clock: the history.csv row, the
epoch's log line with its ETA, history.csv itself, the progress bar and the time-budget check.

A row's columns: `epoch` (1-based), `lr`, `train_<term>` for every term of the training step
(the loss terms, then `train_top1`: top-1 in percent of the step's own logits on the augmented
training batches, as the weights changed over the epoch), `test_top1`, `test_top5` (percent),
`test_loss` (cross-entropy, nats per image), `img_s` (training images per second) and `time_s`
(seconds of training steps, evaluation excluded).
"""

from __future__ import annotations

import csv
import io
import math
import time

__all__ = ["eta_seconds", "epoch_line", "format_eta", "history_csv", "history_row", "out_of_time",
           "progress_bar"]


def history_row(epoch: int, lr: float, sums: dict[str, float], images: int,
                term_names: list[str], test: dict, train_time_s: float) -> dict:
    """One history.csv row. epoch: 1-based; sums: per term, the sum of (term x batch size) over
    the epoch's `images` training images; test: `evaluate()`'s result; train_time_s: seconds."""
    row = {"epoch": epoch, "lr": lr}
    row.update({f"train_{k}": sums[k] / max(images, 1) for k in term_names})
    row.update({"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
                "img_s": images / max(train_time_s, 1e-9), "time_s": train_time_s})
    return row


def eta_seconds(epochs_left: int, epoch_walls: list[float]) -> float:
    """Seconds still to go: epochs left x the mean wall time (training and evaluation, seconds)
    of the epochs run so far in this process."""
    if epochs_left <= 0 or not epoch_walls:
        return 0.0
    return epochs_left * sum(epoch_walls) / len(epoch_walls)


def format_eta(seconds: float) -> str:
    """`ETA 42s`, `ETA 3m12s`, `ETA 2h05m` (rounded up to the second)."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"ETA {hours}h{minutes:02d}m"
    if minutes:
        return f"ETA {minutes}m{secs:02d}s"
    return f"ETA {secs}s"


def epoch_line(row: dict, epochs: int, loss_terms: list[str], eta_s: float) -> str:
    """The epoch's log line; tests and job logs grep its wording (`epoch   2/4`, `test top1`)."""
    losses = "  ".join(f"{k} {row['train_' + k]:.4f}" for k in loss_terms)
    return (f"epoch {row['epoch']:3d}/{epochs}  lr {row['lr']:.4g}  {losses}  "
            f"train top1 {row['train_top1']:.2f}  "
            f"test top1 {row['test_top1']:.2f} top5 {row['test_top5']:.2f}  "
            f"{row['img_s']:.0f} img/s  {row['time_s']:.1f} s  {format_eta(eta_s)}")


def history_csv(history: list[dict]) -> str:
    """history.csv's text. Columns in order of first appearance: rows an older version wrote
    into a resume state may lack later columns, which stay empty there."""
    columns: dict[str, None] = {}
    for row in history:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), restval="")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def out_of_time(wall_start: float, budget: float, epoch_times: list[float], elapsed: float,
                steps_done: int, steps_total: int) -> bool:
    """True when finishing the next unit of work would likely overrun the time budget.

    wall_start: time.time() at the run's start; budget: seconds; epoch_times: training seconds
    of the epochs done; elapsed: seconds of this segment's `steps_done` steps of `steps_total`."""
    used = time.time() - wall_start
    if steps_done:  # mid-epoch: stop when the remaining steps of this epoch will not fit
        per_step = elapsed / steps_done
        remaining = per_step * (steps_total - steps_done)
    else:
        remaining = max(epoch_times[-3:]) if epoch_times else 0.0
    margin = max(0.05 * budget, 10.0)
    return used + remaining + margin > budget


def progress_bar(total: int, epoch: int, epochs: int, interactive: bool, initial: int):
    """A tqdm bar over one epoch's `total` steps (epoch 0-based), or None when not interactive."""
    if not interactive:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                unit="step", dynamic_ncols=True)
