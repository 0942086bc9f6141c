"""`auto`'s mechanism per device kind (dgkd_core.training.fuse_choice), a fused group on `auto`
running it, and `compile` refused where the group does not run horizontal."""

from __future__ import annotations

import pytest

from dgkd_core.errors import ConfigError
from dgkd_core.training.fuse_choice import CHOICES, auto_mechanism
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
