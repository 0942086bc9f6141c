"""Horizontal fusion: K members of one architecture trained as one stacked model.

The fused trainer's `horizontal` mechanism (dgkd_core.training.fused). The K students' parameters and
BatchNorm buffers are stacked on a new leading dimension ([K, *shape]) and one forward runs
`torch.func.functional_call` of one template student under `torch.vmap` over that dimension:
vmap turns each convolution into one grouped convolution ([B, K·C, H, W], K groups), each
BatchNorm into one over the stacked channels (its running statistics updated in the stacked
buffers), and each linear layer into a batched matmul. So K trainings become one set of K-times
wider kernels. What stays each member's own, as in its solo run:

- its batch stream (its loader: its seed's order and augmentation; the members' batches are
  made as one where they share a prepared file, dgkd_core.data.stacked_batches, the same
  pixels bit for bit), guides or guide-table rows,
  keep masks, loss settings and lr schedule: the members' losses are one computation over the
  stacked logits, each with its own settings (dgkd_core.training.stacked_loss, float rounding
  apart the maths of each member's `Distiller.loss_terms`);
- its optimizer state: stacked SGD (`stacked_sgd_`) runs torch's foreach SGD arithmetic over
  the stacked tensors; it is elementwise, so each member's slice is what its own SGD computes;
- its `Trainer`: bookkeeping per step (`Trainer.record_step`'s arithmetic, stacked:
  `StackedState.record`), evaluation, resume state and
  outputs. The stacked state (dgkd_core.training.stacked_state) is copied back into the
  members' own modules and optimizers (`HorizontalGroup.write_back`) before any of them is
  evaluated or saved, and reloaded from them before the next step; so model.pt and resume.pt
  are written as solo runs write them.

On CUDA the stacked step is captured in a CUDA graph and replayed, as a solo run's step is
(dgkd_core.training.horizontal_graph; `fast.cuda_graph`).

Members must share the student architecture (layer for layer), the device, the fast settings and
the optimizer's momentum, weight decay and Nesterov flag (ConfigError otherwise: use
`sequential`). The lr may differ per member. Numerics: a grouped convolution sums in another
order than a convolution alone, so a member ends within float rounding (1e-5 after a few steps,
tests/unit/training/test_horizontal.py) of its solo weights, not bit-identical; a horizontal
group is deterministic on a CPU, and its resume is bit-identical to an uninterrupted group
(eager; with `compile`, not proven: see HorizontalGroup).
"""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch.func import functional_call, vmap

from dgkd_core.data.stacked_batches import assemble_together, can_assemble_together
from dgkd_core.errors import ConfigError
from dgkd_core.runtime import make_autocast
from dgkd_core.training.horizontal_graph import StackedGraphStep
from dgkd_core.training.stacked_state import StackedState, stacked_sgd_

__all__ = ["HorizontalGroup", "check_stackable", "stacked_sgd_"]


def _student(member) -> torch.nn.Module:
    return member.distiller.student


def _signature(member) -> tuple:
    """What two members must share to be stacked: the student's layers and tensor shapes."""
    student = _student(member)
    return (repr(student),
            tuple((n, tuple(t.shape), t.dtype) for n, t in student.state_dict().items()))


def _optimizer_settings(member) -> dict:
    group = member.optimizer.param_groups[0]
    return {k: group[k] for k in ("momentum", "weight_decay", "nesterov", "dampening",
                                  "maximize")}


def check_stackable(members: Sequence) -> None:
    """ConfigError (one line) unless the members (set-up Trainers) can be stacked."""
    first = members[0]
    for member in members[1:]:
        if _signature(member) != _signature(first):
            raise ConfigError(
                f"fused mechanism horizontal needs members of one architecture: "
                f"{first.out_dir} trains {first.cfg['model']}, {member.out_dir} trains "
                f"{member.cfg['model']} ({member.meta['name']}); use sequential")
        for what, mine, theirs in (("device", member.device, first.device),
                                   ("fast settings", member.fast, first.fast),
                                   ("optimizer settings", _optimizer_settings(member),
                                    _optimizer_settings(first))):
            if mine != theirs:
                raise ConfigError(f"fused mechanism horizontal needs members with one {what}: "
                                  f"{first.out_dir} has {theirs}, {member.out_dir} {mine}; use "
                                  "sequential")
    settings = _optimizer_settings(first)
    bad = [m.out_dir for m in members if m.dist.active]
    if bad or settings["dampening"] != 0 or settings["maximize"]:
        raise ConfigError("fused mechanism horizontal supports single-process members with "
                          "SGD without dampening or maximize; use sequential")


