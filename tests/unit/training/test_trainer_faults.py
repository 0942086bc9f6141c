"""Trainer faced with hostile or broken inputs and faults: crafted files, NaN states, mislabelled
checkpoints, method/guide mismatches, unwritable outputs, and a workflow that dies."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dgkd_core.errors import TrainingError
from dgkd_core.runtime import StopFlag
from dgkd_core.schema import ConfigError
from dgkd_core.training.evaluate import evaluate_checkpoint
import dgkd_core.training.trainer as train_mod
from dgkd_core.training.trainer import EXIT_RESUMABLE, train
from helpers import (assert_no_outputs, assert_same_weights,
                     history_without_timing, run_config)

REPO = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------ hostile or broken inputs


class _CreatesAFile:
    """Unpickled with torch.load(weights_only=False), this opens `marker` for writing: a crafted
    file running code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_resume_state_runs_no_code_and_is_ignored(tiny_data, tmp_path, caplog):
    out, marker = tmp_path / "out", tmp_path / "marker"
    out.mkdir()
    torch.save({"identity": None, "payload": _CreatesAFile(marker)}, out / "resume.pt")
    with caplog.at_level(logging.WARNING, logger="dgkd_core"):
        metrics = train(run_config(epochs=1), tiny_data, out, progress=False)
    assert not marker.exists(), "loading the resume state ran code from it"
    assert "ignoring unreadable resume state" in caplog.text
    assert metrics["resumed"] is False and (out / "model.pt").is_file()


def test_weights_that_overflow_under_a_finite_loss_write_nothing(tiny_data, tmp_path):
    # lr 1e6, 4 steps: the loss of every step is finite, the weights are not after the last one.
    cfg = run_config(epochs=1, batch_size=128, optimizer={"lr": 1e6})
    with pytest.raises(TrainingError, match=r"non-finite model state at epoch 1, step 4: "
                                            r"'features\.0\.weight' .*no resume state had been"):
        train(cfg, tiny_data, tmp_path, progress=False)
    assert_no_outputs(tmp_path)
    assert not (tmp_path / "resume.pt").exists()


def test_a_non_finite_state_never_replaces_the_last_good_resume_state(
        tiny_data, tmp_path, monkeypatch):
    real_evaluate = train_mod.evaluate
    calls, kept = {"n": 0}, {}

    def evaluate_then_poison(model, loader, **kwargs):
        calls["n"] += 1
        result = real_evaluate(model, loader, **kwargs)
        if calls["n"] == 2:  # epoch 2's end, before its resume state is written
            kept["bytes"] = (tmp_path / "resume.pt").read_bytes()  # epoch 1's
            dict(model.named_buffers())["features.1.running_var"].fill_(float("nan"))
        return result

    monkeypatch.setattr(train_mod, "evaluate", evaluate_then_poison)
    cfg = run_config(epochs=3)
    with pytest.raises(TrainingError, match=r"epoch 2, step 8: 'features\.1\.running_var' holds "
                                            r"inf or NaN; the last good resume state .* is kept"):
        train(cfg, tiny_data, tmp_path, progress=False)
    assert_no_outputs(tmp_path)
    assert (tmp_path / "resume.pt").read_bytes() == kept["bytes"]
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert train(cfg, tiny_data, tmp_path, progress=False)["resumed"] is True


def test_guide_with_a_nan_weight_is_refused(tiny_data, teacher, tmp_path):
    ckpt = torch.load(teacher, weights_only=True)
    key = next(iter(ckpt["state_dict"]))
    weight = ckpt["state_dict"][key]
    weight[(0,) * weight.dim()] = float("nan")
    bad = tmp_path / "nan_guide.pt"
    torch.save(ckpt, bad)
    needle = rf"nan_guide\.pt holds non-finite .*'{re.escape(key)}'"
    with pytest.raises(TrainingError, match=needle):
        train(run_config(method="kd"), tiny_data, tmp_path / "out", [bad], progress=False)
    assert_no_outputs(tmp_path / "out")


def test_checkpoint_whose_weights_are_another_architecture_is_refused(
        tiny_data, teacher, tmp_path):
    ckpt = torch.load(teacher, weights_only=True)  # plane4's weights, said to be resnet8's
    ckpt["model"] = "resnet8"
    bad = tmp_path / "mislabelled.pt"
    torch.save(ckpt, bad)
    needle = r"mislabelled\.pt does not fit its architecture 'resnet8': (missing|unexpected)"
    with pytest.raises(TrainingError, match=needle):
        train(run_config(method="kd"), tiny_data, tmp_path / "out", [bad], progress=False)
    assert_no_outputs(tmp_path / "out")
    with pytest.raises(TrainingError, match=needle):
        evaluate_checkpoint(bad, tiny_data)


