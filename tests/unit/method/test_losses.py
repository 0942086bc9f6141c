"""Loss tests: every expected value comes from hand-written formulas in plain Python (math only),
never from F.kl_div / F.cross_entropy or the code under test."""

import math

import pytest
import torch

from dgkd_core.method.losses import (
    SegmentKeepMasks,
    check_loss_settings,
    dgkd_loss,
    draw_keep_mask,
    draw_released_drop_mask,
    guide_term_names,
    kd_loss,
    step_mask_drawer,
)

# ---------------------------------------------------------------- plain-Python reference formulas


def softmax(row, t=1.0):
    m = max(row)
    e = [math.exp((x - m) / t) for x in row]
    s = sum(e)
    return [x / s for x in e]


def ref_kd(student, guide, t):
    """T² · mean over rows of Σ_c p_c (log p_c − log q_c), p = guide, q = student."""
    total = 0.0
    for s_row, g_row in zip(student, guide):
        p, q = softmax(g_row, t), softmax(s_row, t)
        total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    return t * t * total / len(student)


def ref_ce(student, targets):
    return sum(-math.log(softmax(row)[y]) for row, y in zip(student, targets)) / len(student)


def ref_dgkd(student, guides, targets, lam, t, keep=None, convention="paper"):
    n, c = len(guides), len(student[0])
    keep = keep or [1.0] * n
    ce = ref_ce(student, targets)
    kd = [ref_kd(student, g, t) / (c if convention == "released_code" else 1) for g in guides]
    if n == 0:
        return ce, ce, kd
    ce_w = (1 - lam) if convention == "released_code" else n * (1 - lam)
    return ce_w * ce + lam * sum(k * v for k, v in zip(keep, kd)), ce, kd


def logits(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3


B, C = 4, 5
STUDENT = logits(B, C, seed=0)
GUIDES = [logits(B, C, seed=s) for s in (1, 2, 3)]
TARGETS = torch.tensor([0, 3, 1, 4])


def approx(x):
    return pytest.approx(x, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- kd_loss


def test_kd_loss_literal_two_classes():
    # guide softmax(ln3, 0) = (3/4, 1/4); student uniform: KL = 3/4·ln(3/2) + 1/4·ln(1/2)
    s, g = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    assert kd_loss(s, g, 1.0).item() == approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    # T = 2: guide softmax(ln3/2, 0) = (√3, 1)/(√3+1); times T² = 4
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    assert kd_loss(s, g, 2.0).item() == approx(4 * sum(x * math.log(2 * x) for x in p))
    assert kd_loss(g, g, 3.0).item() == approx(0.0)


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0, 5.0])
def test_kd_loss_matches_formula(t):
    out = kd_loss(STUDENT, GUIDES[0], t)
    assert out.dim() == 0 and out.dtype == torch.float32
    assert out.item() == approx(ref_kd(STUDENT.tolist(), GUIDES[0].tolist(), t))


def test_kd_loss_bf16_inputs_computed_in_fp32():
    s, g = STUDENT.bfloat16(), GUIDES[1].bfloat16()
    out = kd_loss(s, g, 4.0)
    assert out.dtype == torch.float32
    # exact bf16-rounded values as Python floats; fp32 maths must match the float64 reference
    assert out.item() == approx(ref_kd(s.float().tolist(), g.float().tolist(), 4.0))
    total, _ = dgkd_loss(s, [g], TARGETS, lam=0.3, temperature=4.0)
    expect, _, _ = ref_dgkd(s.float().tolist(), [g.float().tolist()], TARGETS.tolist(), 0.3, 4.0)
    assert total.dtype == torch.float32 and total.item() == approx(expect)


# ---------------------------------------------------------------- dgkd_loss


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dgkd_loss_paper(n, lam, t):
    total, terms = dgkd_loss(STUDENT, GUIDES[:n], TARGETS, lam=lam, temperature=t)
    expect, ce, kd = ref_dgkd(STUDENT.tolist(), [g.tolist() for g in GUIDES[:n]], TARGETS.tolist(), lam, t)
    assert list(terms) == ["ce", *guide_term_names(n), "total"]
    assert total.item() == approx(expect)
    assert terms["total"] is total
    assert terms["ce"].item() == approx(ce)
    for name, v in zip(guide_term_names(n), kd):
        assert terms[name].item() == approx(v)


