"""Helpers shared by the test files (pyproject.toml puts tests/ on sys.path)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

FINAL_OUTPUTS = ("model.pt", "metrics.json", "history.csv")
# A CUDA graph calls the Python loss once, at capture, and replays it: tests that swap in a loss
# that fails at a chosen call need the eager step (on a CPU they get it anyway).
EAGER_ON_CUDA = {"cuda_graph": False}


def read_history(out: Path) -> list[dict]:
    """A run folder's history.csv rows (text values, as csv reads them)."""
    with open(out / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def resume_state_before_outputs(data: Path, out: Path) -> dict:
    """The resume.pt a one-epoch plane2 run leaves in `out` when it dies just before writing
    its final outputs (Trainer.finish raises), loaded."""
    import pytest

    from dgkd_core.training import trainer as train_module

    class Died(Exception):
        pass

    def die(self, **_):
        raise Died

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module.Trainer, "finish", die)
        with pytest.raises(Died):
            train_module.train(run_config(epochs=1), data, out, progress=False)
    return torch.load(out / "resume.pt", weights_only=True)


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


def stopped_points(specs) -> list[tuple[int, int]]:
    """(epoch, step) of each stopped member's resume.pt; checks it wrote no final output."""
    points = []
    for spec in specs:
        assert_no_outputs(spec["out_dir"])
        state = torch.load(spec["out_dir"] / "resume.pt", weights_only=True)
        points.append((state["epoch"], state["step"]))
    return points


# Data-parallel runs (tests/unit/training/test_distributed.py, the guide tables' check).
# Contiguous tensors: torch's CPU batch_norm on channels_last float32 input is itself off by up
# to ~1e-4 (its statistics), more than the equivalence allows. And a few steps only: float32
# gradients of these BatchNorm networks are off by up to ~1e-3 relative to float64 in places,
# one process and two alike, so over many steps two correct runs drift apart (plane2, lr 0.05:
# 2e-7 after 3 steps, 2e-5 after 6, on this data).
DDP_RUN = ["--set", "model=plane2", "--set", "seed=3", "--set", "batch_size=64",
       "--set", "eval_batch_size=100", "--set", "optimizer.lr=0.05",
       "--set", "schedule.name=constant", "--set", "fast.channels_last=false",
       "--set", "device=cpu"]  # gloo on the CPU, also where a GPU is visible


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "dgkd_core", "train", *DDP_RUN, "--set", f"data={data}", "--set",
            f"out_dir={out}", *extra]


def one_process(data: Path, out: Path, *extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    subprocess.run([sys.executable, *train_args(data, out, *extra)], check=True, env=env,
                   capture_output=True, timeout=300)


def torchrun(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           *train_args(data, out, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
