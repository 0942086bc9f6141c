"""The horizontal-fusion tests' data, guides and members (tests/unit/training/test_horizontal*.py):
plane2 members on a small synthetic task, with other seeds, guides, a stochastic DGKD member, an
lr milestone and a guide table. Import the fixtures by name into a test module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgkd_core.data import prepare_dataset
from dgkd_core.guides.logit_tables import make_guide_table
from dgkd_core.training.trainer import train
from helpers import run_config

STEP_LR = {"name": "step", "milestones": [0.5], "gamma": 0.2}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """The synthetic task, 128 training and 64 test images: 2 steps an epoch at batch 64."""
    path = tmp_path_factory.mktemp("hz_data") / "synthetic.pt"
    prepare_dataset("synthetic", path, seed=0, synthetic_train=128, synthetic_test=64)
    return path


def _guide(data: Path, root: Path, model: str, seed: int) -> Path:
    train(run_config(model=model, epochs=1, batch_size=32, seed=seed), data, root,
          progress=False)
    return root / "model.pt"


@pytest.fixture(scope="module")
def teacher(small_data, tmp_path_factory) -> Path:
    """A plane4 trained for one epoch on small_data."""
    return _guide(small_data, tmp_path_factory.mktemp("hz_teacher"), "plane4", 3)


@pytest.fixture(scope="module")
def second_guide(small_data, tmp_path_factory) -> Path:
    """A plane3 trained for one epoch: a guide other than `teacher`."""
    return _guide(small_data, tmp_path_factory.mktemp("hz_guide3"), "plane3", 8)


@pytest.fixture(scope="module")
def teacher_table(small_data, teacher, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hz_table") / "teacher_table.pt"
    make_guide_table(teacher, small_data, path, config(), batch_size=4096)
    return path


def config(**over) -> dict:
    """A plane2 run (run_config) at lr 0.005: 2 epochs of 2 steps on small_data."""
    return run_config(**{"optimizer": {"lr": 0.005}, **over})


def members(root: Path, teacher: Path, second_guide: Path, table: Path | None = None,
            make_config=config) -> list[dict]:
    """plane2 runs: other seeds, other guides, a stochastic DGKD member, a milestone after
    epoch 1 (of 2), and (given `table`) a KD member whose guide is its table. make_config:
    their run configs (default `config`: lr 0.005)."""
    specs = [
        {"config": make_config(seed=3, schedule=STEP_LR), "out_dir": root / "nokd"},
        {"config": make_config(seed=4, method="kd", loss={"lam": 0.7, "temperature": 4.0}),
         "out_dir": root / "kd", "guides": [teacher]},
        {"config": make_config(seed=5, method="sdgkd", schedule=STEP_LR,
                               loss={"keep_prob": 0.5, "drop_teacher": True}),
         "out_dir": root / "sdgkd", "guides": [teacher, second_guide]},
    ]
    if table is not None:
        specs.append({"config": make_config(seed=6, method="kd"), "out_dir": root / "kd_table",
                      "guides": [teacher], "guide_tables": [table]})
    return specs


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