def test_dgkd_loss_no_guides_is_plain_ce():
    for lam in (0.0, 0.7, 1.0):
        for conv in ("paper", "released_code"):
            total, _ = dgkd_loss(STUDENT, [], TARGETS, lam=lam, temperature=5.0, convention=conv)
            assert total.item() == approx(ref_ce(STUDENT.tolist(), TARGETS.tolist()))


def test_dgkd_loss_keep_mask():
    keep = torch.tensor([1.0, 0.0, 1.0])
    total, terms = dgkd_loss(STUDENT, GUIDES, TARGETS, lam=0.3, temperature=4.0, keep=keep)
    ce, kd = ref_ce(STUDENT.tolist(), TARGETS.tolist()), [
        ref_kd(STUDENT.tolist(), g.tolist(), 4.0) for g in GUIDES
    ]
    assert total.item() == approx(3 * 0.7 * ce + 0.3 * (kd[0] + kd[2]))
    assert terms["kd_ta1"].item() == approx(kd[1])  # terms are un-masked


def test_dgkd_loss_all_dropped_is_weighted_ce():
    total, _ = dgkd_loss(STUDENT, GUIDES, TARGETS, lam=0.3, temperature=4.0, keep=torch.zeros(3))
    assert total.item() == approx(3 * 0.7 * ref_ce(STUDENT.tolist(), TARGETS.tolist()))


def test_dgkd_loss_released_code_convention():
    keep = torch.tensor([0.0, 1.0, 1.0])
    args = dict(lam=0.3, temperature=5.0, keep=keep)
    total_r, terms_r = dgkd_loss(STUDENT, GUIDES, TARGETS, convention="released_code", **args)
    _, terms_p = dgkd_loss(STUDENT, GUIDES, TARGETS, **args)
    for name in guide_term_names(3):
        assert terms_r[name].item() == approx(terms_p[name].item() / C)
    expect, _, _ = ref_dgkd(
        STUDENT.tolist(),
        [g.tolist() for g in GUIDES],
        TARGETS.tolist(),
        0.3,
        5.0,
        keep=keep.tolist(),
        convention="released_code",
    )
    ce, kd = ref_ce(STUDENT.tolist(), TARGETS.tolist()), [
        ref_kd(STUDENT.tolist(), g.tolist(), 5.0) for g in GUIDES
    ]
    assert total_r.item() == approx(expect)
    assert total_r.item() == approx(0.7 * ce + 0.3 * (kd[1] + kd[2]) / C)


def test_dgkd_loss_released_code_without_the_class_mean():
    """released_code_batchmean: the released code's CE weight (1 - λ), the paper's KD (no 1/C)."""
    keep = torch.tensor([1.0, 0.0, 1.0])
    total, terms = dgkd_loss(STUDENT, GUIDES, TARGETS, lam=0.3, temperature=5.0, keep=keep,
                             convention="released_code_batchmean")
    ce = ref_ce(STUDENT.tolist(), TARGETS.tolist())
    kd = [ref_kd(STUDENT.tolist(), g.tolist(), 5.0) for g in GUIDES]
    assert total.item() == approx(0.7 * ce + 0.3 * (kd[0] + kd[2]))
    assert terms["kd_teacher"].item() == approx(kd[0])


