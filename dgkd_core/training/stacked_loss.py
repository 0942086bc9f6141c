"""The loss of a horizontal group's stacked step (dgkd_core.training.horizontal): every member's
DGKD loss, top-1 and step terms as one computation over the stacked logits [K, B, C], not K.

Each member keeps its own loss settings (λ, T, convention), guides or guide-table rows and keep
masks; what is shared is the kernels: one cross-entropy, one KL over [K, G, B, C] (G the most
guides of a member), one backward. Per step and member there remain only the guides' logits
(a table lookup, or a guide's forward) and the keep mask's copy (stochastic members), against
some twenty loss kernels each before (bench --fused's `ops_per_round`, docs/performance.md).
The maths is dgkd_core.method.losses.stacked_dgkd_loss; each member's terms equal its own
Distiller's to float rounding (tests/unit/method/test_stacked_loss.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from dgkd_core.method.losses import convention_weights, stacked_dgkd_loss

__all__ = ["StackedLoss"]


class StackedLoss:
    """The stacked loss of `members` (set-up Trainers, in stack order): their settings as
    device tensors, made once per stack and class count."""

    def __init__(self, members: Sequence):
        self.members = list(members)
        self.n_guides = [len(m.distiller.sources) for m in self.members]
        self.width = max(self.n_guides)  # G
        self._settings: dict[int, dict] = {}  # class count -> the per-member tensors

    def _tensors(self, num_classes: int, device: torch.device) -> dict:
        """ce_weights [K], kd_divisors [K], temperatures [K], lams [K, G] (λ for each guide a
        member has, 0 beyond) and term_order [K, G+3]: per member, the columns of the stacked
        terms [ce, kd_0..kd_G-1, total, top1] in its own order [ce, its kds, total, top1],
        padded (one gather puts every member's terms first in its row)."""
        if num_classes not in self._settings:
            rows = [_member_settings(m.distiller.loss_cfg, n, self.width, num_classes)
                    for m, n in zip(self.members, self.n_guides)]
            f32 = dict(device=device, dtype=torch.float32)
            self._settings[num_classes] = {
                "ce_weights": torch.tensor([r[0] for r in rows], **f32),
                "kd_divisors": torch.tensor([float(r[1]) for r in rows], **f32),
                "temperatures": torch.tensor([r[2] for r in rows], **f32),
                "lams": torch.tensor([r[3] for r in rows], **f32).view(len(rows), self.width),
                "term_order": torch.tensor(
                    [[0, *range(1, n + 1), self.width + 1, self.width + 2,
                      *[0] * (self.width - n)] for n in self.n_guides], device=device)}
        return self._settings[num_classes]

    def __call__(self, logits: torch.Tensor, batches: Sequence[Sequence[torch.Tensor]],
                 keeps: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [K, B, C] of the stacked students; batches: each member's (x [B,3,H,W], y [B]
        and, with guide tables, views [B]); keeps: each member's keep mask this step (float
        [its guides], `SegmentKeepMasks.at`) or None. Returns (the members' totals [K], to be summed for
        the backward; their step terms [K, G+3], detached float32: row k's first
        len(term_names) columns are member k's terms, in its order, the rest padding)."""
        k, _, num_classes = logits.shape
        settings = self._tensors(num_classes, logits.device)
        targets = torch.stack([batch[1] for batch in batches])  # [K, B]
        guides = self._guide_logits(batches, logits)
        totals, ce, kd = stacked_dgkd_loss(
            logits, guides, targets, guide_weights=self._guide_weights(settings, keeps),
            kd_divisors=settings["kd_divisors"], ce_weights=settings["ce_weights"],
            temperatures=settings["temperatures"])
        with torch.no_grad():  # train top-1 from the step's own logits, as Distiller.loss_terms
            top1 = logits.argmax(dim=-1).eq(targets).float().mean(-1) * 100.0
            terms = torch.cat([ce[:, None], kd, totals[:, None], top1[:, None]], 1)
            ordered = terms.gather(1, settings["term_order"])  # [K, G+3]
        return totals, ordered

    def _guide_logits(self, batches, logits: torch.Tensor) -> torch.Tensor | None:
        """[K, G, B, C]: each member's guides' logits (Distiller.guide_logits), zeros where a
        member has fewer than G guides; None where no member has one."""
        if self.width == 0:
            return None
        found = [m.distiller.guide_logits(batch[0], batch[2] if len(batch) > 2 else None)
                 for m, batch in zip(self.members, batches)]
        dtype = next(g for own in found for g in own).dtype
        blank = logits.new_zeros(logits.shape[1:], dtype=dtype)
        flat = [t for own in found for t in (*(g.to(dtype) for g in own),
                                             *[blank] * (self.width - len(own)))]
        return torch.stack(flat).view(len(found), self.width, *logits.shape[1:])

    def _guide_weights(self, settings: dict, masks: Sequence[torch.Tensor | None]
                       ) -> torch.Tensor:
        """[K, G]: λ·keep, the keep masks being this step's of each stochastic member."""
        if all(mask is None for mask in masks):
            return settings["lams"]
        keep = torch.ones_like(settings["lams"])
        for i, mask in enumerate(masks):
            if mask is not None:
                keep[i, :mask.shape[0]] = mask
        return settings["lams"] * keep


def _member_settings(loss_cfg: dict, n_guides: int, width: int, num_classes: int
                     ) -> tuple[float, int, float, list[float]]:
    """(CE weight, KD divisor, T, λ per guide slot) of one member."""
    lam = float(loss_cfg["lam"])
    ce_weight, divisor = convention_weights(n_guides, lam, loss_cfg["convention"], num_classes)
    lams = [lam if g < n_guides else 0.0 for g in range(width)]
    return ce_weight, divisor, float(loss_cfg["temperature"]), lams
