"""The workflow with `fuse: true`: fused groups train the same per-run outputs as train_model
does, finished groups are left alone when a seed is added, and a changed setting reruns the
groups it reaches (dgkd_core.experiment.fused_groups)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from test_workflow import snakemake, tiny

RUNS = ("nokd/plane5", "nokd/plane2", "kd/plane5-plane2", "kd/plane5-plane4",
        "dgkd/plane5-plane4-plane3", "dgkd/plane5-plane4-plane3-plane2")


def config(fuse, seeds=(1, 2)) -> dict:
    """Three methods of the tiny chain: 6 runs per seed, all of them fusable."""
    return {**tiny(methods=["nokd", "kd", "dgkd"], seeds=list(seeds), ablations={}),
            "fuse": fuse}


def planned_jobs(workdir: Path, cfg: dict) -> dict[str, list[str]]:
    """A dry run's training jobs: rule name -> the run directories it writes."""
    proc = snakemake(workdir, "-n", config=cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs, rule = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        rule = m.group(1) if m else rule
        m = re.match(r"^\s+output: (.*)$", line)
        if m and rule and rule.startswith("train_"):
            dirs = {f.rsplit("/", 1)[0].split("results/runs/synthetic/", 1)[1]
                    for f in m.group(1).split(", ")}
            jobs.setdefault(rule, []).extend(sorted(dirs))
    return jobs


def history(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k not in ("img_s", "time_s")}
                for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_fused_workflow_matches_the_solo_one(tmp_path):
    solo, fused = tmp_path / "solo", tmp_path / "fused"
    for workdir, fuse in ((solo, False), (fused, True)):
        workdir.mkdir()
        proc = snakemake(workdir, config=config(fuse))
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert (fused / "results" / "logs" / "train_fused").is_dir()
    assert not (fused / "results" / "logs" / "train").exists()  # every run was fused here
    for seed in (1, 2):
        for run in RUNS:
            a = solo / "results" / "runs" / "synthetic" / f"seed{seed}" / run
            b = fused / "results" / "runs" / "synthetic" / f"seed{seed}" / run
            wa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
            wb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
            for key in wa:
                assert torch.allclose(wa[key].double(), wb[key].double(), atol=1e-5), (run, key)
            assert history(a / "history.csv") == history(b / "history.csv"), run
            group = json.loads((b / "metrics.json").read_text())["fused_group"]
            assert f"results/runs/synthetic/seed{seed}/{run}" in group["members"]
            assert "fused_group" not in json.loads((a / "metrics.json").read_text())
    assert (solo / "results" / "table1.csv").read_text() == (
        fused / "results" / "table1.csv").read_text()

    assert planned_jobs(fused, config(True)) == {}  # finished: nothing to do
    assert planned_jobs(solo, config(True)) == {}  # runs trained alone stay alone
    # A seed added later: its own groups; the finished groups of seeds 1 and 2 stay.
    added = planned_jobs(fused, config(True, seeds=(1, 2, 3)))
    assert sorted(d for dirs in added.values() for d in dirs) == sorted(
        f"seed3/{run}" for run in RUNS)
    # One seed's teacher and TAs are one run each (alone); its three students are a group.
    assert sorted(added.pop("train_model")) == [
        "seed3/dgkd/plane5-plane4-plane3", "seed3/kd/plane5-plane4", "seed3/nokd/plane5"]
    assert [sorted(dirs) for dirs in added.values()] == [
        ["seed3/dgkd/plane5-plane4-plane3-plane2", "seed3/kd/plane5-plane2", "seed3/nokd/plane2"]]
    # A DGKD setting: the DGKD TAs' group, then the students' group (one of whose members is
    # DGKD's student, and whose guide is retrained); the teachers and first TAs stay.
    changed = config(True)
    changed["hyperparameters"]["per_method"]["dgkd"] = {"loss": {"temperature": 3.0}}
    reruns = planned_jobs(fused, changed)
    assert sorted(d for dirs in reruns.values() for d in dirs) == sorted(
        f"seed{s}/{run}" for s in (1, 2) for run in RUNS
        if run.startswith(("dgkd", "nokd/plane2", "kd/plane5-plane2")))


@pytest.mark.slow
def test_fuse_mechanism_reaches_the_groups_and_changing_it_retrains_nothing(tmp_path):
    """`fuse_mechanism: horizontal`: one seed's three students train as one stacked group
    (each member's metrics.json records it); back to auto, nothing is retrained."""
    cfg = {**config(True, seeds=(1,)), "fuse_mechanism": "horizontal"}
    proc = snakemake(tmp_path, config=cfg)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    runs = tmp_path / "results" / "runs" / "synthetic" / "seed1"
    students = ("nokd/plane2", "kd/plane5-plane2", "dgkd/plane5-plane4-plane3-plane2")
    for run in students:
        group = json.loads((runs / run / "metrics.json").read_text())["fused_group"]
        assert group["mechanism"] == "horizontal" and len(group["members"]) == 3, run
    assert "fused_group" not in json.loads((runs / "nokd/plane5" / "metrics.json").read_text())
    assert planned_jobs(tmp_path, config(True, seeds=(1,))) == {}
