"""A run with `validation_images`: trained without the held-out images, val_top1 per epoch, the
best-validation epoch beside the last, and the same split on every attempt of the run."""

from __future__ import annotations

import csv

import pytest

from dgkd_core.config import config_hash, resolve_run_config
from dgkd_core.data import load_prepared
from dgkd_core.data.validation import hold_out
from dgkd_core.training.trainer import Trainer, train
from helpers import run_config


def test_a_validation_run_records_val_top1_and_the_best_validation_epoch(tiny_data, tmp_path):
    metrics = train(run_config(validation_images=64), tiny_data, tmp_path, progress=False)
    with open(tmp_path / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    assert len(history) == 2 and all(h["val_top1"] for h in history)
    best = max(history, key=lambda h: float(h["val_top1"]))
    assert metrics["best_val_epoch"] == int(best["epoch"])
    assert metrics["top1_at_best_val"] == pytest.approx(float(best["test_top1"]))
    assert metrics["val_top1_last"] == pytest.approx(float(history[-1]["val_top1"]))
    # The reported number is still the last epoch's test top-1.
    assert metrics["top1_last"] == pytest.approx(float(history[-1]["test_top1"]))


def test_the_run_trains_without_the_held_out_images(tiny_data, tmp_path):
    trainer = Trainer(resolve_run_config(run_config(validation_images=64)), tiny_data, tmp_path,
                      progress=False)
    trainer.setup()
    data = load_prepared(tiny_data)
    train_data, val = hold_out(data, 64, seed=3)
    assert len(train_data.train_labels) == 512 - 64 and len(val.test_labels) == 64
    assert len(trainer.train_loader) == (512 - 64) // 64  # drop_last batches of the rest
    assert len(trainer.val_loader) == 1  # the 64 held-out images, one evaluation batch
    held = {tuple(img.flatten()[:48].tolist()) for img in val.test_images}
    kept = {tuple(img.flatten()[:48].tolist()) for img in train_data.train_images}
    assert not held & kept


def test_a_resumed_run_holds_out_the_same_images(tiny_data):
    """The split is recomputed on every attempt from (labels, n, seed) alone."""
    data = load_prepared(tiny_data)
    first, again = hold_out(data, 64, seed=3)[1], hold_out(load_prepared(tiny_data), 64, 3)[1]
    assert (first.test_labels == again.test_labels).all()
    assert (first.test_images == again.test_images).all()


def test_validation_images_is_part_of_the_runs_identity_only_when_set():
    plain = resolve_run_config(run_config())
    before = {k: v for k, v in plain.items() if k != "validation_images"}  # the key's absence
    assert config_hash(plain) == config_hash(before)
    assert config_hash(plain) != config_hash({**plain, "validation_images": 64})


def test_a_run_resumed_mid_way_matches_a_straight_one(tiny_data, tmp_path, monkeypatch):
    """Stopped in epoch 2 (a non-finite loss keeps the resume state) and resumed: the same
    held-out images, so the same val_top1 per epoch and the same weights as a straight run."""
    import dgkd_core.training.distiller as distiller_mod
    from dgkd_core.errors import TrainingError
    from helpers import EAGER_ON_CUDA, assert_same_weights, history_without_timing

    cfg = run_config(validation_images=64, fast=EAGER_ON_CUDA)
    train(cfg, tiny_data, tmp_path / "straight", progress=False)
    real_loss, calls = distiller_mod.dgkd_loss, {"n": 0}

    def fail_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        total, terms = real_loss(*args, **kwargs)
        return (total * float("nan") if calls["n"] == (512 - 64) // 64 + 1 else total), terms

    monkeypatch.setattr(distiller_mod, "dgkd_loss", fail_in_epoch_2)
    with pytest.raises(TrainingError):
        train(cfg, tiny_data, tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / "resume.pt").exists()
    monkeypatch.setattr(distiller_mod, "dgkd_loss", real_loss)
    assert train(cfg, tiny_data, tmp_path / "cut", progress=False)["resumed"]
    assert_same_weights(tmp_path / "straight" / "model.pt", tmp_path / "cut" / "model.pt")
    straight, cut = (history_without_timing(tmp_path / d) for d in ("straight", "cut"))
    assert [h["val_top1"] for h in straight] == [h["val_top1"] for h in cut]


def test_the_plan_gives_no_guide_table_to_a_validation_run():
    """A guide table is indexed by the whole training split; a validation run trains on less."""
    import yaml

    from pathlib import Path

    from dgkd_core.experiment.plan import Plan

    repo = Path(__file__).resolve().parents[3]
    config = yaml.safe_load((repo / "config" / "test_tiny.yaml").read_text())
    config.update(chains={"plain": {"teacher": "plane4", "tas": ["plane3"], "student": "plane2"}},
                  methods=["kd", "dgkd"], seeds=[1], ablations={}, guide_tables=True)
    assert any(Plan(config).uses_table(r) for r in Plan(config).runs())
    config["hyperparameters"]["defaults"]["validation_images"] = 16
    plan = Plan(config)
    assert not any(plan.uses_table(r) for r in plan.runs())


def test_a_fused_member_with_a_validation_split_matches_its_solo_run(tiny_data, tmp_path):
    """A fused group's member is a whole Trainer: its split and val_top1 are the solo run's."""
    from dgkd_core.training.fused import train_fused
    from helpers import history_without_timing

    specs = [{"config": run_config(seed=3, validation_images=64), "out_dir": tmp_path / "val",
              "data": tiny_data},
             {"config": run_config(seed=4), "out_dir": tmp_path / "plain", "data": tiny_data}]
    fused = train_fused(specs, progress=False)
    assert "best_val_epoch" in fused[0] and "best_val_epoch" not in fused[1]
    train(specs[0]["config"], tiny_data, tmp_path / "solo", progress=False)
    solo, member = (history_without_timing(tmp_path / d) for d in ("solo", "val"))
    assert [h["val_top1"] for h in solo] == [h["val_top1"] for h in member]
