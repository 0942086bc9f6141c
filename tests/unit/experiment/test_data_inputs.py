"""Missing data inputs are named in one line at workflow startup (experiment/data_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgkd_core.experiment.data_inputs import (missing_data_input, prepared_elsewhere,
                                             unknown_dataset, unknown_target_dataset)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("spec, needles", [
    ({"source": "imagefolder", "archive": "imgs.tar"},
     ["datasets.d.archive: there is no file imgs.tar", "working directory"]),
    ({"source": "imagefolder", "root": "imgs"},
     ["datasets.d.root: there is no folder imgs", "train/<class>/"]),
    ({"source": "cifar10", "root": "dl", "download": False},
     ["datasets.d.root: there is no folder dl", "download: true"]),
])
def test_a_missing_archive_or_root_is_one_line(spec, needles):
    line = missing_data_input({"d": spec})
    assert line is not None and "\n" not in line
    for needle in needles:
        assert needle in line


@pytest.mark.parametrize("spec", [
    {"source": "synthetic"},
    {"source": "cifar10", "root": "dl", "download": True},  # torchvision fetches it
])
def test_inputs_that_need_nothing_on_disk_pass(spec):
    assert missing_data_input({"d": spec}) is None


def test_a_prepared_file_needs_no_root():
    Path("results/data").mkdir(parents=True)
    Path("results/data/d.pt").write_bytes(b"")
    assert missing_data_input({"d": {"source": "imagefolder", "root": "gone"}}) is None


def test_unknown_dataset_names_the_configured_ones():
    assert unknown_dataset("cifar10", {"cifar10": {}}) is None
    line = unknown_dataset("nope", {"cifar10": {}, "cifar100": {}})
    assert "'nope'" in line and "(cifar10, cifar100)" in line


def test_a_data_file_prepared_with_other_settings_is_named():
    from dgkd_core.data import prepare_dataset

    Path("results/data").mkdir(parents=True)
    prepare_dataset("synthetic", "results/data/synthetic.pt", seed=0, synthetic_train=32,
                    synthetic_test=16)
    wanted = {"source": "synthetic", "seed": 0, "resize": None,
              "options": {"synthetic_train": 32, "synthetic_test": 16}}
    assert prepared_elsewhere("synthetic", wanted) is None
    line = prepared_elsewhere("synthetic", {**wanted, "options": {"synthetic_train": 256}})
    assert "train 32, the config's 256" in line and "test 16, the config's 1000" in line
    assert "it is prepared again" in line and "\n" not in line
    assert prepared_elsewhere("other", wanted) is None  # no file: nothing to compare
    Path("results/data/other.pt").write_bytes(b"garbage")
    assert prepared_elsewhere("other", wanted) is None  # unreadable: loading says why


@pytest.mark.parametrize("words, unknown", [
    (["-n", "results/data/nope.pt"], "nope"),
    (["results/runs/nope/seed1/nokd/plane2/metrics.json", "--cores", "2"], "nope"),
    (["./results/runs/nope"], "nope"),
    (["results/data/cifar10.pt", "results/table1.csv", "--configfile", "c.yaml"], None),
])
def test_unknown_target_dataset_reads_the_command_line(words, unknown):
    line = unknown_target_dataset(words, {"cifar10": {}})
    assert (line is None) if unknown is None else f"dataset '{unknown}'" in line
