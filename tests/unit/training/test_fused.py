"""Fused training (dgkd_core.training.fused): a group trains each member to its solo weights, is
deterministic, and stops and resumes as one model does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dgkd_core.schema import ConfigError
from dgkd_core.training.fused import train_fused
import dgkd_core.training.trainer as train_mod
from dgkd_core.training.trainer import EXIT_RESUMABLE, TrainingInterrupted, train
from horizontal_members import members as group_members
from helpers import (FINAL_OUTPUTS, assert_no_outputs, history_without_timing,
                     run_config, stopped_points)

REPO = Path(__file__).resolve().parents[3]
# the mechanism that keeps solo's maths exactly here (`auto` may pick horizontal on a GPU)
EXACT = "cuda_streams" if torch.cuda.is_available() else "sequential"


@pytest.fixture(scope="module")
def second_guide(tiny_data, tmp_path_factory) -> Path:
    """A plane3 trained for one epoch: a guide other than the `teacher` fixture."""
    out = tmp_path_factory.mktemp("guide3")
    train(run_config(model="plane3", epochs=1, seed=8), tiny_data, out, progress=False)
    return out / "model.pt"


def members(tiny_data, teacher, second_guide, root: Path) -> list[dict]:
    """Three plane2 runs (horizontal_members.members at the default lr): other seeds, other
    guides, a stochastic DGKD member, and a step schedule whose milestone changes the lr after
    epoch 1 (of 2)."""
    return group_members(root, teacher, second_guide, make_config=run_config)


def with_data(specs: list[dict], data: Path) -> list[dict]:
    return [{**spec, "data": data} for spec in specs]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def assert_close_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key].double(), wb[key].double(), rtol=0, atol=atol), key


def test_fused_group_trains_each_member_to_its_solo_weights(
        tiny_data, teacher, second_guide, tmp_path):
    specs = members(tiny_data, teacher, second_guide, tmp_path / "fused")
    fused = train_fused(with_data(specs, tiny_data), progress=False, mechanism=EXACT)
    for spec, metrics in zip(specs, fused):
        solo = tmp_path / "solo" / spec["out_dir"].name
        train(spec["config"], tiny_data, solo, spec.get("guides", ()), progress=False)
        assert_close_weights(solo, spec["out_dir"])
        assert history_without_timing(solo) == history_without_timing(spec["out_dir"])
        assert metrics["fused_group"] == {"members": [str(s["out_dir"]) for s in specs],
                                          "mechanism": EXACT}
        assert json.loads((spec["out_dir"] / "metrics.json").read_text()) == metrics
        assert "fused_group" not in json.loads((solo / "metrics.json").read_text())
        assert not (spec["out_dir"] / "resume.pt").exists()
    # The milestone did change the lr, and the members did differ from each other.
    lrs = [float(row["lr"]) for row in history_without_timing(specs[0]["out_dir"])]
    assert lrs == pytest.approx([0.05, 0.01])
    first, second = weights(specs[0]["out_dir"]), weights(specs[1]["out_dir"])
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_fused_runs_are_deterministic(tiny_data, teacher, second_guide, tmp_path):
    runs = []
    for name in ("a", "b"):
        specs = members(tiny_data, teacher, second_guide, tmp_path / name)[1:]
        for spec in specs:
            spec["config"]["epochs"] = 1
        train_fused(with_data(specs, tiny_data), progress=False)
        runs.append(specs)
    for first, second in zip(*runs):
        assert_close_weights(first["out_dir"], second["out_dir"], atol=0.0)


def test_stopped_group_resumes_every_member_to_the_uninterrupted_result(
        tiny_data, teacher, second_guide, tmp_path, monkeypatch):
    """SIGTERM during epoch 2's third round of steps: the 1-epoch member has finished by then
    and waits; the others finish that step and save mid-epoch. The restart ends where an
    uninterrupted group does."""
    def specs_at(root):
        specs = with_data(members(tiny_data, teacher, second_guide, root), tiny_data)
        specs[1]["config"]["epochs"] = 1
        return specs

    reference = specs_at(tmp_path / "straight")
    train_fused(reference, progress=False)

    real_step = train_mod.Trainer.run_step
    calls = {"n": 0}

    def step_then_signal(self, batch, lr):
        calls["n"] += 1
        if calls["n"] == 8 * 3 + 2 * 2 + 1:  # epoch 1 for all three, then 2 rounds of two
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, batch, lr)

    stopped = specs_at(tmp_path / "stopped")
    monkeypatch.setattr(train_mod.Trainer, "run_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as caught:
        train_fused(stopped, progress=False)
    assert caught.value.code == EXIT_RESUMABLE and "SIGTERM" in caught.value.reason
    monkeypatch.setattr(train_mod.Trainer, "run_step", real_step)
    assert stopped_points(stopped) == [(1, 3), (1, 0), (1, 3)]

    resumed = train_fused(stopped, progress=False)
    for ref, spec, metrics in zip(reference, stopped, resumed):
        assert_close_weights(ref["out_dir"], spec["out_dir"], atol=0.0)
        assert history_without_timing(ref["out_dir"]) == history_without_timing(spec["out_dir"])
        assert metrics["resumed"] is True
        assert not (spec["out_dir"] / "resume.pt").exists()


def test_one_members_time_budget_stops_the_group_and_a_restart_completes(
        tiny_data, teacher, tmp_path):
    """A 5 s budget (under the 10 s safety margin) stops the group after its first round; the
    budget does not belong to the resume state's identity, so a run without it resumes."""
    def specs_at(root, budget):
        return [{"config": run_config(seed=3, time_budget_s=budget), "data": tiny_data,
                 "out_dir": root / "a"},
                {"config": run_config(seed=4, method="kd"), "data": tiny_data,
                 "out_dir": root / "b", "guides": [teacher]}]

    with pytest.raises(TrainingInterrupted) as caught:
        train_fused(specs_at(tmp_path / "run", 5.0), progress=False)
    assert "time budget" in caught.value.reason
    for name in ("a", "b"):
        state = torch.load(tmp_path / "run" / name / "resume.pt", weights_only=True)
        assert (state["epoch"], state["step"]) == (0, 1)
        assert_no_outputs(tmp_path / "run" / name)
    train_fused(specs_at(tmp_path / "run", None), progress=False)
    train_fused(specs_at(tmp_path / "straight", None), progress=False)
    for name in ("a", "b"):
        assert_close_weights(tmp_path / "straight" / name, tmp_path / "run" / name, atol=0.0)


