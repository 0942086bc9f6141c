"""`python -m dgkd_core import` and `evaluate --model` (dgkd_core.experiment.checkpoint_cli), and the
warning for an imported model near chance (importing.near_chance_warning)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from dgkd_core.cli import main
from dgkd_core.data import load_prepared, prepare_dataset
from dgkd_core.experiment.importing import fitted_model, near_chance_warning, read_state_dict
from dgkd_core.method.models import build_model
from dgkd_core.training.evaluate import evaluate_checkpoint

from test_peer_layouts import PEERS, trained_looking


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.pt"
    prepare_dataset("synthetic", path, name="synthetic", seed=0, synthetic_train=32,
                    synthetic_test=64)
    return path


@pytest.fixture
def repdistiller_file(tmp_path):
    model = trained_looking("resnet8")
    path = tmp_path / "ckpt_resnet8_last.pth"
    torch.save({"opt": argparse.Namespace(model="resnet8"), "epoch": 240, "accuracy": 70.0,
                "model": dict(zip(PEERS["resnet8"], model.state_dict().values()))}, path)
    return path


def _json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_import_writes_a_model_pt_that_evaluate_and_the_workflow_accept(
        repdistiller_file, data, tmp_path, capsys):
    out = tmp_path / "imported"
    assert main(["import", "--checkpoint", str(repdistiller_file), "--model", "resnet8",
                 "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    printed = _json_line(capsys)
    assert printed["model_pt"] == str(out / "model.pt") and "RepDistiller" in printed["layout"]
    again = evaluate_checkpoint(out / "model.pt", data, device="cpu")
    assert again["top1"] == printed["top1"]
    state, about = read_state_dict(out / "model.pt")  # what the workflow's import job reads
    assert about["layout"] == "dgkd_core model.pt"
    fitted_model(state, about, "resnet8", load_prepared(data).meta, "model.pt")
    assert main(["evaluate", "--checkpoint", str(repdistiller_file), "--model", "resnet8",
                 "--data", str(data), "--device", "cpu"]) == 0
    assert _json_line(capsys)["top1"] == printed["top1"]


def test_evaluate_of_a_foreign_file_without_model_asks_for_it(repdistiller_file, data, capsys):
    assert main(["evaluate", "--checkpoint", str(repdistiller_file), "--data", str(data),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "give --model NAME" in err


def test_a_mismatched_import_is_one_line(repdistiller_file, data, tmp_path, capsys):
    assert main(["import", "--checkpoint", str(repdistiller_file), "--model", "resnet20",
                 "--data", str(data), "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match the model's" in err


def test_near_chance_names_normalisation():
    text = near_chance_warning(12.0, 10, "t.pth", {"normalize": None})
    assert "below twice chance (20.0%)" in text and "normalisation" in text
    assert "normalize" in text
    assert near_chance_warning(20.0, 10, "t.pth", {"normalize": None}) is None
    assert near_chance_warning(1.5, 100, "t.pth", {"normalize": None}) is not None


def test_a_chance_level_import_warns(data, tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("plane3", 10, dataset="synthetic")
    with torch.no_grad():  # every image gets class 0: exactly chance on balanced classes
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.arange(10, 0, -1).float())
    path = tmp_path / "chance.pth"
    torch.save(model.state_dict(), path)
    assert main(["import", "--checkpoint", str(path), "--model", "plane3", "--data", str(data),
                 "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert "the likely cause is normalisation" in capsys.readouterr().err
