"""`auto`'s mechanism per device kind (dgkd_core.training.fuse_choice), a fused group on `auto`
running it, `compile` refused where the group does not run horizontal, and what a GPU window's
campaign fuses with, from that window's `bench --fused` figures."""

from __future__ import annotations

import json

import pytest

from dgkd_core import cli
from dgkd_core.errors import ConfigError
from dgkd_core.io import load_yaml_file
from dgkd_core.training.fuse_choice import (CHOICES, WINDOW_FUSE_MARGIN, auto_mechanism,
                                            window_fuse_choice)
from dgkd_core.training.fused import MECHANISMS, train_fused
from helpers import run_config


def test_each_device_kind_has_a_known_mechanism_and_its_evidence():
    for kind, choice in CHOICES.items():
        assert {choice.mechanism, choice.otherwise} <= set(MECHANISMS) - {"auto"}, kind
        assert choice.evidence
        assert choice.measured or "not measured" in choice.evidence, kind


def test_auto_follows_the_recorded_choice():
    assert auto_mechanism("cpu", stackable=True) == "sequential"  # measured: horizontal loses
    assert auto_mechanism("cuda", stackable=True) == CHOICES["cuda"].mechanism
    assert auto_mechanism("cuda", stackable=False) == "cuda_streams"
    assert auto_mechanism("mixed", stackable=True) == "sequential"


def test_a_group_on_auto_runs_the_choice_for_its_device(tiny_data, tmp_path):
    specs = [{"config": run_config(seed=3, epochs=1, device="cpu"), "data": tiny_data,
              "out_dir": tmp_path / "a"},
             {"config": run_config(seed=4, epochs=1, device="cpu"), "data": tiny_data,
              "out_dir": tmp_path / "b"}]
    for metrics in train_fused(specs, progress=False):
        assert metrics["fused_group"]["mechanism"] == auto_mechanism("cpu", stackable=True)


def test_compile_without_horizontal_is_refused(tiny_data, tmp_path):
    specs = [{"config": run_config(seed=3, epochs=1, device="cpu"), "data": tiny_data,
              "out_dir": tmp_path / "a"},
             {"config": run_config(seed=4, epochs=1, device="cpu"), "data": tiny_data,
              "out_dir": tmp_path / "b"}]
    with pytest.raises(ConfigError, match="compile is a setting of the horizontal mechanism"):
        train_fused(specs, progress=False, mechanism="sequential", compile=True)
    assert not (tmp_path / "a" / "model.pt").exists()


# ------------------------------------------------------------------ a window's campaign


def figures(students: dict, teachers: dict | None = None) -> list[dict]:
    """bench --fused entries: mechanism -> aggregate img/s (a str: the entry failed)."""
    entries = []
    for workload, table in (("students_resnet8_k15", students),
                            ("teachers_resnet26_k3", teachers or {})):
        for mechanism, img_s in table.items():
            entry = {"workload": workload, "mechanism": mechanism}
            entry.update({"failed": img_s} if isinstance(img_s, str)
                         else {"aggregate_img_s": img_s})
            entries.append(entry)
    return entries


def test_a_window_fuses_with_the_fastest_mechanism_on_a_clear_win():
    choice = window_fuse_choice(figures({"solo": 1000, "sequential": 990, "horizontal": 4000,
                                         "cuda_streams": 1600}, {"solo": 500, "horizontal": 700}))
    assert choice.mechanism == "horizontal"
    assert "horizontal 4.00x solo" in choice.reason and "teachers_resnet26_k3 1.40x" in choice.reason
    # cuda_streams where horizontal failed; sequential stands in for an unmeasured solo
    choice = window_fuse_choice(figures({"sequential": 1000, "horizontal": "RuntimeError: x",
                                         "cuda_streams": 1600}))
    assert choice.mechanism == "cuda_streams"


@pytest.mark.parametrize("students, teachers, why", [
    ({"solo": 1000, "horizontal": 1400}, None, "no clear win"),  # below WINDOW_FUSE_MARGIN
    ({"solo": 1000, "horizontal": 4000}, {"solo": 500, "horizontal": 400}, "below 0.9x"),
    ({"horizontal": 4000}, None, "not measured"),  # nothing to compare with
    ({"solo": 1000, "sequential": 900}, None, "not measured"),  # no fused mechanism measured
])
def test_a_window_trains_solo_without_a_clear_measured_win(students, teachers, why):
    choice = window_fuse_choice(figures(students, teachers))
    assert choice.mechanism is None and why in choice.reason
    assert WINDOW_FUSE_MARGIN == 1.5


def test_fuse_choice_writes_the_overlay_or_removes_a_stale_one(tmp_path, capsys):
    fused, out = tmp_path / "fused.json", tmp_path / "fuse.yaml"
    fused.write_text(json.dumps({"workloads": figures({"solo": 100, "horizontal": 400})}))
    assert cli.main(["campaign", "fuse-choice", "--fused", str(fused), "--out", str(out)]) == 0
    assert load_yaml_file(out) == {"fuse": True, "fuse_mechanism": "horizontal"}
    assert capsys.readouterr().out.startswith("fuse: horizontal (students_resnet8_k15 "
                                              "horizontal 4.00x solo)")
    for text in (json.dumps({"workloads": figures({"solo": 100, "horizontal": 120})}), "{",
                 None):
        fused.unlink(missing_ok=True)
        if text is not None:
            fused.write_text(text)
        assert cli.main(["campaign", "fuse-choice", "--fused", str(fused), "--out",
                         str(out)]) == 0
        assert not out.exists()
        assert capsys.readouterr().out.startswith("fuse: off, every run its own job (")