def test_members_at_different_points_each_resume_their_own(
        tiny_data, teacher, tmp_path, monkeypatch):
    """As after a kill between two members' saves: one member resumes mid-epoch 2, the other
    starts from scratch; each ends at its solo weights."""
    real_step = train_mod.Trainer.run_step
    calls = {"n": 0}

    def step_then_signal(self, batch, lr):
        calls["n"] += 1
        if calls["n"] == 8 + 1:  # the first step of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, batch, lr)

    cfg_a, cfg_b = run_config(seed=3), run_config(seed=4, method="kd")
    monkeypatch.setattr(train_mod.Trainer, "run_step", step_then_signal)
    with pytest.raises(TrainingInterrupted):
        train(cfg_a, tiny_data, tmp_path / "a", progress=False)
    monkeypatch.setattr(train_mod.Trainer, "run_step", real_step)
    state = torch.load(tmp_path / "a" / "resume.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)
    train_fused([{"config": cfg_a, "data": tiny_data, "out_dir": tmp_path / "a"},
                 {"config": cfg_b, "data": tiny_data, "out_dir": tmp_path / "b",
                  "guides": [teacher]}], progress=False, mechanism=EXACT)
    train(cfg_a, tiny_data, tmp_path / "solo_a", progress=False)
    train(cfg_b, tiny_data, tmp_path / "solo_b", [teacher], progress=False)
    assert_close_weights(tmp_path / "solo_a", tmp_path / "a", atol=0.0)
    assert_close_weights(tmp_path / "solo_b", tmp_path / "b", atol=0.0)


def test_members_must_have_their_own_out_dirs(tiny_data, tmp_path):
    specs = [{"config": run_config(), "data": tiny_data, "out_dir": tmp_path / "same"},
             {"config": run_config(seed=4), "data": tiny_data, "out_dir": tmp_path / "same"}]
    with pytest.raises(ConfigError, match="share the out_dir"):
        train_fused(specs, progress=False)
    assert_no_outputs(tmp_path / "same")


def test_cli_train_group_stops_on_sigterm_and_resumes(tiny_data, teacher, tmp_path):
    files = []
    for name, cfg, guides in (("a", run_config(seed=3), []),
                              ("b", run_config(seed=4, method="kd"), [str(teacher)])):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "data": str(tiny_data),
                                        "out_dir": str(tmp_path / name), "guides": guides}))
        files.append(str(path))
    cmd = [sys.executable, "-m", "dgkd_core", "--log-file", str(tmp_path / "group.log"),
           "train-group", *[arg for f in files for arg in ("--member", f)]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    log = tmp_path / "group.log"
    while proc.poll() is None and not (log.exists() and "steps/epoch" in log.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_RESUMABLE, proc.stdout.read()
    for name in ("a", "b"):
        assert (tmp_path / name / "resume.pt").exists()
        assert not any((tmp_path / name / f).exists() for f in FINAL_OUTPUTS)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["out_dir"] for line in lines] == [str(tmp_path / "a"), str(tmp_path / "b")]
    reference = tmp_path / "solo_b"
    train(run_config(seed=4, method="kd"), tiny_data, reference, [teacher], progress=False)
    assert_close_weights(reference, tmp_path / "b", atol=0.0)


# ------------------------------------------------------------------ the workflow's groups


def plan_of(path: Path, **changes):
    from dgkd_core.experiment.plan import Plan

    config = yaml.safe_load(path.read_text())
    config.update(changes)
    return Plan(config)


def test_paper_config_groups_follow_the_rules(tmp_path, monkeypatch):
    """fuse: true on the paper's config: every group shares dataset, model, role, epochs,
    batch size and device, no member guides another, and every run is in one group at most;
    the ResNet chain's students (5 methods x 3 seeds) and teachers (3 seeds) are groups."""
    from dgkd_core.experiment.fused_groups import fused_groups

    monkeypatch.chdir(tmp_path)  # no results/ here: nothing trained yet
    plan = plan_of(REPO / "config" / "config.yaml", fuse=True)
    groups = fused_groups(plan)
    seen = [run for group in groups for run in group.runs]
    assert len(seen) == len(set(seen)) and len({g.name for g in groups}) == len(groups)
    for group in groups:
        keys = set()
        for run in group.runs:
            cfg = plan.run_config(run)
            keys.add((run.dataset, run.model, plan.role(run), cfg["epochs"], cfg["batch_size"],
                      cfg["device"]))
            guides = {g for g in plan.guides(run)}
            assert not guides & set(group.runs), f"{run.dir} is guided by a member"
        assert len(keys) == 1 and len(group.runs) > 1
    member_sets = [{(r.dataset, r.seed, r.method_dir, r.lineage_str) for r in g.runs}
                   for g in groups]
    students = {("cifar10", seed, method, lineage) for seed in (20, 31, 55)
                for method, lineage in (
                    ("nokd", "resnet8"), ("kd", "resnet26-resnet8"),
                    ("takd", "resnet26-resnet20-resnet14-resnet8"),
                    ("dgkd", "resnet26-resnet20-resnet14-resnet8"),
                    ("sdgkd-p0.75", "resnet26-resnet20-resnet14-resnet8"))}
    assert any(students <= members for members in member_sets)
    teachers = {("cifar10", seed, "nokd", "resnet26") for seed in (20, 31, 55)}
    assert teachers in member_sets


def test_fuse_false_and_auto_on_a_cpu_plan_no_groups(monkeypatch, tmp_path):
    from dgkd_core.experiment.fused_groups import fuse_enabled, fused_groups

    monkeypatch.chdir(tmp_path)
    tiny = REPO / "config" / "test_tiny.yaml"  # device: cpu
    assert fused_groups(plan_of(tiny)) == []  # auto
    assert fused_groups(plan_of(tiny, fuse=False)) == []
    assert fused_groups(plan_of(tiny, fuse=True))
    assert fuse_enabled("auto", "cuda") and not fuse_enabled("auto", "cpu")
    assert fuse_enabled("auto", "auto") == torch.cuda.is_available()


# ------------------------------------------------------------------ on a GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streams_group_matches_solo_runs(tiny_data, teacher, tmp_path):
    """Each member on its own CUDA stream, its step a captured graph: the same weights as the
    member trained alone (deterministic settings, the default)."""
    specs = [{"config": run_config(seed=3, device="cuda"), "data": tiny_data,
              "out_dir": tmp_path / "a"},
             {"config": run_config(seed=4, method="kd", device="cuda"), "data": tiny_data,
              "out_dir": tmp_path / "b", "guides": [teacher]}]
    fused = train_fused(specs, progress=False, mechanism="cuda_streams")
    assert all(m["fused_group"]["mechanism"] == "cuda_streams" for m in fused)
    for spec in specs:
        solo = tmp_path / f"solo_{spec['out_dir'].name}"
        train(spec["config"], tiny_data, solo, spec.get("guides", ()), progress=False)
        assert_close_weights(solo, spec["out_dir"], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streams_members_recaptured_at_a_milestone_match_solo_runs(tiny_data, teacher,
                                                                        tmp_path):
    """Both members' lr drops after epoch 1, so each re-captures its graph while the other's
    graph lives on: each captured on its own stream (dgkd_core.training.step), neither disturbs the
    other, and each ends at its solo weights."""
    step_lr = {"name": "step", "milestones": [0.5], "gamma": 0.2}
    specs = [{"config": run_config(seed=3, device="cuda", schedule=step_lr), "data": tiny_data,
              "out_dir": tmp_path / "a"},
             {"config": run_config(seed=4, method="kd", device="cuda", schedule=step_lr),
              "data": tiny_data, "out_dir": tmp_path / "b", "guides": [teacher]}]
    fused = train_fused(specs, progress=False, mechanism="cuda_streams")
    for spec, metrics in zip(specs, fused):
        assert metrics["fused_group"]["mechanism"] == "cuda_streams"
        assert metrics["determinism"]["cuda_graph_fallback"] is None
        lrs = [float(row["lr"]) for row in history_without_timing(spec["out_dir"])]
        assert lrs == pytest.approx([0.05, 0.01])
        solo = tmp_path / f"solo_{spec['out_dir'].name}"
        train(spec["config"], tiny_data, solo, spec.get("guides", ()), progress=False)
        assert_close_weights(solo, spec["out_dir"], atol=1e-4)


def test_data_parallel_jobs_train_alone(tmp_path, monkeypatch):
    """A job of several GPUs (resources.gpus_per_job) runs its own ranks: never in a group."""
    from dgkd_core.experiment.fused_groups import fused_groups

    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["fuse"] = True
    config["resources"]["gpus_per_job"] = {"default": 1, "per_role": {"teacher": 2}}
    from dgkd_core.experiment.plan import Plan

    plan = Plan(config)
    groups = fused_groups(plan)
    assert groups and not any(plan.role(r) == "teacher" for g in groups for r in g.runs)
