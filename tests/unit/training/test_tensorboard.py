"""TensorBoard logging (run config `logging`) and history.csv's train top-1 and test loss."""

from __future__ import annotations

import importlib.util
import logging
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from dgkd_core.cli import main
from dgkd_core.config import (DEFAULT_RUN_CONFIG, config_hash, resolve_run_config,
                              semantic_settings, settings_schema)
from dgkd_core.experiment import paths
from dgkd_core.experiment.plan import Plan
from dgkd_core.method.models import build_model
from dgkd_core.schema import ConfigError
import dgkd_core.training.distiller as distiller_mod
from dgkd_core.training.distiller import Distiller
from dgkd_core.training.evaluate import evaluate_checkpoint
from dgkd_core.training.tensorboard_log import MISSING_PACKAGE, check_available, tag_for
import dgkd_core.training.trainer as train_mod
from dgkd_core.training.trainer import train
from helpers import read_history, run_config

REPO = Path(__file__).resolve().parents[3]
WORKFLOW_CONFIGS = ("config.yaml", "demo.yaml", "cifar10_local.yaml", "released_code.yaml",
                    "cifar10_repro.yaml", "test_tiny.yaml")
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(
    not HAVE_TENSORBOARD, reason="the tensorboard package is not installed "
                                 "(pip install 'dgkd-core[tensorboard]')")


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] as TensorBoard shows them (orphaned events purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_events_match_history(directory: Path, history: list[dict]) -> None:
    scalars = read_scalars(directory)
    columns = [c for c in history[0] if c != "epoch"]
    assert sorted(scalars) == sorted(tag_for(c) for c in columns)
    for column in columns:
        events = scalars[tag_for(column)]
        assert [step for step, _ in events] == [int(r["epoch"]) for r in history], column
        for (_, value), row in zip(events, history):
            # events hold float32, history.csv the float64 the trainer computed
            assert value == pytest.approx(float(row[column]), rel=1e-6, abs=1e-30), column


# ------------------------------------------------------------------ the setting


def test_tags_of_the_history_columns():
    """Spelled out once, so that the event tests' use of tag_for checks something real."""
    expected = {"train_ce": "train/ce", "train_kd_teacher": "train/kd_teacher",
                "train_top1": "train/top1", "test_top1": "test/top1", "test_top5": "test/top5",
                "test_loss": "test/loss", "lr": "train/lr", "img_s": "speed/img_per_s"}
    assert {column: tag_for(column) for column in expected} == expected


def test_logging_changes_neither_the_hash_nor_the_rerun_params():
    plain = resolve_run_config(run_config())
    logged = resolve_run_config(run_config(logging={"tensorboard": True,
                                                    "tensorboard_dir": "elsewhere/tb"}))
    assert logged["logging"] == {**plain["logging"], "tensorboard": True,
                                 "tensorboard_dir": "elsewhere/tb"}
    assert config_hash(plain) == config_hash(logged)
    assert semantic_settings(plain) == semantic_settings(logged)
    assert "logging" not in semantic_settings(logged)


def test_logging_defaults_and_what_a_layer_may_set():
    assert DEFAULT_RUN_CONFIG["logging"] == {"tensorboard": False, "tensorboard_dir": None,
                                             "wandb": False, "wandb_project": "dgkd",
                                             "wandb_mode": "offline"}
    layer = settings_schema()["properties"]["logging"]["properties"]
    assert "tensorboard" in layer and "tensorboard_dir" not in layer  # paths.py decides it
    config = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
    config["hyperparameters"]["defaults"]["logging"] = {"tensorboard_dir": "x"}
    with pytest.raises(ConfigError, match="tensorboard_dir"):
        Plan(config)
    with pytest.raises(ConfigError, match="logging.tensorboard"):
        resolve_run_config(run_config(logging={"tensorboard": "yes"}))


@pytest.mark.parametrize("name", WORKFLOW_CONFIGS)
def test_workflow_configs_turn_tensorboard_on(name):
    plan = Plan(yaml.safe_load((REPO / "config" / name).read_text()))
    assert all(plan.run_config(run)["logging"]["tensorboard"] for run in plan.runs())


def test_a_runs_tensorboard_folder():
    run = paths.make_run("synthetic", 1, "kd", ["plane4", "plane2"])
    assert run.tensorboard_dir == "results/tensorboard/synthetic/seed1/kd/plane4-plane2"
    assert paths.run_from_path("/w/" + run.file("model.pt")).tensorboard_dir == \
        run.tensorboard_dir
    assert paths.tensorboard_dir("cifar10", 20, "sdgkd-p0.75", "a-b-c") == \
        "results/tensorboard/cifar10/seed20/sdgkd-p0.75/a-b-c"


def test_missing_package_is_one_line_before_training(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    check_available({"tensorboard": False, "tensorboard_dir": None})  # off: not needed
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        train(run_config(logging={"tensorboard": True}), tiny_data, out, progress=False)
    assert str(err.value) == MISSING_PACKAGE
    assert not out.exists(), "the run got as far as its out_dir"
    status = main(["train", "--set", f"data={tiny_data}", "--set", f"out_dir={out}",
                   "--set", "model=plane2", "--set", "logging.tensorboard=true"])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {MISSING_PACKAGE}"]
    # one line naming the problem and both fixes
    assert "\n" not in MISSING_PACKAGE
    assert all(part in MISSING_PACKAGE for part in (
        "tensorboard package is not installed", "pip install", "logging.tensorboard: false"))


# ------------------------------------------------------------------ history.csv


def test_distiller_top1_term_is_the_batch_accuracy():
    torch.manual_seed(0)
    distiller = Distiller(build_model("plane2", 10), [build_model("plane3", 10)],
                          {"lam": 0.5, "temperature": 4.0, "convention": "paper"})
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    total, terms = distiller(x, y, None)
    assert distiller.term_names == ["ce", "kd_teacher", "total", "top1"]
    with torch.no_grad():
        expected = 100.0 * (distiller.student(x).argmax(1) == y).float().mean()
    assert float(terms["top1"]) == pytest.approx(float(expected))
    assert not terms["top1"].requires_grad and total.requires_grad


def test_history_has_train_top1_and_test_loss(tiny_data, tmp_path, monkeypatch):
    counts: list[tuple[int, int]] = []  # (correct, images) of each training step
    real_loss = distiller_mod.dgkd_loss

    def counting(student_logits, guide_logits, targets, **kwargs):
        counts.append((int((student_logits.argmax(1) == targets).sum()), targets.shape[0]))
        return real_loss(student_logits, guide_logits, targets, **kwargs)

    monkeypatch.setattr(distiller_mod, "dgkd_loss", counting)
    out = tmp_path / "run"
    metrics = train(run_config(), tiny_data, out, progress=False)
    history = read_history(out)
    assert {"train_top1", "test_loss"} <= set(history[0])
    steps = len(counts) // 2
    for row, epoch_counts in zip(history, (counts[:steps], counts[steps:])):
        correct, images = map(sum, zip(*epoch_counts))
        assert float(row["train_top1"]) == pytest.approx(100.0 * correct / images, rel=1e-6)
    again = evaluate_checkpoint(out / "model.pt", tiny_data, device="cpu")
    assert again["top1"] == metrics["top1_last"]
    assert float(history[-1]["test_loss"]) == pytest.approx(again["loss"], rel=1e-9)


# ------------------------------------------------------------------ the event files


@needs_tensorboard
def test_cli_writes_events_into_out_dir_tensorboard(tiny_data, tmp_path):
    out = tmp_path / "cli"
    assert main(["train", "--set", f"data={tiny_data}", "--set", f"out_dir={out}",
                 "--set", "model=plane2", "--set", "epochs=1", "--set", "batch_size=128",
                 "--set", "logging.tensorboard=true"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert_events_match_history(out / "tensorboard", read_history(out))
    assert_hparams_are_the_run_config(out)


def assert_hparams_are_the_run_config(out: Path) -> None:
    """The HParams tab's session: every resolved setting, and the test curves as metrics."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert start.hparams["model"].string_value == "plane2"
    assert start.hparams["batch_size"].number_value == 128
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(cfg["optimizer"]["lr"])
    assert start.hparams["schedule.milestones"].string_value == json.dumps(
        cfg["schedule"]["milestones"])
    assert [m.name.tag for m in experiment.metric_infos] == ["test/top1", "test/top5",
                                                             "test/loss"]


@needs_tensorboard
def test_resumed_run_logs_each_epoch_once(tiny_data, tmp_path, monkeypatch):
    tb_dir = tmp_path / "tb" / "this-run"
    cfg = run_config(epochs=3, logging={"tensorboard": True, "tensorboard_dir": str(tb_dir)})
    out = tmp_path / "run"
    real_write = train_mod.write_resume_state

    class Killed(Exception):
        pass

    def killed_after_epoch_2s_events(path, state, **kwargs):
        # Epoch 2's scalars are written, its resume state is not: as a SIGKILL between the two.
        if state.epoch == 2:
            raise Killed
        real_write(path, state, **kwargs)

    monkeypatch.setattr(train_mod, "write_resume_state", killed_after_epoch_2s_events)
    with pytest.raises(Killed):
        train(cfg, tiny_data, out, progress=False)
    assert [s for s, _ in read_scalars(tb_dir)["test/top1"]] == [1, 2]

    monkeypatch.setattr(train_mod, "write_resume_state", real_write)
    assert train(cfg, tiny_data, out, progress=False)["resumed"] is True
    history = read_history(out)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert_events_match_history(tb_dir, history)  # epoch 2 once: the rerun's
    event_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert {f.parent for f in event_files} == {tb_dir}, "a second run folder"


@needs_tensorboard
def test_workflow_script_logs_under_results_tensorboard(tiny_data, tmp_path, monkeypatch):
    config = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
    plan = Plan(config)
    run = plan.runs()[0]
    monkeypatch.chdir(tmp_path)
    # The script sends stdout/stderr to the job log and sets up logging and threads: undo after.
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    handlers = logging.getLogger("dgkd_core").handlers[:]
    threads = torch.get_num_threads()
    log = tmp_path / "job.log"
    monkeypatch.setattr(Plan, "__init__", lambda *a, **k: pytest.fail("the job built a Plan"))
    snakemake = SimpleNamespace(
        config=config, log=[str(log)], threads=threads,
        output=SimpleNamespace(model=run.file("model.pt")),
        # what rules/common.smk sends: the job builds no plan
        params=SimpleNamespace(run_settings=semantic_settings(plan.run_config(run)),
                               run_configs=[plan.run_config(run)], member_guides=[[]],
                               member_guide_tables=[[]]),
        input=SimpleNamespace(data=str(tiny_data), guides=[], guide_tables=[]),
        resources=SimpleNamespace(runtime=10))
    try:
        runpy.run_path(str(REPO / "workflow_scripts" / "train_model.py"),
                       init_globals={"snakemake": snakemake})
    finally:
        for handler in logging.getLogger("dgkd_core").handlers:
            handler.close()
        logging.getLogger("dgkd_core").handlers[:] = handlers
        sys.stdout.close()
        torch.set_num_threads(threads)
    tb_dir = tmp_path / "results" / "tensorboard" / "synthetic" / f"seed{run.seed}" / \
        run.method_dir / run.lineage_str
    assert tb_dir.as_posix().endswith(run.tensorboard_dir)
    assert_events_match_history(tb_dir, read_history(tmp_path / run.dir))
