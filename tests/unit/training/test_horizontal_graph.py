"""The horizontal group's stacked step replayed from a graph (dgkd_core.training.horizontal_graph).

On a CPU a stand-in replays the captured step by running it again on the fixed buffers: a
group stepped that way must end bit-identical to the eager group, which it can only do if
every input is copied into those buffers before each replay, the graph is captured again when
an lr changes, a capture changes nothing, and the stacked tensors keep their addresses across
epochs (asserted by the stand-in). On CUDA (the GPU window's stage 1) the real graph is held
to the eager group."""

from __future__ import annotations

import functools

import pytest
import torch

import dgkd_core.training.fused as fused_mod
from dgkd_core.training.fused import train_fused
from dgkd_core.training.horizontal import HorizontalGroup
from helpers import history_without_timing
from horizontal_members import (max_difference, members, second_guide,  # noqa: F401
                                small_data, teacher, teacher_table)


class ReplayedStep:
    """A CPU stand-in for a CUDA graph: capture runs the step once and undoes it (a real
    capture runs nothing) and keeps its outputs; replay runs it again into those outputs."""

    made: list["ReplayedStep"] = []

    def __init__(self, stream, state):
        self.state, self.replays = state, 0
        ReplayedStep.made.append(self)

    def capture(self, fn):
        saved = [t.detach().clone() for t in self.state.tensors()]
        self.fn, self.outputs = fn, fn()
        with torch.no_grad():
            for t, s in zip(self.state.tensors(), saved):
                t.copy_(s)
        self.addresses = [t.data_ptr() for t in self.state.tensors()]
        return self.outputs

    def replay(self):
        assert [t.data_ptr() for t in self.state.tensors()] == self.addresses, \
            "a stacked tensor moved: a captured graph would read the old one"
        new = self.fn()
        with torch.no_grad():
            for out, value in zip(self.outputs, new):
                out.copy_(value)
        self.replays += 1


class FailingCapture(ReplayedStep):
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def specs_at(root, data, teacher, second_guide, table):
    """The group of test_horizontal (other seeds and guides, a stochastic member, a table
    member), 3 epochs of 2 steps at batch 48: the lr milestone falls before epoch 3."""
    specs = [{**s, "data": data} for s in members(root, teacher, second_guide, table)]
    for spec in specs:
        spec["config"] = {**spec["config"], "epochs": 3, "batch_size": 48}
    return specs


def trained(root, args, monkeypatch, graph_factory=None):
    """specs_at's group trained horizontal (its step replayed by `graph_factory`, if given):
    (specs, metrics)."""
    monkeypatch.setattr(fused_mod, "HorizontalGroup",
                        functools.partial(HorizontalGroup, graph_factory=graph_factory))
    specs = specs_at(root, *args)
    return specs, train_fused(specs, progress=False, mechanism="horizontal")


def test_a_replayed_stacked_step_ends_bit_identical_to_the_eager_group(
        small_data, teacher, second_guide, teacher_table, tmp_path, monkeypatch):
    args = (small_data, teacher, second_guide, teacher_table)
    eager, _ = trained(tmp_path / "eager", args, monkeypatch)
    ReplayedStep.made.clear()
    replayed, metrics = trained(tmp_path / "replayed", args, monkeypatch, ReplayedStep)
    for a, b in zip(eager, replayed):
        assert max_difference(a["out_dir"], b["out_dir"]) == 0.0, b["out_dir"].name
        assert history_without_timing(a["out_dir"]) == history_without_timing(b["out_dir"])
    # one capture at the first lrs, replayed in epochs 1 and 2 (the stack reloaded in place
    # between them), one more when the milestone changed two members' lr for epoch 3
    assert [g.replays for g in ReplayedStep.made] == [4, 2]
    assert "cuda_graph_fallback" not in metrics[0]["fused_group"]
    assert max_difference(replayed[0]["out_dir"], replayed[1]["out_dir"]) > 1e-2


def test_a_failed_capture_leaves_the_group_eager_and_says_why(
        small_data, teacher, second_guide, teacher_table, tmp_path, monkeypatch):
    args = (small_data, teacher, second_guide, teacher_table)
    eager, _ = trained(tmp_path / "eager", args, monkeypatch)
    fell_back, metrics = trained(tmp_path / "fell_back", args, monkeypatch, FailingCapture)
    for a, b in zip(eager, fell_back):
        assert max_difference(a["out_dir"], b["out_dir"]) == 0.0, b["out_dir"].name
    assert metrics[0]["fused_group"]["cuda_graph_fallback"] == (
        "RuntimeError: operation not permitted when stream is capturing")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_horizontal_group_ends_near_the_eager_group(
        small_data, teacher, second_guide, teacher_table, tmp_path):
    """The real CUDA graph (fp32) against the eager stacked step: the same kernels, so equal
    but for rounding (1e-4 after 6 steps; a stale input or lr differs by 3e-3 or more, the CPU
    test's mutations); it was captured (no fallback)."""
    from dgkd_core.runtime import FAST_OFF

    groups = {}
    for name, fast in (("eager", FAST_OFF), ("graph", {**FAST_OFF, "cuda_graph": True})):
        specs = specs_at(tmp_path / name, small_data, teacher, second_guide, teacher_table)
        for spec in specs:
            spec["config"] = {**spec["config"], "device": "cuda", "fast": fast}
        groups[name] = (specs, train_fused(specs, progress=False, mechanism="horizontal"))
    for a, b in zip(groups["eager"][0], groups["graph"][0]):
        assert max_difference(a["out_dir"], b["out_dir"]) < 1e-4, b["out_dir"].name
    assert "cuda_graph_fallback" not in groups["graph"][1][0]["fused_group"]
