"""The CUDA-graph step's streams, checked on any machine: torch.cuda's stream and graph API is
replaced by fakes that record which stream each warm-up and capture ran on, while the step's
maths runs eagerly on the CPU. tests/gpu/test_cuda.py runs the real thing on a GPU."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from dgkd_core.method.models import build_model
from dgkd_core.runtime import make_autocast
from dgkd_core.training.distiller import Distiller
from dgkd_core.training.step import CudaGraphStep, EagerStep

LOSS = {"lam": 0.5, "temperature": 4.0, "convention": "paper"}


class FakeStream:
    """Stands in for torch.cuda.Stream: a name, and nothing to wait for."""

    made = 0

    def __init__(self, device=None):
        FakeStream.made += 1
        self.name = f"stream{FakeStream.made}"

    def wait_stream(self, other) -> None:
        pass


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: replaying does nothing (the captured terms stand)."""

    def replay(self) -> None:
        pass


def fake_cuda(monkeypatch) -> list[tuple[str, object]]:
    """Replace torch.cuda's streams and graphs; returns the log of (what, stream) it fills:
    ("warm-up", s) where work was queued on stream s, ("capture", s) for each capture."""
    calls: list[tuple[str, object]] = []
    default = FakeStream()

    @contextmanager
    def on_stream(stream):
        calls.append(("warm-up", stream))
        yield

    @contextmanager
    def capture(graph, pool=None, stream=None, **_):
        calls.append(("capture", stream))
        yield

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: default)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    return calls


def graph_step(seed: int) -> CudaGraphStep:
    torch.manual_seed(seed)
    distiller = Distiller(build_model("plane2", 10), [], LOSS)
    opt = torch.optim.SGD(distiller.student.parameters(), lr=0.1, momentum=0.9)
    eager = EagerStep(distiller, opt, make_autocast({"bf16": False}), distiller.term_names)
    step = CudaGraphStep.or_fallback(eager, distiller, opt, torch.device("cuda"))
    assert isinstance(step, CudaGraphStep)
    return step


def test_each_graph_step_warms_up_and_captures_on_its_own_stream(monkeypatch):
    """Two steps (two fused members), each captured, then re-captured at an lr change: every
    warm-up and capture of a step is on that step's one stream, and the two streams differ."""
    calls = fake_cuda(monkeypatch)
    steps = [graph_step(seed) for seed in (0, 1)]
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for lr in (0.1, 0.1, 0.01):  # capture, replay, re-capture
        for step in steps:
            for group in step.optimizer.param_groups:
                group["lr"] = lr
            calls.append(("step", step.capture_stream))
            step(x, y, None, lr)
            assert step.disabled_reason is None, step.disabled_reason
    first, second = (s.capture_stream for s in steps)
    assert first is not second
    on = {first: [], second: []}
    current = None
    for what, stream in calls:
        if what == "step":
            current = stream
        else:
            on[current].append((what, stream))
    # the first capture warms up first; the re-capture at lr 0.01 needs no warm-up
    assert on[first] == [("warm-up", first), ("capture", first), ("capture", first)]
    assert on[second] == [("warm-up", second), ("capture", second), ("capture", second)]


@pytest.mark.parametrize("bad", [{"lam": 1.5}, {"temperature": 0.0}, {"convention": "paperish"},
                                 {"keep_prob": 0.0}, {"drop_num": -1}])
def test_the_distiller_refuses_bad_loss_settings_when_built(bad):
    """The loss settings are checked once, when the Distiller is built, not on every step."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        Distiller(build_model("plane2", 10), [], LOSS | bad)
