"""What a horizontal group (dgkd_core.training.horizontal) steps: its members' student tensors,
momentum buffers and step bookkeeping stacked on a leading dimension [K, ...], and the stacked
SGD that updates them.

A stack lives as long as its members step together: `write_back` copies each member's slice
into its own modules, optimizer and bookkeeping (before any member is evaluated or saved), and
`reload` copies the members' state back in, in place, before the next step, so the stacked
tensors keep their addresses (a captured CUDA graph of the stacked step stays valid,
dgkd_core.training.horizontal_graph).
"""

from __future__ import annotations

from typing import Sequence

import torch

from dgkd_core.training.resume import note_step
from dgkd_core.training.stacked_loss import StackedLoss

__all__ = ["StackedState", "stacked_sgd_"]


def _student(member) -> torch.nn.Module:
    return member.distiller.student


class StackedState:
    """Members `indices`' student tensors stacked on a leading dim: params (leaves, [K, *shape],
    requiring grad as the member's do), buffers ([K, *shape]) and, where SGD has momentum, the
    momentum buffers ([K, *shape], zero where a member has none yet: for SGD without dampening
    a zero buffer is exactly "none yet", 0·momentum + grad == grad); the members' step
    bookkeeping (Trainer.record_step's device side): sums float64 [K, G+3] (a member's first
    n_terms columns its sums_dev, the rest padding), bad [K] (first non-finite step, or -1)
    and steps [K] (each one's next step)."""

    def __init__(self, members: Sequence, indices: tuple[int, ...], momentum: bool):
        self.indices = indices
        params = [dict(_student(members[i]).named_parameters()) for i in indices]
        buffers = [dict(_student(members[i]).named_buffers()) for i in indices]
        with torch.no_grad():  # stacked as the members hold them (their memory format too)
            self.params = {name: torch.stack([own[name] for own in params])
                           .requires_grad_(p.requires_grad) for name, p in params[0].items()}
            self.buffers = {name: torch.stack([own[name] for own in buffers])
                            for name in buffers[0]}
            self.momentum = None
            if momentum:
                self.momentum = {name: torch.stack([_momentum_of(members[i], name)
                                                    for i in indices])
                                 for name in self.params}
        self.loss = StackedLoss([members[i] for i in indices])
        states = [members[i].state for i in indices]
        self.n_terms = [len(s.sums_dev) for s in states]
        self.sums = states[0].sums_dev.new_zeros(len(indices), self.loss.width + 3)
        self.bad = states[0].bad_step.new_empty(len(indices))
        self.steps = torch.empty(len(indices), dtype=torch.long, device=self.bad.device)
        self._load_bookkeeping(members)

    def reload(self, members: Sequence) -> None:
        """Copy each member's current state into its slice, in place (the tensors keep their
        addresses); the stack is live again."""
        with torch.no_grad():
            for k, i in enumerate(self.indices):
                student = _student(members[i])
                for name, t in student.named_parameters():
                    self.params[name][k].copy_(t)
                for name, t in student.named_buffers():
                    self.buffers[name][k].copy_(t)
                if self.momentum is not None:
                    for name in self.params:
                        self.momentum[name][k].copy_(_momentum_of(members[i], name))
        self._load_bookkeeping(members)

    def _load_bookkeeping(self, members: Sequence) -> None:
        with torch.no_grad():
            for k, i in enumerate(self.indices):
                state = members[i].state
                self.sums[k].zero_()
                self.sums[k, :self.n_terms[k]].copy_(state.sums_dev)
                self.bad[k].copy_(state.bad_step)
                self.steps[k].fill_(state.step)
        # a member's optimizer gets momentum buffers back if it had them or has stepped since
        self.has_momentum = [all(_momentum_buffer(members[i], n) is not None
                                 for n in self.params) for i in self.indices]
        self.live = True

    def tensors(self) -> list[torch.Tensor]:
        """Every stacked tensor a step changes (params, buffers, momentum)."""
        return [*self.params.values(), *self.buffers.values(),
                *(self.momentum.values() if self.momentum is not None else ())]

    def record(self, terms: torch.Tensor, batch_size: int, finite: torch.Tensor) -> None:
        """Every stacked member's `Trainer.record_step` device side at once (`note_step`):
        terms [K, G+3] (StackedLoss's), finite bool [K]."""
        self.bad = note_step(self.bad, self.steps, self.sums, terms, batch_size, finite)
        self.steps.add_(1)

    def write_back(self, members: Sequence) -> None:
        """Copy each member's slice into its student, its step bookkeeping and its
        optimizer's momentum buffers; the stack is no longer live (`reload` before a step)."""
        with torch.no_grad():
            for k, i in enumerate(self.indices):
                student = _student(members[i])
                for name, t in (*student.named_parameters(), *student.named_buffers()):
                    t.copy_((self.params.get(name) if name in self.params
                             else self.buffers[name])[k])
                state = members[i].state
                state.sums_dev.copy_(self.sums[k, :self.n_terms[k]])
                state.bad_step.copy_(self.bad[k])
                if self.momentum is None or not self.has_momentum[k]:
                    continue
                for name, p in student.named_parameters():
                    members[i].optimizer.state[p]["momentum_buffer"] = \
                        self.momentum[name][k].clone()
        self.live = False


def _momentum_buffer(member, name: str) -> torch.Tensor | None:
    param = dict(_student(member).named_parameters())[name]
    return member.optimizer.state.get(param, {}).get("momentum_buffer")


def _momentum_of(member, name: str) -> torch.Tensor:
    buf = _momentum_buffer(member, name)
    if buf is None:
        return torch.zeros_like(dict(_student(member).named_parameters())[name])
    return buf


def stacked_sgd_(params: list[torch.Tensor], grads: list[torch.Tensor],
                 bufs: list[torch.Tensor] | None, lrs: Sequence[float], *, momentum: float,
                 weight_decay: float, nesterov: bool) -> None:
    """torch.optim.SGD's foreach step (dampening 0) on stacked tensors [K, *shape] in place;
    lrs: K learning rates, one per member (slice k of each tensor). Elementwise, so slice k
    gets exactly what member k's own SGD gives it; members sharing an lr update as one."""
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if bufs is not None:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    distinct = sorted(set(lrs))
    if len(distinct) == 1:
        torch._foreach_add_(params, grads, alpha=-distinct[0])
        return
    for lr in distinct:
        for k in (k for k, v in enumerate(lrs) if v == lr):
            torch._foreach_add_([p[k] for p in params], [g[k] for g in grads], alpha=-lr)