class _GlobalMean(torch.nn.Module):
    """AdaptiveAvgPool2d(1) as a mean: [B,C,H,W] -> [B,C,1,1]. vmap has no batching rule for
    what adaptive_avg_pool2d runs (it falls back to a loop over the K members)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def _vmap_friendly(template: torch.nn.Module) -> torch.nn.Module:
    """`template` with each global average pool a `_GlobalMean` (no parameters: the names of
    the state stay as they are)."""
    for name, module in list(template.named_modules()):
        size = getattr(module, "output_size", None)
        if isinstance(module, torch.nn.AdaptiveAvgPool2d) and size in (1, (1, 1)):
            parent, _, leaf = name.rpartition(".")
            setattr(template.get_submodule(parent) if parent else template, leaf, _GlobalMean())
    return template


class HorizontalGroup:
    """The stacked step and round of a fused group's set-up members (Trainers), all stackable
    (`check_stackable`). The stacked state covers the members stepping now; it is written
    back before any member ends an epoch or saves, reloaded in place before the next step,
    and made anew when that set of members changes.

    cuda_graph: on CUDA with the members' `fast.cuda_graph`, the stacked step is captured in
    a CUDA graph and replayed (dgkd_core.training.horizontal_graph; eager if capture fails);
    graph_factory: a CPU stand-in for the graph (tests), which turns it on anywhere. record:
    the group's metrics record (a capture failure's reason goes there).
    compile: run the stacked forward (and so its backward) through `torch.compile` (inductor
    fuses BatchNorm, ReLU and the adds into fewer kernels; no CUDA graph then). Opt-in: its
    first steps compile (about 90 s for resnet8 on a 2-core CPU), and whether it keeps the
    bit-identical resume of a horizontal group is not proven yet (a recompile after a resume,
    when the stack's size or the batch's shape changes, may pick other kernels)."""

    def __init__(self, members: Sequence, compile: bool = False, cuda_graph: bool = True,
                 graph_factory=None, record: dict | None = None):
        check_stackable(members)
        self.members = list(members)
        # its tensors go unused: functional_call runs it on the stacked ones
        self.template = _vmap_friendly(copy.deepcopy(_student(members[0])).train())
        self.autocast = make_autocast(members[0].fast)
        self.sgd = _optimizer_settings(members[0])
        self.stacked: StackedState | None = None
        # the members' batches made as one where their loaders allow (one prepared file)
        self.together = can_assemble_together([m.train_loader for m in self.members])
        self._forward = vmap(self._one_forward)
        if compile:
            self._forward = torch.compile(self._forward)
        device = members[0].device
        self.graph_step = None
        if graph_factory is not None or (cuda_graph and not compile and device.type == "cuda"
                                         and members[0].fast["cuda_graph"]):
            self.graph_step = StackedGraphStep(self._compute, device, graph_factory, record)

    def _one_forward(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        """One member's forward (under vmap): x [B,3,H,W] -> logits [B, classes]."""
        return functional_call(self.template, (params, buffers), (x,))

    def write_back(self) -> None:
        """Every stacked member's state into its own modules and optimizer."""
        if self.stacked is not None and self.stacked.live:
            self.stacked.write_back(self.members)

    def _stack(self, indices: tuple[int, ...]) -> StackedState:
        if self.stacked is not None and self.stacked.indices == indices:
            if not self.stacked.live:
                self.stacked.reload(self.members)
            return self.stacked
        self.write_back()
        self.stacked = StackedState(self.members, indices, self.sgd["momentum"] != 0)
        return self.stacked

    def step(self, batches: dict[int, Sequence[torch.Tensor]], lrs: dict[int, float]
             ) -> dict[int, float]:
        """One optimizer step of each member in `batches` (index -> its loader's batch: x
        [B,3,H,W], y [B] and, with guide tables, views [B]), at lrs[index]; members whose
        images share a shape (all, unless resumed at different steps of a ragged epoch) step
        as one stack. Each member's step is recorded, its bookkeeping stacked
        (`StackedState.record`, `Trainer.count_step`); returns index -> that member's segment
        seconds so far."""
        by_shape: dict[tuple, list[int]] = {}
        for i, batch in batches.items():  # views or none: the loss is the member's own
            by_shape.setdefault(tuple(batch[0].shape), []).append(i)
        elapsed = {}
        for indices in by_shape.values():
            state = self._stack(tuple(indices))
            terms, finite = self._step_stacked(state, batches, lrs)
            batch_size = batches[indices[0]][1].shape[0]  # one shape: one batch size
            state.record(terms, batch_size, finite)
            for k, i in enumerate(indices):
                elapsed[i] = self.members[i].count_step(terms[k, :state.n_terms[k]],
                                                        batch_size, finite[k])
        return elapsed

    def _step_stacked(self, state: StackedState, batches: dict, lrs: dict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the stacked members, replayed from a CUDA graph where there is one:
        their terms [K, G+3] (StackedLoss's), and whether each one's total loss is finite
        (bool [K])."""
        stacked = [batches[i] for i in state.indices]
        keeps = [self.members[i].state.keep_masks.at(self.members[i].state.step)
                 for i in state.indices]
        member_lrs = [lrs[i] for i in state.indices]
        step = self.graph_step if self.graph_step is not None else self._compute
        out = step(state, stacked, keeps, member_lrs)
        state.has_momentum = [True] * len(state.indices)
        return out

    def _compute(self, state: StackedState, batches: Sequence, keeps: list, lrs: list[float],
                 x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and SGD of the stacked members (each one's batch: x [B,3,H,W],
        y [B], rows [B]; keeps: each one's keep mask or None) on their images x [K,B,3,H,W]
        (None: stacked here); no host sync and no host-to-device copy, so a CUDA graph can
        capture it."""
        if x is None:
            x = torch.stack([batch[0] for batch in batches])
        for p in state.params.values():
            p.grad = None
        with self.autocast:
            logits = self._forward(state.params, state.buffers, x)  # [K, B, classes]
            totals, terms = state.loss(logits, batches, keeps)
            totals.sum().backward()
        self._sgd(state, lrs)
        return terms, torch.isfinite(totals.detach())

    def _sgd(self, state: StackedState, lrs: list[float]) -> None:
        names = [n for n, p in state.params.items() if p.grad is not None]
        with torch.no_grad():
            stacked_sgd_([state.params[n] for n in names], [state.params[n].grad for n in names],
                         None if state.momentum is None else [state.momentum[n] for n in names],
                         lrs, momentum=self.sgd["momentum"],
                         weight_decay=self.sgd["weight_decay"], nesterov=self.sgd["nesterov"])

    def epoch_batches(self, index: int) -> Iterator:
        """What `step_once` takes as member `index`'s batches for the rest of its epoch: its
        train loader's batch plans where the members' batches are made as one, else its
        batches."""
        loader = self.members[index].train_loader
        return loader.batch_plans() if self.together else iter(loader)

    def step_once(self, stepping: list[int], batches: dict, lrs: dict[int, float]
                  ) -> tuple[list[tuple[int, float]], list[int]]:
        """`FusedTrainer.step_once` for this group: the members in `stepping` step as one
        stack on their next batches (batches[i]: `epoch_batches(i)`). Returns (index, segment
        seconds so far) of each that stepped, and the members whose loaders ran out: they
        leave `stepping`, written back, for the caller to end their epochs."""
        got, ended = {}, []
        for i in stepping:
            batch = next(batches[i], None)
            if batch is None:
                ended.append(i)
            else:
                got[i] = batch
        if got and self.together:
            loaders = [self.members[i].train_loader for i in got]
            got = dict(zip(got, assemble_together(loaders, list(got.values()))))
        elapsed = self.step(got, lrs) if got else {}
        for i in ended:
            stepping.remove(i)
        if ended:
            self.write_back()
        return list(elapsed.items()), ended
