"""A validation split held out of the training images, to select settings without the test set
(issue #23: TAKD searched λ, T and the seed against the test set).

`validation_split(labels, n, seed)` picks n training images, the same number from every class
(the remainder spread over the first classes in label order), drawn by a CPU generator seeded
with `seed` alone. So the split is a pure function of (labels, n, seed): the same on CPU and
GPU, on every rank, and after a resume, and disjoint from the images the run trains on.
`hold_out` gives a run its training data without those images and the validation data
(`validation_images` in the run config; dgkd_core.training.setup).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dgkd_core.data.prepared import DataError, PreparedData

__all__ = ["hold_out", "validation_split"]

# Added to the run's seed: the split must not draw the same numbers as the data order.
_SPLIT_SEED_OFFSET = 0x5EED_0F_7A1


def validation_split(labels: torch.Tensor, n: int, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) into `labels`, both sorted: n images held out,
    class-balanced and seeded; every other image is for training."""
    labels = torch.as_tensor(labels).to(torch.int64).cpu()
    classes = torch.unique(labels)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DataError(f"validation_images is {n!r}; give a whole number of images, 0 or more")
    per_class, extra = divmod(n, max(len(classes), 1))
    generator = torch.Generator().manual_seed(seed + _SPLIT_SEED_OFFSET)
    held: list[torch.Tensor] = []
    for i, cls in enumerate(classes.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        want = per_class + (i < extra)
        if want >= len(members):
            raise DataError(
                f"validation_images {n} takes {want} images of class {cls}, which has only "
                f"{len(members)} training images; lower validation_images so that each class "
                "keeps at least one image for training")
        held.append(members[torch.randperm(len(members), generator=generator)[:want]])
    val = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def hold_out(data: PreparedData, n: int, seed: int) -> tuple[PreparedData, PreparedData]:
    """(training data less the n held-out images, the validation data: those images as both of
    its splits, so that its test loader evaluates them). Normalisation stays the whole training
    split's (meta), as the run's other loaders use it."""
    if data.is_stream:
        raise DataError(f"validation_images is {n} but {data.meta.get('name')} is streamed from "
                        "disk; a validation split needs cached data: set validation_images: 0")
    train_idx, val_idx = validation_split(data.train_labels, n, seed)
    train = replace(data, train_images=data.train_images[train_idx],
                    train_labels=data.train_labels[train_idx])
    images, labels = data.train_images[val_idx], data.train_labels[val_idx]
    val = replace(data, train_images=images, train_labels=labels, test_images=images,
                  test_labels=labels)
    return train, val
