"""The Distiller: a student and its frozen guides, and the loss terms of one batch.

As in mdistiller's Distiller, it owns the guides, keeps them in eval(), and returns named loss
terms; the trainer (dgkd_core.training.trainer) only steps it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from dgkd_core.errors import TrainingError
from dgkd_core.guides.logit_tables import GuideTable
from dgkd_core.method.losses import check_loss_settings, dgkd_loss, guide_term_names

__all__ = ["Distiller"]


class Distiller(nn.Module):
    """A student plus its frozen guides (teacher first, then TAs largest to smallest).

    A guide is a module run on each batch, or a GuideTable (dgkd_core.guides.logit_tables) whose rows
    for the batch's views stand in for its forward pass. The guide modules never train: their
    parameters do not require grad, they stay in eval() whatever `train()` is called with, and
    they run under inference mode. loss_cfg: a run config's `loss`, checked here once
    (check_loss_settings raises ValueError naming a bad setting), not on every step.
    """

    def __init__(self, student: nn.Module, guides: Sequence[nn.Module | GuideTable],
                 loss_cfg: dict):
        super().__init__()
        check_loss_settings(loss_cfg["lam"], loss_cfg["temperature"], loss_cfg.get("keep_prob"),
                            loss_cfg["convention"], loss_cfg.get("drop_num", 0))
        self.student = student
        modules, self.tables = [], []
        # Where each guide's logits come from, in guide order: ("module" | "table", index).
        self.sources: list[tuple[str, int]] = []
        for guide in guides:
            kind, found = ("table", self.tables) if isinstance(guide, GuideTable) else (
                "module", modules)
            self.sources.append((kind, len(found)))
            found.append(guide)
        self.guides = nn.ModuleList(modules)
        for guide in self.guides:
            guide.requires_grad_(False)
        self.loss_cfg = loss_cfg
        self.train()

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.guides.eval()
        return self

    @property
    def loss_term_names(self) -> list[str]:
        return ["ce", *guide_term_names(len(self.sources)), "total"]

    @property
    def term_names(self) -> list[str]:
        """The step's terms: the loss terms, then `top1` (the batch's top-1, percent)."""
        return [*self.loss_term_names, "top1"]

    def guide_logits(self, images: torch.Tensor, views: torch.Tensor | None
                     ) -> list[torch.Tensor]:
        """Each guide's logits [B, C] for images [B,3,H,W] (views: their table rows [B])."""
        with torch.inference_mode():
            ran = [guide(images) for guide in self.guides]
        if self.tables and views is None:
            raise TrainingError("guide tables need the batch's views: make the train loader "
                                "with with_views=True")
        # Inference tensors cannot be saved for backward: clone them out of inference mode.
        return [ran[i].clone() if kind == "module" else self.tables[i].lookup(views)
                for kind, i in self.sources]

    def forward(self, images: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None,
                views: torch.Tensor | None = None):
        """images [B,3,H,W] normalised; targets [B] int64; keep [n] 0/1 or None; views [B] int64
        rows of the guide tables, or None where the guides run inline.

        Returns (total loss, terms dict of scalar tensors named by `term_names`)."""
        return self.loss_terms(self.student(images), images, targets, keep, views)

    def loss_terms(self, student_logits: torch.Tensor, images: torch.Tensor,
                   targets: torch.Tensor, keep: torch.Tensor | None,
                   views: torch.Tensor | None = None):
        """`forward` from the student's logits [B, C] on: the guides' logits, the loss and the
        top-1 (a horizontal group, dgkd_core.training.horizontal, runs the students stacked)."""
        total, terms = dgkd_loss(
            student_logits, self.guide_logits(images, views), targets,
            lam=self.loss_cfg["lam"], temperature=self.loss_cfg["temperature"],
            keep=keep, convention=self.loss_cfg["convention"],
        )
        # Train top-1 from this step's own logits: no second forward pass, no grad, no sync
        # (so the CUDA graph captures it too), and nothing the loss or the weights depend on.
        with torch.no_grad():
            hits = student_logits.argmax(dim=1).eq(targets)
            terms["top1"] = hits.float().mean() * 100.0
        return total, terms
