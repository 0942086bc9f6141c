"""Helpers shared by the trainer's test files (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

FINAL_OUTPUTS = ("model.pt", "metrics.json", "history.csv")
# A CUDA graph calls the Python loss once, at capture, and replays it: tests that swap in a loss
# that fails at a chosen call need the eager step (on a CPU they get it anyway).
EAGER_ON_CUDA = {"cuda_graph": False}


def run_config(**over) -> dict:
    """A small plane2 run config (2 epochs, batch 64, constant lr) with `over` replacing keys."""
    cfg = {"model": "plane2", "seed": 3, "epochs": 2, "batch_size": 64, "eval_batch_size": 256,
           "optimizer": {"lr": 0.05}, "schedule": {"name": "constant"}}
    cfg.update(over)
    return cfg


def assert_same_weights(a: Path, b: Path) -> None:
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"weights differ at {key}"


def history_without_timing(out: Path) -> list[dict]:
    with open(out / "history.csv") as fh:
        return [{k: v for k, v in row.items() if k not in ("img_s", "time_s")}
                for row in csv.DictReader(fh)]


def assert_no_outputs(out: Path) -> None:
    for name in FINAL_OUTPUTS:
        assert not (out / name).exists(), f"{out / name} was written"
