"""The project's one loss module: Hinton KD, (stochastic) DGKD, and the guide-drop masks.

Shapes: logits are ``[B, C]`` (batch, classes) in any float dtype; targets are ``[B]`` int64 class
indices. Every loss is a 0-d float32 tensor in nats per example (averaged over the batch); it is
computed in float32 even when the logits come in as bf16/fp16 (e.g. under autocast).

Guides are given teacher first, then teacher assistants from largest to smallest.

Three conventions:

* ``"paper"`` (the default): ``total = n·(1−λ)·CE + λ·Σ_i keep_i·KD_i`` with ``n`` guides and
  ``KD = T²·KL(softmax(guide/T) ‖ softmax(student/T))``, KL summed over classes and averaged over the
  batch. With no guide it is plain CE.
* ``"released_code"``: what the released DGKD code computes, kept ON PURPOSE for comparing with its
  numbers: the KL is also divided by the class count (``nn.KLDivLoss()``'s default 'mean'
  reduction) and the CE weight is ``(1−λ)`` whatever ``n``; its guide dropping removes exactly
  ``drop_num`` terms, teacher included (:func:`draw_released_drop_mask`).

A training run draws its masks per epoch segment (:class:`SegmentKeepMasks`): the same draws as
one mask per step, in step order from the epoch's generator, but copied to the device once.
* ``"released_code_batchmean"``: the released code's loss without its 1/C: CE weight ``(1−λ)``,
  KD as in the paper. It exists for the convention ablation, to show what the 1/C does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CONVENTIONS",
    "SegmentKeepMasks",
    "check_loss_settings",
    "convention_weights",
    "dgkd_loss",
    "draw_keep_mask",
    "draw_released_drop_mask",
    "guide_term_names",
    "kd_loss",
    "stacked_dgkd_loss",
    "step_mask_drawer",
]

CONVENTIONS = ("paper", "released_code", "released_code_batchmean")


def _as_float(name: str, value) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"loss setting {name}={value!r} must be a number") from None


def check_loss_settings(lam, temperature, keep_prob=None, convention="paper", drop_num=0) -> None:
    """Validate loss settings (cheap python checks); raise ``ValueError`` naming the bad one.

    ``lam`` (λ, weight of the KD terms) in [0, 1]; ``temperature`` (T_kd) finite and > 0;
    ``keep_prob`` (per-guide keep probability of stochastic DGKD) None or in (0, 1];
    ``convention`` one of :data:`CONVENTIONS`; ``drop_num`` an integer >= 0.
    """
    lam_f = _as_float("lam", lam)
    if not 0.0 <= lam_f <= 1.0:
        raise ValueError(f"loss setting lam={lam!r} is out of range: λ must lie in [0, 1]")
    t = _as_float("temperature", temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(
            f"loss setting temperature={temperature!r} is out of range: T must be finite and > 0"
        )
    if keep_prob is not None:
        p = _as_float("keep_prob", keep_prob)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"loss setting keep_prob={keep_prob!r} is out of range: it must lie in (0, 1]")
    if convention not in CONVENTIONS:
        raise ValueError(
            f"loss setting convention={convention!r} is unknown: allowed are {', '.join(CONVENTIONS)}"
        )
    if isinstance(drop_num, bool) or not isinstance(drop_num, int) or drop_num < 0:
        raise ValueError(f"loss setting drop_num={drop_num!r} must be an integer >= 0")


def guide_term_names(n: int) -> list[str]:
    """Names of the KD terms for ``n`` guides: ``["kd_teacher", "kd_ta1", "kd_ta2", ...]``."""
    return ["kd_teacher", *(f"kd_ta{i}" for i in range(1, n))][:n]


def kd_loss(student_logits: Tensor, guide_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's KD term ``T²·KL(softmax(guide/T) ‖ softmax(student/T))``.

    ``student_logits`` and ``guide_logits`` are ``[B, C]``; the KL is summed over the C classes and
    averaged over the B examples (``reduction="batchmean"``). Returns a 0-d float32 tensor (nats per
    example, times T²). Computed in float32 whatever the input dtype. The guide is a target: no
    gradient flows into it. ``temperature`` is not checked here (:func:`check_loss_settings`).
    """
    if student_logits.dim() != 2 or student_logits.shape != guide_logits.shape:
        raise ValueError(
            f"kd_loss needs [B, C] logits of equal shape, got student {tuple(student_logits.shape)}"
            f" and guide {tuple(guide_logits.shape)}"
        )
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_guide = F.log_softmax(guide_logits.detach().float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_guide, reduction="batchmean", log_target=True)
    return kl * (t * t)


