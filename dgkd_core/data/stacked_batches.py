"""Several TensorLoaders' next batches made as one (a horizontal group's members, each with its
own order, crops and flips): one gather of the images and labels, one crop-and-flip and one
normalisation over all of them, then a view of each loader's part. The same pixels, bit for
bit, as each loader's own batch (gathers and elementwise maths per sample); a handful of
kernels a step instead of some eleven per loader.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dgkd_core.data.augment import crop_flip
from dgkd_core.data.loaders import BatchPlan, TensorLoader

__all__ = ["assemble_together", "can_assemble_together"]


def can_assemble_together(loaders: Sequence) -> bool:
    """Whether `loaders` can make their batches as one: train TensorLoaders of one process
    over the very same image and label tensors (a fused group's members share their prepared
    file's device copy, PreparedData.on_device), with the same augmentation, padding and
    normalisation."""
    if not all(isinstance(loader, TensorLoader) for loader in loaders):
        return False
    first = loaders[0]
    return all(loader.train and loader.world_size == 1 and loader.augment == first.augment
               and loader.pad == first.pad and loader.images is first.images
               and loader.labels is first.labels and _same_normalisation(loader, first)
               for loader in loaders)


def _same_normalisation(a: TensorLoader, b: TensorLoader) -> bool:
    na, nb = a.normalize, b.normalize
    return (na.dtype == nb.dtype and na.memory_format == nb.memory_format
            and torch.equal(na.shift, nb.shift) and torch.equal(na.scale, nb.scale))


def assemble_together(loaders: Sequence[TensorLoader], plans: Sequence[BatchPlan]
                      ) -> list[tuple[torch.Tensor, ...]]:
    """Each loader's batch of its plan (TensorLoader.batch_plans), as `TensorLoader.assemble`
    makes it, for loaders that `can_assemble_together`: x [B_k,3,H,W], y [B_k] (and rows [B_k]
    for a loader with views), each a view of one batch of all the samples."""
    first = loaders[0]
    index = torch.cat([plan.order[plan.lo:plan.hi] for plan in plans])
    images, labels = first.images[index], first.labels[index]
    if first.augment:
        crops = [plan.crops() for plan in plans]
        images = crop_flip(images, *(torch.cat(part) for part in zip(*crops)), first.pad)
    sizes = [plan.hi - plan.lo for plan in plans]
    xs, ys = first.normalize(images).split(sizes), labels.split(sizes)
    return [(x, y, plan.rows[plan.lo:plan.hi]) if loader.with_views else (x, y)
            for loader, plan, x, y in zip(loaders, plans, xs, ys)]
