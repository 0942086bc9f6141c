"""Fixtures shared by the test files: one small prepared dataset and one trained guide."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgkd_core.data import prepare_dataset
from dgkd_core.training.trainer import train
from helpers import run_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The synthetic task, 512 training and 256 test images (read-only for the tests)."""
    path = tmp_path_factory.mktemp("data") / "synthetic.pt"
    prepare_dataset("synthetic", path, seed=0, synthetic_train=512, synthetic_test=256)
    return path


@pytest.fixture(scope="session")
def teacher(tiny_data, tmp_path_factory) -> Path:
    """A plane4 trained for one epoch on `tiny_data`: a guide checkpoint."""
    out = tmp_path_factory.mktemp("teacher")
    train(run_config(model="plane4", epochs=1), tiny_data, out, progress=False)
    return out / "model.pt"