@pytest.mark.parametrize("method, n_guides, loss, needle", [
    ("kd", 0, {}, "method 'kd' takes exactly 1 guide checkpoint, but 0 were given"),
    ("nokd", 1, {}, "method 'nokd' takes no guide checkpoints, but 1 was given"),
    ("dgkd", 1, {}, "method 'dgkd' takes at least 2 guide checkpoints, but 1 was given"),
    ("sdgkd", 2, {}, "method 'sdgkd' needs loss.keep_prob"),
    ("kd", 1, {"keep_prob": 0.5}, "loss.keep_prob is 0.5 but method is 'kd'"),
])
def test_method_and_guides_that_disagree_fail_before_anything(
        tiny_data, teacher, tmp_path, method, n_guides, loss, needle):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=re.escape(needle)):
        train(run_config(method=method, loss=loss), tiny_data, out, [teacher] * n_guides,
              progress=False)
    assert not out.exists()


def _no_training(*_args, **_kwargs):
    raise AssertionError("an epoch was trained before the bad out_dir was found")


def test_out_dir_that_is_a_file_fails_before_training(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod.Trainer, "run_epoch", _no_training)
    (tmp_path / "taken").write_text("not a folder")
    for out in (tmp_path / "taken", tmp_path / "taken" / "run"):
        with pytest.raises(TrainingError, match=f"out_dir {re.escape(str(out))} cannot be "
                                                "written: .*taken is a file, not a folder"):
            train(run_config(), tiny_data, out, progress=False)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_out_dir_without_write_access_fails_before_training(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod.Trainer, "run_epoch", _no_training)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(TrainingError, match=f"out_dir {re.escape(str(locked))} cannot be "
                                                "written: Permission denied"):
            train(run_config(), tiny_data, locked, progress=False)
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------ an orphaned trainer


def test_trainer_stops_and_saves_once_its_workflow_is_gone(tiny_data, tmp_path, monkeypatch):
    workflow = subprocess.Popen(["sleep", "30"])  # stands in for Snakemake
    real_evaluate = train_mod.evaluate

    def evaluate_then_kill_the_workflow(model, loader, **kwargs):
        result = real_evaluate(model, loader, **kwargs)
        if workflow.poll() is None:  # at epoch 1's end
            workflow.kill()
            workflow.wait()
            time.sleep(1.2)  # past the flag's once-a-second look: the next check sees it gone
        return result

    monkeypatch.setattr(train_mod, "evaluate", evaluate_then_kill_the_workflow)
    cfg, out = run_config(epochs=3), tmp_path / "out"
    try:
        with pytest.raises(SystemExit) as stopped:
            train(cfg, tiny_data, out, progress=False, watch_pid=workflow.pid)
    finally:
        workflow.kill()
        workflow.wait()
    assert stopped.value.code == EXIT_RESUMABLE
    assert stopped.value.reason == f"parent workflow (pid {workflow.pid}) is gone"
    assert_no_outputs(out)
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 0

    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert train(cfg, tiny_data, out, progress=False)["resumed"] is True
    train(cfg, tiny_data, tmp_path / "straight", progress=False)
    assert_same_weights(tmp_path / "straight" / "model.pt", out / "model.pt")
    assert history_without_timing(tmp_path / "straight") == history_without_timing(out)


def test_stop_flag_counts_an_unreaped_workflow_as_gone():
    workflow = subprocess.Popen(["sleep", "30"])
    try:
        assert StopFlag(watch_pid=workflow.pid).reason is None
        workflow.kill()  # not waited for: a zombie, which os.kill(pid, 0) still finds
        time.sleep(0.2)
        assert StopFlag(watch_pid=workflow.pid).reason == \
            f"parent workflow (pid {workflow.pid}) is gone"
    finally:
        workflow.kill()
        workflow.wait()


# Run in a child: prints workflow_ancestor_pid() as the child sees it.
_PRINT_ANCESTOR = "from dgkd_core.runtime import workflow_ancestor_pid as f; print(f())"


def test_workflow_ancestor_pid_finds_the_workflow_above_a_shell(tmp_path):
    fake = tmp_path / "snakemake_fake.py"  # a process whose command line names Snakemake
    fake.write_text(
        "import os, subprocess, sys\n"
        # A job's shell in between, as Snakemake may run one; '; true' keeps bash from exec-ing.
        "child = subprocess.run(['bash', '-c', '\"$@\"; true', 'bash', sys.executable, '-c', "
        f"{_PRINT_ANCESTOR!r}], capture_output=True, text=True, check=True)\n"
        "print(os.getpid(), child.stdout.strip())\n")
    res = subprocess.run([sys.executable, str(fake)], cwd=REPO, capture_output=True, text=True,
                         check=True)
    fake_pid, seen = res.stdout.split()
    assert seen == fake_pid
    alone = subprocess.run([sys.executable, "-c", _PRINT_ANCESTOR], cwd=REPO,
                           capture_output=True, text=True, check=True)
    assert alone.stdout.strip() == "None"