def test_dgkd_loss_gradient_reaches_student_only():
    student = STUDENT.clone().requires_grad_(True)
    guides = [g.clone() for g in GUIDES]
    keep, lam, t = [1.0, 0.0, 1.0], 0.3, 4.0
    total, _ = dgkd_loss(student, guides, TARGETS, lam=lam, temperature=t, keep=torch.tensor(keep))
    total.backward()
    assert all(g.grad is None and not g.requires_grad for g in guides)
    # d/ds: n(1−λ)(softmax(s) − onehot)/B + λ Σ keep_i · T (softmax(s/T) − softmax(g_i/T))/B
    for b, (row, y) in enumerate(zip(STUDENT.tolist(), TARGETS.tolist())):
        q1, qt = softmax(row), softmax(row, t)
        for c in range(C):
            expect = 3 * (1 - lam) * (q1[c] - (c == y))
            for k, g in zip(keep, GUIDES):
                expect += lam * k * t * (qt[c] - softmax(g[b].tolist(), t)[c])
            assert student.grad[b, c].item() == approx(expect / B)


def test_dgkd_loss_no_data_dependent_control_flow():
    # on the meta device any .item() / bool(tensor) raises: keep must enter as arithmetic only
    meta = dict(device="meta")
    total, terms = dgkd_loss(
        torch.empty(B, C, **meta),
        [torch.empty(B, C, **meta)] * 3,
        torch.empty(B, dtype=torch.long, **meta),
        lam=0.5,
        temperature=4.0,
        keep=torch.empty(3, **meta),
    )
    assert total.shape == () and total.device.type == "meta"


def test_dgkd_loss_bad_keep_shape():
    with pytest.raises(ValueError, match="keep"):
        dgkd_loss(STUDENT, GUIDES, TARGETS, lam=0.5, temperature=4.0, keep=torch.ones(2))


def test_guide_term_names():
    assert guide_term_names(0) == []
    assert guide_term_names(1) == ["kd_teacher"]
    assert guide_term_names(4) == ["kd_teacher", "kd_ta1", "kd_ta2", "kd_ta3"]


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("drop_teacher", [False, True])
def test_draw_keep_mask_statistics(drop_teacher):
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack(
        [draw_keep_mask(4, 0.75, drop_teacher=drop_teacher, generator=gen) for _ in range(4000)]
    )
    assert masks.dtype == torch.float32 and masks.device.type == "cpu"
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    mean = masks.mean(0).tolist()
    if drop_teacher:
        assert mean[0] == pytest.approx(0.75, abs=0.03)
    else:
        assert mean[0] == 1.0
    assert mean[1:] == pytest.approx([0.75] * 3, abs=0.03)  # σ of a mean ≈ 0.007


def test_draw_keep_mask_reproducible_and_outcome_independent_stream():
    def draws(seed, p):
        gen = torch.Generator().manual_seed(seed)
        masks = [draw_keep_mask(3, p, drop_teacher=True, generator=gen) for _ in range(20)]
        return torch.stack(masks), torch.rand(1, generator=gen).item()

    (m1, after1), (m2, _) = draws(7, 0.5), draws(7, 0.5)
    assert torch.equal(m1, m2)
    assert draws(7, 0.2)[1] == draws(7, 0.9)[1] == after1  # same count of numbers drawn
    assert torch.equal(draw_keep_mask(5, 1.0, drop_teacher=True, generator=torch.Generator()), torch.ones(5))
    assert draw_keep_mask(0, 0.5, drop_teacher=False, generator=torch.Generator()).shape == (0,)


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_draw_released_drop_mask_exactly_k(k):
    gen = torch.Generator().manual_seed(1)
    masks = torch.stack([draw_released_drop_mask(4, k, generator=gen) for _ in range(2000)])
    assert ((masks == 0).sum(1) == k).all() and ((masks == 1).sum(1) == 4 - k).all()
    assert masks.mean(0).tolist() == pytest.approx([1 - k / 4] * 4, abs=0.04)  # teacher included
    again = torch.Generator().manual_seed(1)
    assert torch.equal(masks[0], draw_released_drop_mask(4, k, generator=again))


def per_step_masks(loss_cfg, n_guides, gen, steps):
    """The order before per-segment drawing (the reference): one mask drawn per step, as the
    trainer drew them, from the epoch's generator."""
    out = []
    for _ in range(steps):
        if loss_cfg["keep_prob"] is not None and n_guides > 0:
            out.append(draw_keep_mask(n_guides, loss_cfg["keep_prob"],
                                      drop_teacher=loss_cfg["drop_teacher"], generator=gen))
        elif loss_cfg["drop_num"] > 0:
            out.append(draw_released_drop_mask(n_guides, loss_cfg["drop_num"], generator=gen))
    return out


