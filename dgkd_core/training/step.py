"""One training step, `step(x, y, keep, lr, views=None) -> loss terms`: eager, or captured in a
CUDA graph.

x [B,3,H,W] normalised images and y [B] int64 labels, on the device; keep [n guides] 0/1 or
None; lr: the learning rate already set in the optimizer (the graph step re-captures when it
changes); views: int64 [B] rows of the guide tables (`dgkd_core.data.augment.view_rows`) on the device, or
None where the guides run inline. The result is a float32 tensor [len(term_names)] of the loss
terms.

The CUDA-graph step captures the guides' forward, the student's forward/backward and the
optimizer step once and replays them per batch: at batch 128 these small CIFAR networks are
bound by kernel-launch overhead, so replaying one graph per step is what makes the GPU fast. The
maths is the eager step's: warm-up iterations needed before capture run on a snapshot that is
restored afterwards, and the learning rate, baked into the captured optimizer kernel, triggers
a re-capture when it changes.

Each graph step warms up and captures on a CUDA stream of its own, created with it and kept:
cuBLAS keeps a workspace per stream, and a graph replays with the workspace of the stream it was
captured on. On one shared capture stream the graphs of a fused group (dgkd_core.training.fused), replayed
concurrently on the members' streams, would race on one workspace, and one member's re-capture
at an lr change could reallocate the workspace the others' graphs still point to.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("dgkd_core.training.step")

WARMUP_STEPS = 3


def make_step(distiller, optimizer, autocast, use_graph: bool, device: torch.device,
              term_names: list[str]):
    """The step `train()` runs: the CUDA-graph step when `use_graph` (and on CUDA), else eager.

    autocast: a reusable context (`runtime.make_autocast`); term_names: `distiller.term_names`."""
    eager = EagerStep(distiller, optimizer, autocast, term_names)
    if use_graph:
        return CudaGraphStep.or_fallback(eager, distiller, optimizer, device)
    return eager


class EagerStep:
    """step(x, y, keep, lr, views=None) -> loss-term tensor [len(term_names)], run op by op."""

    def __init__(self, distiller, optimizer, autocast, term_names):
        self.distiller, self.optimizer, self.autocast = distiller, optimizer, autocast
        self.term_names = term_names

    def forward_backward(self, x, y, keep, views=None):
        """Forward and backward only (no optimizer step); the terms, detached, in float32."""
        with self.autocast:
            total, terms = self.distiller(x, y, keep, views)
        total.backward()
        return torch.stack([terms[k].detach().float() for k in self.term_names])

    def __call__(self, x, y, keep, lr, views=None):
        self.optimizer.zero_grad(set_to_none=True)
        if keep is not None:
            keep = keep.to(x.device, non_blocking=True)
        out = self.forward_backward(x, y, keep, views)
        self.optimizer.step()
        return out


class CudaGraphStep:
    """step(x, y, keep, lr, views=None) -> loss-term tensor, like the eager step, via a replayed
    graph."""

    def __init__(self, eager, distiller, optimizer, device):
        self.eager, self.distiller, self.optimizer, self.device = eager, distiller, optimizer, device
        # This step's warm-up and capture stream, for its whole life (module docstring: why).
        self.capture_stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr: float | None = None
        self.static: dict[str, torch.Tensor | None] = {}
        self.static_terms: torch.Tensor | None = None
        self.disabled_reason: str | None = None

    @classmethod
    def or_fallback(cls, eager, distiller, optimizer, device):
        """A graph step on CUDA; elsewhere `eager` itself (graphs are CUDA-only)."""
        if device.type != "cuda":
            log.info("CUDA graph step off: device is %s; using the eager step", device)
            return eager
        return cls(eager, distiller, optimizer, device)

    # -- snapshot of everything a warm-up step changes --------------------------------------
    def _snapshot(self):
        student = self.distiller.student
        tensors = [t.detach().clone() for t in student.state_dict().values()]
        opt_state = {
            id(p): {k: v.detach().clone() for k, v in st.items() if torch.is_tensor(v)}
            for p, st in self.optimizer.state.items()
        }
        return tensors, opt_state

    def _restore(self, snap):
        tensors, opt_state = snap
        with torch.no_grad():
            for t, saved in zip(self.distiller.student.state_dict().values(), tensors):
                t.copy_(saved)
            for p, st in self.optimizer.state.items():
                saved = opt_state.get(id(p))
                for k, v in st.items():
                    if not torch.is_tensor(v):
                        continue
                    if saved is not None and k in saved:
                        v.copy_(saved[k])
                    else:
                        # A momentum buffer born in warm-up: zero is exactly "no buffer yet"
                        # for SGD (0 * momentum + grad == grad).
                        v.zero_()
        self.optimizer.zero_grad(set_to_none=True)

    def _capture(self, x, y, keep, lr, views):
        self.static = {"x": x.clone(), "y": y.clone(),
                       "keep": None if keep is None else keep.to(self.device).clone(),
                       "views": None if views is None else views.clone()}
        s = self.static
        if self.graph is None:  # first capture: warm up lazily-initialised state, then undo it
            snap = self._snapshot()
            side = self.capture_stream
            side.wait_stream(torch.cuda.current_stream())
            try:
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_STEPS):
                        self.optimizer.zero_grad(set_to_none=True)
                        self.eager.forward_backward(s["x"], s["y"], s["keep"], s["views"])
                        self.optimizer.step()
                torch.cuda.current_stream().wait_stream(side)
            finally:
                self._restore(snap)
        self.graph = None
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.capture_stream):
            self.static_terms = self.eager.forward_backward(s["x"], s["y"], s["keep"], s["views"])
            self.optimizer.step()
        self.graph, self.graph_lr = graph, lr

    def __call__(self, x, y, keep, lr, views=None):
        if self.disabled_reason is not None:
            return self.eager(x, y, keep, lr, views)
        s = self.static
        if self.graph is not None and (s["x"].shape != x.shape or s["y"].shape != y.shape):
            return self.eager(x, y, keep, lr, views)  # a ragged last batch: not worth a graph
        if self.graph is None or lr != self.graph_lr:
            try:
                self._capture(x, y, keep, lr, views)
            except Exception as err:  # capture is impossible for this model/op set
                self.disabled_reason = f"{type(err).__name__}: {err}"
                self.graph = None
                log.warning("CUDA graph capture failed (%s); falling back to the eager step "
                            "for the rest of this run", self.disabled_reason)
                return self.eager(x, y, keep, lr, views)
            s = self.static  # _capture made new static buffers
        s["x"].copy_(x, non_blocking=True)
        s["y"].copy_(y, non_blocking=True)
        if keep is not None:
            s["keep"].copy_(keep, non_blocking=True)
        if views is not None:
            s["views"].copy_(views, non_blocking=True)
        self.graph.replay()
        return self.static_terms.clone()