def dgkd_loss(
    student_logits: Tensor,
    guide_logits: Sequence[Tensor],
    targets: Tensor,
    *,
    lam: float,
    temperature: float,
    keep: Tensor | None = None,
    convention: str = "paper",
) -> tuple[Tensor, dict[str, Tensor]]:
    """DGKD loss of a student taught by ``n = len(guide_logits)`` guides (teacher first).

    ``student_logits`` ``[B, C]``; ``guide_logits`` n tensors ``[B, C]``; ``targets`` ``[B]`` int64.
    ``keep``: optional float 0/1 tensor ``[n]`` (on any device; typically from
    :func:`draw_keep_mask`), multiplying each guide's KD term. It enters as tensor arithmetic only
    (no branching on its values), so the loss can be captured in a CUDA graph.

    paper: ``total = n·(1−λ)·CE + λ·Σ keep_i·KD_i`` (n = 0: plain CE).
    released_code: ``total = (1−λ)·CE + λ·Σ keep_i·KD_i/C`` (n = 0: plain CE).
    released_code_batchmean: ``total = (1−λ)·CE + λ·Σ keep_i·KD_i`` (n = 0: plain CE).

    Returns ``(total, terms)``: ``terms`` maps ``"ce"``, :func:`guide_term_names` and ``"total"``
    to 0-d float32 tensors (CE and each KD term unweighted and un-masked, KD in the chosen
    convention); they are not detached. The settings are not checked on every step: the
    Distiller (dgkd_core.training.distiller) checks them once (:func:`check_loss_settings`).
    """
    n = len(guide_logits)
    lam = float(lam)
    ce = F.cross_entropy(student_logits.float(), targets)
    terms: dict[str, Tensor] = {"ce": ce}
    if n == 0:
        terms["total"] = ce
        return ce, terms

    kd = torch.stack([kd_loss(student_logits, g, temperature) for g in guide_logits])
    ce_weight, kd_divisor = convention_weights(n, lam, convention, student_logits.shape[1])
    if kd_divisor != 1:
        kd = kd / kd_divisor
    terms.update(zip(guide_term_names(n), kd.unbind(0)))

    if keep is None:
        kd_sum = kd.sum()
    else:
        if keep.shape != (n,):
            raise ValueError(f"keep must have shape [{n}] (one entry per guide), got {tuple(keep.shape)}")
        kd_sum = (keep.to(device=kd.device, dtype=kd.dtype) * kd).sum()
    total = ce_weight * ce + lam * kd_sum
    terms["total"] = total
    return total, terms


def convention_weights(n_guides: int, lam: float, convention: str, num_classes: int
                       ) -> tuple[float, int]:
    """(CE weight, KD divisor) of a student with `n_guides` guides under `convention`: paper
    n·(1−λ) and 1; released_code (1−λ) and C = `num_classes`; released_code_batchmean (1−λ)
    and 1. With no guide the loss is plain CE: (1.0, 1)."""
    if n_guides == 0:
        return 1.0, 1
    if convention.startswith("released_code"):
        return 1.0 - lam, num_classes if convention == "released_code" else 1
    return n_guides * (1.0 - lam), 1


