"""The presets with the TAKD paper's settings (docs/recipe.md, "Presets"): each dry-runs, and
its settings reach the jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgkd_core.experiment.plan import Plan
from dgkd_core.reporting.reproduction import merged_config
from test_workflow import dry_run, write_config

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
TAKD_PAPER = (CONFIG / "config.yaml", CONFIG / "takd_paper.yaml")
RESNET_80 = (CONFIG / "cifar10_repro.yaml", CONFIG / "campaigns" / "cifar10_resnet_80ep.yaml")


def settings(files, method, lineage) -> dict:
    plan = Plan(merged_config(files))
    run = next(r for r in plan.runs() if r.method == method and "-".join(r.lineage) == lineage)
    return plan.run_config(run)


def test_takd_paper_preset_has_the_takd_papers_stated_recipe():
    resnet = settings(TAKD_PAPER, "dgkd", "resnet26-resnet20-resnet14-resnet8")
    plain = settings(TAKD_PAPER, "nokd", "plane2")
    for cfg in (resnet, plain):
        assert cfg["epochs"] == 150 and cfg["optimizer"]["nesterov"] is True
        assert cfg["optimizer"]["momentum"] == 0.9 and cfg["optimizer"]["lr"] == 0.1
        assert cfg["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert resnet["optimizer"]["weight_decay"] == 1e-4
    assert plain["optimizer"]["weight_decay"] == 0.0  # weight decay for ResNets only


def test_takd_paper_preset_dry_run(tmp_path):
    run = dry_run(tmp_path, "results/table1.csv", configfiles=TAKD_PAPER)
    assert run.count("train_model") == 2 * 3 * (11 + 9)  # Table 1's grid, as config.yaml


def resnet_80_files(tmp_path, *more):
    archive = (REPO / "../shared/data/cifar10-images.tar").resolve()
    if not archive.exists():
        pytest.skip(f"{archive} is not here")
    where = write_config(tmp_path / "archive.yaml",
                         {"datasets": {"cifar10": {"archive": str(archive)}}})
    return (*RESNET_80, *more, where)


def test_80_epoch_resnet_config_dry_run(tmp_path):
    """The resnet26 table's protocol (80 epochs, CIFAR-10, resnet26 -> resnet8), alone and with
    the TAKD paper's other settings."""
    files = resnet_80_files(tmp_path)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    run = dry_run(tmp_path / "a", "results/table1.csv", configfiles=files)
    assert run.count("train_model") == 3 * 9
    assert settings(files, "kd", "resnet26-resnet8")["epochs"] == 80
    with_takd = resnet_80_files(tmp_path, CONFIG / "takd_paper.yaml", RESNET_80[1])
    dry_run(tmp_path / "b", "results/table1.csv", configfiles=with_takd)
    cfg = settings(with_takd, "dgkd", "resnet26-resnet20-resnet14-resnet8")
    assert cfg["epochs"] == 80 and cfg["optimizer"]["nesterov"] is True
