"""Weights & Biases tracking (run config `logging.wandb`), against a stand-in `wandb` module that
records what the trainer asks of it (the package is an optional extra, not installed for tests;
its own offline mode is what `wandb_mode: offline` selects)."""

from __future__ import annotations

import sys
import types

import pytest

import dgkd_core.training.trainer as train_mod
from dgkd_core.config import config_hash, resolve_run_config
from dgkd_core.schema import ConfigError
from dgkd_core.training.trainer import train
from dgkd_core.training.wandb_log import MISSING_PACKAGE, run_id
from helpers import read_history, run_config


class FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.logged: list[tuple[int, dict]] = []
        self.summary: dict = {}
        self.finished = False

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs: list[FakeRun] = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return runs


def test_a_run_logs_each_epoch_and_its_summary_offline(tiny_data, tmp_path, fake_wandb):
    out = tmp_path / "run"
    metrics = train(run_config(logging={"wandb": True}), tiny_data, out, progress=False)
    (run,) = fake_wandb
    assert run.init["mode"] == "offline" and run.init["project"] == "dgkd"
    assert run.init["id"] == run_id(out) and run.init["resume"] == "allow"
    assert run.init["config"]["model"] == "plane2" and run.init["config"]["optimizer.lr"] == 0.05
    history = read_history(out)
    assert [step for step, _ in run.logged] == [int(r["epoch"]) for r in history] == [1, 2]
    assert run.logged[-1][1]["test_top1"] == pytest.approx(float(history[-1]["test_top1"]))
    assert run.summary["top1_last"] == metrics["top1_last"]
    assert run.finished


def test_a_resumed_run_continues_the_same_wandb_run(tiny_data, tmp_path, fake_wandb, monkeypatch):
    cfg, out = run_config(epochs=3, logging={"wandb": True}), tmp_path / "run"
    real_write = train_mod.write_resume_state

    def stopped_after_epoch_1(path, state, **kwargs):
        real_write(path, state, **kwargs)
        if state.epoch == 1:
            raise KeyboardInterrupt  # as a kill right after epoch 1's resume state

    monkeypatch.setattr(train_mod, "write_resume_state", stopped_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data, out, progress=False)
    monkeypatch.setattr(train_mod, "write_resume_state", real_write)
    assert train(cfg, tiny_data, out, progress=False)["resumed"] is True
    first, second = fake_wandb
    assert first.finished and first.init["id"] == second.init["id"]
    assert [step for step, _ in second.logged] == [2, 3]


def test_wandb_without_the_package_is_one_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError) as err:
        train(run_config(logging={"wandb": True}), tiny_data, tmp_path / "run", progress=False)
    assert str(err.value) == MISSING_PACKAGE and "dgkd-core[wandb]" in str(err.value)
    assert not (tmp_path / "run" / "resume.pt").exists()


def test_tracking_settings_change_no_run_identity():
    base = resolve_run_config(run_config())
    tracked = resolve_run_config(run_config(logging={"wandb": True, "wandb_mode": "online",
                                                     "wandb_project": "mine"}))
    assert config_hash(base) == config_hash(tracked)
    with pytest.raises(ConfigError, match="wandb_mode"):
        resolve_run_config(run_config(logging={"wandb": True, "wandb_mode": "cloud"}))
