"""Several TensorLoaders' batches made as one (dgkd_core.data.stacked_batches, a horizontal
group's data path) equal each loader's own batches bit for bit, and iterating batch plans
advances a loader's state exactly as iterating its batches does."""

from __future__ import annotations

import pytest
import torch

from dgkd_core.data.loaders import TensorLoader
from dgkd_core.data.stacked_batches import assemble_together, can_assemble_together

N, BATCH = 100, 32  # 3 full batches a train epoch (drop_last), the short fourth dropped


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (N, 3, 8, 8), generator=gen, dtype=torch.uint8),
            torch.randint(0, 10, (N,), generator=gen))


def same_state(a: TensorLoader, b: TensorLoader) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k]
        for k in sa)


def loader(images, seed, **over) -> TensorLoader:
    options = dict(batch_size=BATCH, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], train=True,
                   augment=True, device="cpu", generator_seed=seed)
    return TensorLoader(*images, **{**options, **over})


@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_made_as_one_equal_each_loaders_own(images, channels_last):
    views = [False, True, True]  # a member without guide tables beside two with
    own = [loader(images, seed, with_views=v, channels_last=channels_last)
           for seed, v in zip((1, 2, 3), views)]
    made = [loader(images, seed, with_views=v, channels_last=channels_last)
            for seed, v in zip((1, 2, 3), views)]
    assert can_assemble_together(made)
    for epoch in range(2):
        for a, b in zip(own, made):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
        expected = [list(a) for a in own]
        plans = [list(b.batch_plans()) for b in made]
        assert [len(p) for p in plans] == [len(e) for e in expected] == [3, 3, 3]
        for step in range(3):
            got = assemble_together(made, [p[step] for p in plans])
            for member, batch in enumerate(got):
                want = expected[member][step]
                assert len(batch) == len(want) == (3 if views[member] else 2)
                for g, w in zip(batch, want):
                    assert g.dtype == w.dtype and torch.equal(g, w), (epoch, step, member)
                assert batch[0].stride() == want[0].stride()
        assert all(same_state(a, b) for a, b in zip(own, made))


def test_plans_advance_the_state_as_batches_do(images):
    a, b = loader(images, 5), loader(images, 5)
    next(iter(a))
    next(b.batch_plans())
    assert same_state(a, b)
    rest_a, rest_b = list(a), [b.assemble(p) for p in b.batch_plans()]
    assert len(rest_a) == len(rest_b) == 2
    assert all(torch.equal(x, y) for p, q in zip(rest_a, rest_b) for x, y in zip(p, q))


def test_loaders_that_differ_are_not_made_as_one(images):
    base = loader(images, 1)
    assert can_assemble_together([base, loader(images, 2)])
    copied = (images[0].clone(), images[1])  # equal pixels, another tensor: not gathered from
    assert not can_assemble_together([base, loader(copied, 2)])
    assert not can_assemble_together([base, loader(images, 2, augment=False)])
    assert not can_assemble_together([base, loader(images, 2, mean=[0.1, 0.1, 0.1])])
    assert not can_assemble_together([base, loader(images, 2, train=False)])
