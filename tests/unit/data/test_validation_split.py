"""The validation split (dgkd_core.data.validation): disjoint from training, class-balanced,
seeded, and the same when computed again (as a resumed run does)."""

from __future__ import annotations

import pytest
import torch

from dgkd_core.data.prepared import DataError
from dgkd_core.data.validation import validation_split

LABELS = torch.arange(10).repeat_interleave(50)[torch.randperm(500, generator=torch.Generator()
                                                               .manual_seed(0))]


def test_split_is_disjoint_and_covers_the_training_set():
    train, val = validation_split(LABELS, 100, seed=20)
    assert len(val) == 100 and len(train) == 400
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(500))


def test_split_is_class_balanced():
    _, val = validation_split(LABELS, 100, seed=20)
    assert torch.bincount(LABELS[val], minlength=10).tolist() == [10] * 10
    _, val = validation_split(LABELS, 13, seed=20)  # 1 each, and 3 more for the first classes
    assert torch.bincount(LABELS[val], minlength=10).tolist() == [2, 2, 2] + [1] * 7


def test_split_is_stable_across_calls_and_depends_on_the_seed():
    """A resumed run recomputes the split from (labels, n, seed): it must come out the same."""
    first = validation_split(LABELS, 50, seed=31)
    torch.manual_seed(123)  # the global RNG (used by training) plays no part
    again = validation_split(LABELS.clone(), 50, seed=31)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = validation_split(LABELS, 50, seed=55)
    assert not torch.equal(first[1], other[1])


def test_zero_holds_out_nothing():
    train, val = validation_split(LABELS, 0, seed=20)
    assert len(val) == 0 and torch.equal(train, torch.arange(500))


@pytest.mark.parametrize("n", [-1, 1.5, 500])
def test_bad_sizes_fail_with_one_line_naming_the_fix(n):
    with pytest.raises(DataError, match="validation_images") as err:
        validation_split(LABELS, n, seed=20)
    assert "\n" not in str(err.value)
