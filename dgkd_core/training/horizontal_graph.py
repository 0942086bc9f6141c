"""A horizontal group's stacked step (forward, loss, backward and SGD of all its members)
captured once in a CUDA graph and replayed per round, as a solo run's step is
(dgkd_core.training.step: why graphs, and why each step object keeps a capture stream of its
own). A stacked round eager is some 450 kernels launched from Python through vmap; replayed,
it is one launch.

What the graph reads is copied into fixed buffers before each replay (`_StaticInputs`: the
members' images [K,B,3,H,W], labels [K,B], guide-table rows and keep masks); the stacked
tensors it updates keep their addresses as long as the stack lives (StackedState.reload
copies in place). It is captured again when the stack or a member's lr changes (the lr is
baked into the captured SGD), after one warm-up step (three the first time) run on a
snapshot that is restored, so a capture changes nothing. A batch of another shape (an
epoch's ragged last batch) runs eager. If capture fails, the group runs eager from then on
and says why (metrics.json's `fused_group.cuda_graph_fallback`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Sequence

import torch

from dgkd_core.training.step import WARMUP_STEPS

__all__ = ["StackedGraphStep"]

log = logging.getLogger("dgkd_core.training.horizontal_graph")


class _CudaGraph:
    """torch.cuda.CUDAGraph behind the two calls StackedGraphStep makes: capture(fn) records
    fn's kernels (running none) and returns its outputs; replay() runs them again, writing
    those outputs. (The tests stand a CPU replay in for it.)"""

    def __init__(self, stream: torch.cuda.Stream, state=None):
        self.graph, self.stream = torch.cuda.CUDAGraph(), stream

    def capture(self, fn: Callable[[], tuple]) -> tuple:
        with torch.cuda.graph(self.graph, stream=self.stream):
            return fn()

    def replay(self) -> None:
        self.graph.replay()


def _input_key(batches: Sequence[Sequence[torch.Tensor]], keeps: Sequence) -> tuple:
    """What a captured graph was made for, besides the stack and the lrs: the batches' shapes,
    which members have guide-table rows and the keep masks' shapes."""
    return (tuple(tuple(t.shape) for b in batches for t in b),
            tuple(None if k is None else tuple(k.shape) for k in keeps))


class _StaticInputs:
    """One round's inputs at fixed addresses: x [K,B,3,H,W], y [K,B], rows [Kv,B] of the
    members with guide-table rows, and each stochastic member's keep mask."""

    def __init__(self, batches: Sequence[Sequence[torch.Tensor]],
                 keeps: Sequence[torch.Tensor | None]):
        self.key = _input_key(batches, keeps)
        self.x = torch.stack([b[0] for b in batches])
        self.y = torch.stack([b[1] for b in batches])
        self.has_rows = [len(b) > 2 for b in batches]
        rows = [b[2] for b in batches if len(b) > 2]
        self.rows = torch.stack(rows) if rows else None
        self.keeps = [None if keep is None else keep.clone() for keep in keeps]

    def fill(self, batches: Sequence[Sequence[torch.Tensor]],
             keeps: Sequence[torch.Tensor | None]) -> None:
        self.x.copy_(torch.stack([b[0] for b in batches]))
        self.y.copy_(torch.stack([b[1] for b in batches]))
        if self.rows is not None:
            self.rows.copy_(torch.stack([b[2] for b in batches if len(b) > 2]))
        for static, keep in zip(self.keeps, keeps):
            if static is not None:
                static.copy_(keep)

    def batches(self) -> list[tuple[torch.Tensor, ...]]:
        """Each member's batch as views of the fixed buffers."""
        found, j = [], 0
        for k, has_rows in enumerate(self.has_rows):
            found.append((self.x[k], self.y[k], self.rows[j]) if has_rows
                         else (self.x[k], self.y[k]))
            j += has_rows
        return found


class StackedGraphStep:
    """step(state, batches, keeps, lrs) -> (terms [K, G+3], finite bool [K]): `compute`
    (HorizontalGroup's eager stacked step: compute(state, batches, keeps, lrs, x=None))
    replayed from a CUDA graph. graph_factory(stream, state): what captures and replays
    (default a CUDA graph; a test passes a CPU stand-in); record: the group's metrics record, where a
    capture failure's reason goes."""

    def __init__(self, compute: Callable, device: torch.device, graph_factory=None,
                 record: dict | None = None):
        self.compute, self.record = compute, record if record is not None else {}
        self.graph_factory = graph_factory or _CudaGraph
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.graph = None
        self.key: tuple | None = None
        self.static: _StaticInputs | None = None
        self.outputs: tuple | None = None
        self.captures = 0
        self.disabled_reason: str | None = None

    def __call__(self, state, batches, keeps, lrs: list[float]) -> tuple:
        if self.disabled_reason is None:
            same_stack = self.key is not None and self.key[:2] == (state, tuple(lrs))
            if same_stack and self.key[2] != _input_key(batches, keeps):
                return self.compute(state, batches, keeps, lrs)  # e.g. a ragged last batch
            if not same_stack:
                try:
                    self._capture(state, batches, keeps, lrs)
                except Exception as err:  # capture is impossible for this model/op set
                    return self._give_up(err, state, batches, keeps, lrs)
            self.static.fill(batches, keeps)
            self.graph.replay()
            terms, finite = self.outputs
            return terms.clone(), finite
        return self.compute(state, batches, keeps, lrs)


    def _capture(self, state, batches, keeps, lrs) -> None:
        """A new graph of `state`'s step at `lrs` on fixed buffers made from this round's."""
        self.graph, self.outputs, self.key = None, None, None
        static = self.static = _StaticInputs(batches, keeps)
        for p in state.params.values():
            p.grad = None

        def step() -> tuple:
            return self.compute(state, static.batches(), static.keeps, lrs, x=static.x)

        # Warm up (lazily initialised kernels, the loss's cached settings) on a snapshot.
        snapshot = [t.detach().clone() for t in state.tensors()]
        side = self.stream
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for _ in range(WARMUP_STEPS if self.captures == 0 else 1):
                    step()
            if side is not None:
                torch.cuda.current_stream().wait_stream(side)
        finally:
            with torch.no_grad():
                for t, saved in zip(state.tensors(), snapshot):
                    t.copy_(saved)
            for p in state.params.values():
                p.grad = None
        graph = self.graph_factory(side, state)
        self.outputs = graph.capture(step)
        self.graph, self.key = graph, (state, tuple(lrs), static.key)
        self.captures += 1

    def _give_up(self, err: Exception, state, batches, keeps, lrs) -> tuple:
        self.disabled_reason = f"{type(err).__name__}: {err}"
        self.graph = self.static = self.outputs = self.key = None
        self.record["cuda_graph_fallback"] = self.disabled_reason
        log.warning("CUDA graph capture of the stacked step failed (%s); the group steps "
                    "eager from now on", self.disabled_reason)
        return self.compute(state, batches, keeps, lrs)
