"""Issue 25, item 7: report inputs that are valid JSON or CSV but wrong are refused in one line
naming the file: non-finite or non-numeric metrics, an unreadable or empty history.csv, and a
metrics.json that records another run than the one its path names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dgkd_core.experiment import paths
from dgkd_core.reporting import tables as report
from dgkd_core.reporting.tables import ReportError

CHAIN = ["plane10", "plane8", "plane6", "plane4", "plane2"]


def trained_metrics(run: paths.Run, top1: float = 48.0) -> dict:
    """What the trainer writes for `run` (the keys the report and the identity check read)."""
    guides = [paths.make_run(run.dataset, run.seed, "nokd", [model]).file("model.pt")
              for model in run.lineage[:-1]]
    return {"model": run.model, "method": run.method, "seed": run.seed,
            "dataset": run.dataset, "guides": guides, "epochs": 3, "top1_last": top1,
            "top5_last": 99.0, "top1_best": top1 + 1, "best_epoch": 2, "wall_time_s": 1.0,
            "config": {"model": run.model, "method": run.method, "seed": run.seed,
                       "loss": {"keep_prob": run.keep_prob, "drop_num": 0}}}


def write(root: Path, run: paths.Run, metrics: dict, history: bytes | None = None) -> Path:
    path = root / run.file("metrics.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    path.with_name("history.csv").write_bytes(
        history if history is not None else b"epoch,test_top1\n1,40.0\n2,45.0\n3,48.0\n")
    return path


DGKD = paths.make_run("cifar100", 20, "dgkd", CHAIN)
KD = paths.make_run("cifar100", 20, "kd", ["plane10", "plane2"])


def refused(path: Path, *fragments: str, read=report.read_metrics) -> str:
    with pytest.raises(ReportError) as err:
        read(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_a_run_as_the_trainer_writes_it_is_read(tmp_path):
    path = write(tmp_path, DGKD, trained_metrics(DGKD))
    assert report.read_metrics(path)["top1_last"] == 48.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "high", None, True])
@pytest.mark.parametrize("key", ["top1_last", "top1_best", "epochs"])
def test_a_metric_that_is_not_a_finite_number_is_refused(tmp_path, key, value):
    path = write(tmp_path, DGKD, {**trained_metrics(DGKD), key: value})
    refused(path, key, "finite number")


@pytest.mark.parametrize("key, value", [
    ("seed", 31), ("method", "takd"), ("model", "plane4"), ("dataset", "cifar10")])
def test_a_metrics_json_of_another_run_is_refused(tmp_path, key, value):
    path = write(tmp_path, DGKD, {**trained_metrics(DGKD), key: value})
    refused(path, "another run", key)


def test_a_metrics_json_with_another_lineage_is_refused(tmp_path):
    record = trained_metrics(paths.make_run("cifar100", 20, "kd", ["resnet20", "plane2"]))
    path = write(tmp_path, DGKD, {**record, "method": "dgkd"})
    refused(path, "another run", "guides resnet20")
    path = write(tmp_path, DGKD, {**trained_metrics(DGKD), "guides": []})
    refused(path, "another run", "guides none")


def test_a_metrics_json_with_another_keep_prob_is_refused(tmp_path):
    run = paths.make_run("cifar100", 20, "sdgkd", CHAIN, keep_prob=0.75)
    record = trained_metrics(run)
    record["config"]["loss"]["keep_prob"] = 0.5
    refused(write(tmp_path, run, record), "another run", "keep_prob")


@pytest.mark.parametrize("history, fragment", [
    (b"", "empty"), (b"epoch,test_top1\n1,\xff\xfe40\n", "UTF-8"),
    (b"epoch,train_loss\n1,0.5\n", "test_top1")])
def test_a_bad_history_csv_is_refused_naming_it(tmp_path, history, fragment):
    path = write(tmp_path, KD, trained_metrics(KD), history)
    runs = report.load_runs([str(path)])
    with pytest.raises(ReportError) as err:
        report.learning_curves(runs)
    text = str(err.value)
    history_path = path.with_name("history.csv")
    assert "\n" not in text and str(history_path) in text and fragment in text, text


def test_a_metrics_json_nested_100000_deep_is_one_line(tmp_path):
    path = write(tmp_path, KD, trained_metrics(KD))
    path.write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(path, "nests too deeply")