@pytest.mark.parametrize("loss_cfg", [
    {"keep_prob": 0.5, "drop_teacher": True, "drop_num": 0},
    {"keep_prob": 0.7, "drop_teacher": False, "drop_num": 0},
    {"keep_prob": None, "drop_teacher": False, "drop_num": 1},  # the released code's dropping
])
def test_segment_masks_are_the_per_step_draws_and_resume_mid_epoch(loss_cfg):
    steps, n_guides, k = 9, 3, 4
    reference = per_step_masks(loss_cfg, n_guides, torch.Generator().manual_seed(5), steps)
    gen = torch.Generator().manual_seed(5)
    whole = SegmentKeepMasks(step_mask_drawer(loss_cfg, n_guides), gen, 0, steps,
                             torch.device("cpu"))
    assert whole.masks.shape == (steps, n_guides) and whole.masks.dtype == torch.float32
    assert all(torch.equal(whole.at(i), reference[i]) for i in range(steps))
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())  # untouched
    # A stop after step k saves the state k per-step draws leave; the resumed segment goes on.
    old = torch.Generator().manual_seed(5)
    per_step_masks(loss_cfg, n_guides, old, k)
    saved = whole.generator_state_at(k)
    assert torch.equal(saved, old.get_state())
    resumed_gen = torch.Generator()
    resumed_gen.set_state(saved)
    rest = SegmentKeepMasks(step_mask_drawer(loss_cfg, n_guides), resumed_gen, k, steps,
                            torch.device("cpu"))
    assert all(torch.equal(rest.at(i), reference[i]) for i in range(k, steps))
    assert torch.equal(rest.generator_state_at(steps), whole.generator_state_at(steps))
    # stopped after the last step: nothing left to draw
    done = SegmentKeepMasks(step_mask_drawer(loss_cfg, n_guides), resumed_gen, steps, steps,
                            torch.device("cpu"))
    assert done.masks.shape == (0, n_guides)


def test_no_masks_where_every_guide_counts():
    loss_cfg = {"keep_prob": None, "drop_teacher": False, "drop_num": 0}
    gen = torch.Generator().manual_seed(2)
    masks = SegmentKeepMasks(step_mask_drawer(loss_cfg, 2), gen, 0, 5, torch.device("cpu"))
    assert masks.at(3) is None
    assert torch.equal(masks.generator_state_at(3), gen.get_state())


def test_draw_released_drop_mask_too_many():
    with pytest.raises(ValueError, match="drop_num"):
        draw_released_drop_mask(3, 4, generator=torch.Generator())


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kwargs, name, shown",
    [
        (dict(lam=-0.1), "lam", "-0.1"),
        (dict(lam=1.5), "lam", "1.5"),
        (dict(lam=float("nan")), "lam", "nan"),
        (dict(temperature=0.0), "temperature", "0.0"),
        (dict(temperature=-2.0), "temperature", "-2.0"),
        (dict(temperature=float("inf")), "temperature", "inf"),
        (dict(keep_prob=0.0), "keep_prob", "0.0"),
        (dict(keep_prob=1.2), "keep_prob", "1.2"),
        (dict(convention="paperish"), "convention", "paperish"),
        (dict(drop_num=-1), "drop_num", "-1"),
        (dict(drop_num=1.5), "drop_num", "1.5"),
    ],
)
def test_bad_settings_raise(kwargs, name, shown):
    settings = dict(lam=0.5, temperature=4.0) | kwargs
    with pytest.raises(ValueError, match=name) as err:
        check_loss_settings(**settings)
    assert shown in str(err.value)


def test_good_settings_pass():
    check_loss_settings(0.0, 1e-3, keep_prob=1.0, convention="released_code", drop_num=2)
    check_loss_settings(1.0, 5, keep_prob=0.75)