def stacked_dgkd_loss(student_logits: Tensor, guide_logits: Tensor | None, targets: Tensor, *,
                      guide_weights: Tensor, kd_divisors: Tensor, ce_weights: Tensor,
                      temperatures: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`dgkd_loss` of K students at once (a horizontal group's stacked step): the same
    terms in float32, summed in another order, so each member's equal its own to float rounding.

    ``student_logits`` ``[K, B, C]``; ``guide_logits`` ``[K, G, B, C]`` (G the most guides of a
    member; the rows of a guide a member lacks are ignored: weight 0), or None where no member
    has a guide; ``targets`` ``[K, B]`` int64. Per member (float32 on the logits' device):
    ``guide_weights`` ``[K, G]``: λ·keep_i for each guide it has, 0 beyond; ``kd_divisors``
    ``[K]`` and ``ce_weights`` ``[K]``: :func:`convention_weights`; ``temperatures`` ``[K]``.

    Returns ``(totals [K], ce [K], kd [K, G])``: each member's total, CE, and KD terms (divided
    as its convention says, unweighted, un-masked; KD ``[K, 0]`` where guide_logits is None)."""
    k, b, c = student_logits.shape
    logits = student_logits.float()
    ce = F.cross_entropy(logits.reshape(k * b, c), targets.reshape(k * b),
                         reduction="none").view(k, b).mean(1)
    if guide_logits is None:
        return ce_weights * ce, ce, logits.new_zeros(k, 0)
    t = temperatures.view(k, 1, 1, 1)
    log_p_student = F.log_softmax(logits.unsqueeze(1) / t, dim=-1)  # [K, 1, B, C]
    log_p_guide = F.log_softmax(guide_logits.detach().float() / t, dim=-1)  # [K, G, B, C]
    kl = F.kl_div(log_p_student.expand_as(log_p_guide), log_p_guide, reduction="none",
                  log_target=True).sum(-1).mean(-1)  # [K, G]: summed over C, mean over B
    kd = kl * (temperatures * temperatures).view(k, 1) / kd_divisors.view(k, 1)
    return ce_weights * ce + (guide_weights * kd).sum(1), ce, kd


def draw_keep_mask(
    n_guides: int, keep_prob: float, *, drop_teacher: bool, generator: torch.Generator
) -> Tensor:
    """Stochastic DGKD's keep mask: float32 ``[n_guides]`` of 0/1 on CPU.

    Each guide is kept independently with probability ``keep_prob`` (in (0, 1]); when
    ``drop_teacher`` is False the teacher (index 0) is always kept. Uses only ``generator`` (a CPU
    generator) and always draws ``n_guides`` numbers, so the stream does not depend on outcomes.
    """
    keep = (torch.rand(n_guides, generator=generator) < float(keep_prob)).float()
    if not drop_teacher and n_guides > 0:
        keep[0] = 1.0
    return keep


def draw_released_drop_mask(n_guides: int, drop_num: int, *, generator: torch.Generator) -> Tensor:
    """The released code's dropping: float32 ``[n_guides]`` on CPU with exactly ``drop_num`` zeros,
    placed uniformly among all guides (teacher included). Uses only ``generator``."""
    if drop_num > n_guides:
        raise ValueError(f"loss setting drop_num={drop_num} exceeds the number of guides ({n_guides})")
    keep = torch.ones(n_guides)
    keep[torch.randperm(n_guides, generator=generator)[:drop_num]] = 0.0
    return keep


def step_mask_drawer(loss_cfg: dict, n_guides: int) -> Callable[[torch.Generator], Tensor] | None:
    """What draws one training step's mask, float32 ``[n_guides]`` on CPU, from a generator:
    :func:`draw_keep_mask` where ``loss_cfg["keep_prob"]`` is set (and there are guides),
    :func:`draw_released_drop_mask` where ``loss_cfg["drop_num"]`` > 0, else None (every guide
    counts, nothing is drawn). loss_cfg: a resolved run config's ``loss``."""
    if loss_cfg["keep_prob"] is not None and n_guides > 0:
        return lambda gen: draw_keep_mask(n_guides, loss_cfg["keep_prob"],
                                          drop_teacher=loss_cfg["drop_teacher"], generator=gen)
    if loss_cfg["drop_num"] > 0:  # exactly drop_num dropped, as the released code does
        return lambda gen: draw_released_drop_mask(n_guides, loss_cfg["drop_num"], generator=gen)
    return None


class SegmentKeepMasks:
    """The keep masks of one epoch segment, steps ``first_step`` to ``steps - 1``: drawn on the
    host in step order when made, held on ``device`` as one float32 tensor ``[steps - first_step,
    n_guides]``; :meth:`at` gives a step's row ``[n_guides]`` (None where ``draw`` is None).

    Drawing them at once, rather than one per step, changes neither the masks nor the
    generator's stream, and replaces a pageable host-to-device copy per step by one per
    segment. ``generator`` (at ``first_step``) is left untouched: the draws come from a copy,
    and :meth:`generator_state_at` re-creates the state after any step for the resume state.
    """

    def __init__(self, draw: Callable[[torch.Generator], Tensor] | None,
                 generator: torch.Generator, first_step: int, steps: int, device: torch.device):
        self.draw, self.first_step = draw, first_step
        self.start_state = generator.get_state()
        self.masks: Tensor | None = None
        if draw is not None:
            copy = _generator_at(self.start_state)
            rows = [draw(copy) for _ in range(first_step, steps)]
            # n_guides from a draw of a throw-away generator where the segment has no step left
            width = rows[0].shape[0] if rows else draw(torch.Generator()).shape[0]
            host = torch.stack(rows) if rows else torch.zeros(0, width)
            self.masks = host.to(device)

    def at(self, step: int) -> Tensor | None:
        """Step ``step``'s mask (0-based within the epoch), on the device; None: keep all."""
        return None if self.masks is None else self.masks[step - self.first_step]

    def generator_state_at(self, step: int) -> Tensor:
        """The generator's state once steps ``first_step`` to ``step - 1`` have drawn theirs:
        what one draw per step leaves, so a resumed run goes on with the same masks."""
        gen = _generator_at(self.start_state)
        if self.draw is not None:
            for _ in range(self.first_step, step):
                self.draw(gen)
        return gen.get_state()


def _generator_at(state: Tensor) -> torch.Generator:
    """A new CPU generator in ``state`` (a ``get_state()`` byte tensor)."""
    gen = torch.Generator()
    gen.set_state(state)
    return gen
