"""Issue 25, item 8: a resume.pt whose identity fits but whose contents are damaged (a non-finite
weight, a missing key, a wrong shape) is set aside as resume.pt.damaged-<reason>, with a
one-line warning naming it, and the run starts from scratch; nothing is lost."""

from __future__ import annotations

import logging

import pytest
import torch

from dgkd_core.training.trainer import train
from helpers import resume_state_before_outputs, run_config


@pytest.fixture(scope="module")
def finished_state(tiny_data, tmp_path_factory):
    """A resume.pt as a run leaves it when it dies just before writing its final outputs."""
    return resume_state_before_outputs(tiny_data, tmp_path_factory.mktemp("state"))


def _nan_weight(state):
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    tensor = state["model"][name]
    tensor[(0,) * tensor.dim()] = float("nan")


def _nan_momentum(state):
    buffers = [s for s in state["optimizer"]["state"].values() if "momentum_buffer" in s]
    tensor = buffers[0]["momentum_buffer"]
    tensor[(0,) * tensor.dim()] = float("inf")


def _missing_rng(state):
    del state["rng"]


def _missing_weight(state):
    del state["model"][next(iter(state["model"]))]


def _wrong_shape(state):
    name = next(k for k, v in state["model"].items() if v.dim() > 1)
    state["model"][name] = state["model"][name][:1].clone()


def _text_epoch(state):
    state["epoch"] = "one"


@pytest.mark.parametrize("damage, reason", [
    (_nan_weight, "nonfinite"), (_nan_momentum, "nonfinite"), (_missing_rng, "missing"),
    (_missing_weight, "missing"), (_wrong_shape, "shape"), (_text_epoch, "value")])
def test_damaged_resume_state_is_set_aside_and_the_run_starts_afresh(
        finished_state, tiny_data, tmp_path, caplog, damage, reason):
    state = torch.utils._pytree.tree_map(  # a deep copy: the fixture's state stays sound
        lambda v: v.clone() if isinstance(v, torch.Tensor) else v, finished_state)
    damage(state)
    out = tmp_path / "out"
    out.mkdir()
    torch.save(state, out / "resume.pt")
    damaged_bytes = (out / "resume.pt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="dgkd_core"):
        metrics = train(run_config(epochs=1), tiny_data, out, progress=False)
    assert metrics["resumed"] is False and (out / "model.pt").is_file()
    aside = out / f"resume.pt.damaged-{reason}"
    assert aside.read_bytes() == damaged_bytes, sorted(p.name for p in out.iterdir())
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert str(out / "resume.pt") in warnings[0] and str(aside) in warnings[0]
    assert "starting from scratch" in warnings[0]


def test_a_sound_resume_state_still_resumes(finished_state, tiny_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torch.save(finished_state, out / "resume.pt")
    metrics = train(run_config(epochs=1), tiny_data, out, progress=False)
    assert metrics["resumed"] is True
    assert not any(p.name.startswith("resume.pt.damaged") for p in out.iterdir())


def _list_weight(state):
    state["model"][next(iter(state["model"]))] = [0.0]


def _extra_group(state):
    state["optimizer"]["param_groups"].append(dict(state["optimizer"]["param_groups"][0]))


@pytest.mark.parametrize("damage, reason", [(_list_weight, "value"), (_extra_group, "shape")])
def test_more_damage_is_found_without_training(finished_state, tiny_data, tmp_path, damage,
                                               reason):
    from dgkd_core.method.models import build_model
    from dgkd_core.training.resume import resume_state_damage

    state = torch.utils._pytree.tree_map(
        lambda v: v.clone() if isinstance(v, torch.Tensor) else v, finished_state)
    model = build_model("plane2", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert resume_state_damage(state, model, optimizer) is None
    damage(state)
    found = resume_state_damage(state, model, optimizer)
    assert found is not None and found[0] == reason, found
