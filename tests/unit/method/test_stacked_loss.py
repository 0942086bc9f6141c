"""`stacked_dgkd_loss` (a horizontal group's loss, dgkd_core.method.losses) against `dgkd_loss`
member by member: the same terms, totals and logit gradients to float32 rounding, for every
convention, 0 to 3 guides, keep masks, and λ and T that differ between members. `dgkd_loss`
itself is checked against independently worked values in test_losses.py."""

from __future__ import annotations

import pytest
import torch

from dgkd_core.method.losses import (CONVENTIONS, convention_weights, dgkd_loss,
                                     stacked_dgkd_loss)

B, C = 16, 10
# (guides, λ, T, convention, keep): one member each
MEMBERS = [
    (3, 0.5, 4.0, "paper", None),
    (3, 0.7, 5.0, "paper", [1.0, 0.0, 1.0]),
    (1, 0.3, 2.0, "released_code", None),
    (2, 0.5, 4.0, "released_code_batchmean", [0.0, 1.0]),
    (0, 0.5, 4.0, "paper", None),
    (2, 0.9, 3.0, "released_code", [1.0, 1.0]),
]


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    k, g = len(MEMBERS), max(m[0] for m in MEMBERS)
    logits = (torch.randn(k, B, C, generator=gen) * 3).requires_grad_()
    guides = torch.randn(k, g, B, C, generator=gen) * 3
    targets = torch.randint(0, C, (k, B), generator=gen)
    return logits, guides, targets


def _stacked(logits, guides, targets):
    g = guides.shape[1]
    weights, divisors, ce_weights = [], [], []
    for n, lam, _, convention, keep in MEMBERS:
        ce_weight, divisor = convention_weights(n, lam, convention, C)
        keep = keep or [1.0] * n
        weights.append([lam * keep[i] if i < n else 0.0 for i in range(g)])
        divisors.append(float(divisor))
        ce_weights.append(ce_weight)
    return stacked_dgkd_loss(
        logits, guides, targets, guide_weights=torch.tensor(weights),
        kd_divisors=torch.tensor(divisors), ce_weights=torch.tensor(ce_weights),
        temperatures=torch.tensor([m[2] for m in MEMBERS]))


def test_every_convention_is_covered():
    assert {m[3] for m in MEMBERS} == set(CONVENTIONS)


def test_stacked_terms_and_gradients_are_each_members_own():
    logits, guides, targets = _inputs()
    totals, ce, kd = _stacked(logits, guides, targets)
    (grad_stacked,) = torch.autograd.grad(totals.sum(), logits)
    for k, (n, lam, t, convention, keep) in enumerate(MEMBERS):
        own = logits.detach()[k].clone().requires_grad_()
        total, terms = dgkd_loss(own, list(guides[k, :n]), targets[k], lam=lam, temperature=t,
                                 keep=None if keep is None else torch.tensor(keep),
                                 convention=convention)
        (grad_own,) = torch.autograd.grad(total, own)
        assert totals[k].item() == pytest.approx(total.item(), rel=1e-5, abs=1e-6), k
        assert ce[k].item() == pytest.approx(terms["ce"].item(), rel=1e-5), k
        for i in range(n):
            name = "kd_teacher" if i == 0 else f"kd_ta{i}"
            assert kd[k, i].item() == pytest.approx(terms[name].item(), rel=1e-5, abs=1e-7), k
        assert torch.allclose(grad_stacked[k], grad_own, rtol=1e-4, atol=1e-7), k


def test_a_members_missing_guide_rows_change_nothing():
    """The rows past a member's own guides are padding: other values there leave its loss and
    gradient as they were."""
    logits, guides, targets = _inputs()
    other = guides.clone()
    for k, (n, *_rest) in enumerate(MEMBERS):
        other[k, n:] = 1e3
    a = _stacked(logits, guides, targets)[0]
    b = _stacked(logits, other, targets)[0]
    assert torch.equal(a, b)


def test_no_guides_is_plain_cross_entropy():
    logits, _, targets = _inputs()
    totals, ce, kd = stacked_dgkd_loss(
        logits, None, targets, guide_weights=torch.zeros(len(MEMBERS), 0),
        kd_divisors=torch.ones(len(MEMBERS)), ce_weights=torch.ones(len(MEMBERS)),
        temperatures=torch.full((len(MEMBERS),), 4.0))
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[k], targets[k])
                            for k in range(len(MEMBERS))])
    assert torch.allclose(totals, expected, rtol=1e-6) and torch.equal(totals, ce)
    assert kd.shape == (len(MEMBERS), 0)
