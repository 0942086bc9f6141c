"""Loaders that train from a prepared file: :class:`TensorLoader` (cached uint8 tensor on the
device), :class:`StreamLoader` (a stream descriptor's files, read each epoch) and
:func:`make_loaders`, which picks one for a prepared file."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch

from dgkd_core.data.augment import Normalizer, crop_flip, draw_augment_params, view_rows
from dgkd_core.data.epochs import EpochLoader, EpochState
from dgkd_core.data.imagefolder import open_rgb
from dgkd_core.data.prepared import DataError, PreparedData, load_prepared
from dgkd_core.data.recipes import ImagenetFolder
from dgkd_core.data.shards import shard_slice
from dgkd_core.device import resolve_device

__all__ = ["BatchPlan", "StreamLoader", "TensorLoader", "make_loaders"]


class BatchPlan(NamedTuple):
    """One batch of a TensorLoader's epoch: samples `order[lo:hi]` (or `lo:hi` in order where
    `order` is None), their crop offsets and flips `aug` (dy, dx, flip: each [N] for the
    epoch, or None), and guide-table `rows` ([N] or None), all on the loader's device."""

    lo: int
    hi: int
    order: torch.Tensor | None
    aug: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    rows: torch.Tensor | None

    def crops(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This batch's (dy, dx, flip), each [hi - lo]."""
        return tuple(t[self.lo:self.hi] for t in self.aug)


class TensorLoader(EpochLoader):
    """Batches from a uint8 image tensor that lives on the training device (airbench style).

    images_uint8: [N,3,H,W] uint8; labels: int64 [N]. Both are moved to ``device`` once.
    Each iteration yields (x, y): x float [B,3,H,W] normalised with ``mean``/``std`` (0-1 scale,
    per channel: (pixel/255 - mean)/std) in ``dtype`` (channels_last if asked), y int64 [B], both on
    ``device``.

    train=True: each epoch visits a random permutation; augment=True adds per-sample random crop
    (4 px zero padding, i.e. black before normalisation, like torchvision
    ``RandomCrop(32, padding=4)``) and horizontal flip, done in batch on the device. The
    permutation and every augmentation number of epoch e are drawn on the CPU from a generator
    seeded by (generator_seed, e), so epoch e is a pure function of (generator_seed, e) and the
    same on every device. ``drop_last`` defaults to ``train``.
    train=False: fixed order, no augmentation, no sample dropped.
    shard=(rank, world_size): this loader yields only its rank's contiguous slice of each
    (global, ``batch_size``) batch of that same order (``data.shards.shard_slice``).

    with_views=True (train with augment only): each batch is (x, y, rows), rows int64 [B] on
    ``device``: each sample's row ``index·V + view`` of a guide table (``augment.view_rows``;
    V = 162 views for pad 4), from the very offsets and flips its crop used.

    Call ``set_epoch(e)`` before iterating epoch e (without it, iteration continues where the last
    one stopped, and a finished epoch advances to the next). ``state_dict()`` taken between
    batches records (epoch, next batch, generator state); ``load_state_dict()`` makes the next
    iteration yield exactly the remaining batches of that epoch. ``len()`` is batches per epoch.
    """

    _STREAM = "tensor"

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], train: bool, augment: bool,
                 device: str | torch.device | None, generator_seed: int = 0,
                 drop_last: bool | None = None, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, pad: int = 4,
                 with_views: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise DataError(f"images must be uint8 [N,C,H,W], got {images_uint8.dtype} "
                            f"{list(images_uint8.shape)}")
        if labels.shape != (images_uint8.shape[0],):
            raise DataError(f"labels must be [{images_uint8.shape[0]}], got {list(labels.shape)}")
        self.device = resolve_device(device)
        self.train = bool(train)
        self.augment = bool(augment) and self.train
        self.pad = int(pad)
        if with_views and not self.augment:
            raise DataError("guide-table rows need the random crop and flip: with_views is for "
                            "a train loader with augment=True")
        self.with_views = bool(with_views)
        self.images = images_uint8.to(self.device).contiguous()
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.normalize = Normalizer(mean, std, self.device, dtype, channels_last)
        drop = self.train if drop_last is None else bool(drop_last)
        self._state = EpochState(images_uint8.shape[0], int(batch_size), generator_seed, drop)
        self._plan: tuple[tuple[int, int], Any] | None = None  # ((epoch, id), tensors)
        self.rank, self.world_size = shard

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._plan = None

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._plan = None

    def _epoch_plan(self):
        """Order and augmentation of the current epoch, drawn once on the CPU, moved to device."""
        if self._plan is not None and self._plan[0] == self._state.epoch:
            return self._plan[1]
        n = self._state.num_samples
        if not self.train:
            plan = None
        else:
            g = self._state.generator(self._STREAM)
            order = torch.randperm(n, generator=g)
            aug = draw_augment_params(n, g, self.pad) if self.augment else None
            rows = None
            if self.with_views:  # drawn as before: the batches do not change with the rows
                rows = view_rows(order, *aug, self.pad).to(self.device, non_blocking=True)
            if aug is not None:
                aug = tuple(t.to(self.device, non_blocking=True) for t in aug)
            plan = (order.to(self.device, non_blocking=True), aug, rows)
        self._plan = (self._state.epoch, plan)
        return plan

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self.batch_plans():
            yield self.assemble(batch)

    def batch_plans(self) -> Iterator[BatchPlan]:
        """The rest of the epoch as plans, one per batch (which samples, their crops and table
        rows), the loader's state advanced as iterating it advances it; `assemble` makes a plan
        the batch __iter__ yields (dgkd_core.data.stacked_batches: several loaders' at once)."""
        st = self._state
        plan = self._epoch_plan()
        n, bs, total = st.num_samples, st.batch_size, len(st)
        while st.next_batch < total:
            k = st.next_batch
            # this rank's slice of global batch k (all of it with one rank)
            lo, hi = shard_slice(k * bs, min((k + 1) * bs, n), self.rank, self.world_size)
            st.next_batch = k + 1
            if lo == hi:  # a short last test batch split over more ranks than it has images
                continue
            yield BatchPlan(lo, hi, *(plan if plan is not None else (None, None, None)))
        st.finish_epoch()
        self._plan = None

    def assemble(self, batch: BatchPlan) -> tuple[torch.Tensor, ...]:
        """(x, y) or, with_views, (x, y, rows) of `batch` (one of `batch_plans`)."""
        lo, hi = batch.lo, batch.hi
        if batch.order is None:
            images, labels = self.images[lo:hi], self.labels[lo:hi]
        else:
            idx = batch.order[lo:hi]
            images, labels = self.images[idx], self.labels[idx]
            if batch.aug is not None:
                images = crop_flip(images, *batch.crops(), self.pad)
        if self.with_views:
            return self.normalize(images), labels, batch.rows[lo:hi]
        return self.normalize(images), labels


# --------------------------------------------------------------------------- stream


def _stream_load(path: str, size: tuple[int, int] | None, expected: tuple[int, int]):
    return open_rgb(path, size, expected, "the first train image when it was prepared")


class _StreamDataset:
    """ImageFolder files -> uint8 [3,H,W]; items are (index, seed) so the per-sample augmentation
    is a pure function of (loader seed, epoch, index) whatever the worker count."""

    def __init__(self, folder, size, expected, augment, pad, classes, num_samples):
        from torchvision.datasets import ImageFolder

        self.ds = ImageFolder(folder, loader=partial(_stream_load, size=size, expected=expected))
        if list(self.ds.classes) != list(classes) or len(self.ds) != num_samples:
            raise DataError(f"{folder} changed since it was prepared (now {len(self.ds)} images, "
                            f"{len(self.ds.classes)} classes; prepared: {num_samples} images, "
                            f"{len(classes)} classes); prepare the dataset again")
        self.augment, self.pad = augment, pad
        self.height, self.width = expected

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item: tuple[int, int]):
        import torchvision.transforms.functional as TF

        index, seed = item
        img, label = self.ds[index]
        if self.augment:  # torchvision RandomCrop(size, padding=pad) + RandomHorizontalFlip
            g = torch.Generator().manual_seed(seed)
            dy, dx, flip = draw_augment_params(1, g, self.pad)
            img = TF.crop(TF.pad(img, [self.pad], fill=0), int(dy), int(dx), self.height,
                          self.width)
            if bool(flip):
                img = TF.hflip(img)
        return TF.pil_to_tensor(img), label


class _ResumableBatches:
    """Batches of (index, per-sample seed) for global batches [start, total) of an epoch's
    order: batch k is positions [k*bs, (k+1)*bs), or this rank's slice of them."""

    def __init__(self, order: torch.Tensor, seeds: torch.Tensor, start: int, batch_size: int,
                 shard: tuple[int, int]):
        items = list(zip(order.tolist(), seeds.tolist()))
        n = len(items)
        self.batches = []
        for lo in range(start * batch_size, n, batch_size):
            a, b = shard_slice(lo, min(lo + batch_size, n), *shard)
            if b > a:
                self.batches.append(items[a:b])

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class StreamLoader(EpochLoader):
    """Loader for a stream descriptor: reads ``root/<split>/<class>/*`` with torchvision each epoch.

    Same interface as :class:`TensorLoader`: ``set_epoch``, iteration yielding (x float
    [B,3,H,W] normalised with the descriptor's mean/std, y int64 [B]) on ``device``, ``len``,
    ``state_dict``/``load_state_dict``. Files are listed by torchvision ``ImageFolder`` and decoded
    with PIL in ``num_workers`` DataLoader processes (default up to 4; 0 = in this process),
    resized to the prepared size if the descriptor has ``resize``, and, for train with augment,
    padded by 4 zero pixels, randomly cropped and flipped with torchvision's functional
    transforms (``RandomCrop(size, padding=4)`` + ``RandomHorizontalFlip``). The epoch order comes
    from a CPU generator seeded by (seed, epoch), and each sample's crop/flip from a seed drawn
    alongside it, so an epoch does not depend on the worker count and mid-epoch resume yields the
    same batches as an uninterrupted run. ``shard=(rank, world_size)``: only this rank's slice
    of each global batch, as :class:`TensorLoader`. This path is for datasets too large for the
    tensor cache; it is correct but slow (PIL per image, every epoch). A descriptor prepared with
    the ImageNet recipe (``meta["recipe"] == "imagenet"``) reads its files with
    :class:`~dgkd_core.data.recipes.ImagenetFolder` instead: torchvision decoding (``decoder``),
    RandomResizedCrop(224) + flip for train with augment, Resize(256) + CenterCrop(224) else.
    """

    _STREAM = "stream"

    def __init__(self, prepared: PreparedData, split: str, *, batch_size: int,
                 device: str | torch.device | None, seed: int = 0, train: bool | None = None,
                 augment: bool = True, drop_last: bool | None = None, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, num_workers: int | None = None,
                 pad: int = 4, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, shard: tuple[int, int] = (0, 1),
                 decoder: str = "torchvision") -> None:
        meta = prepared.meta
        if not meta.get("stream"):
            raise DataError("StreamLoader needs a stream descriptor; cached data uses TensorLoader")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.train = (split == "train") if train is None else bool(train)
        self.augment = bool(augment) and self.train
        self.device = resolve_device(device)
        self.split = split
        resize = meta.get("resize")
        size = tuple(resize) if resize else None
        expected = tuple(meta["image_size"])
        labels = prepared.train_labels if split == "train" else prepared.test_labels
        folder = os.path.join(meta["root"], split)
        if meta.get("recipe") == "imagenet":  # data/recipes.py; `decoder` applies to it only
            self.dataset = ImagenetFolder(folder, self.augment, meta["classes"], len(labels),
                                          decoder)
        else:
            self.dataset = _StreamDataset(folder, size, expected, self.augment, int(pad),
                                          meta["classes"], len(labels))
        # mean/std: the run's normalisation, the descriptor's train statistics by default
        self.normalize = Normalizer(meta["mean"] if mean is None else mean,
                                    meta["std"] if std is None else std,
                                    self.device, dtype, channels_last)
        self.num_workers = (min(4, os.cpu_count() or 1) if num_workers is None else num_workers)
        drop = self.train if drop_last is None else bool(drop_last)
        self._state = EpochState(len(self.dataset), int(batch_size), seed, drop)
        self.shard = shard

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        st = self._state
        n, bs = st.num_samples, st.batch_size
        if self.train:
            g = st.generator(self._STREAM)
            order = torch.randperm(n, generator=g)
            seeds = torch.randint(0, 2**62, (n,), generator=g)
        else:
            order, seeds = torch.arange(n), torch.zeros(n, dtype=torch.int64)
        total = len(st)
        order, seeds = order[: total * bs], seeds[: total * bs]  # drop_last trims the tail
        loader = torch.utils.data.DataLoader(
            self.dataset, num_workers=self.num_workers,
            batch_sampler=_ResumableBatches(order, seeds, st.next_batch, bs, self.shard),
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            st.next_batch += 1
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, dtype=torch.int64, non_blocking=True)
            yield self.normalize(images), labels
        st.finish_epoch()


# --------------------------------------------------------------------------- make_loaders


def make_loaders(prepared_or_path: PreparedData | str | os.PathLike, *, batch_size: int,
                 eval_batch_size: int, device: str | torch.device | None, seed: int,
                 augment: bool = True, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, num_workers: int | None = None,
                 normalization: dict | None = None, with_views: bool = False,
                 shard: tuple[int, int] = (0, 1)):
    """(train_loader, test_loader) for a prepared file or :class:`PreparedData`.

    Cached data gives :class:`TensorLoader`s (train: shuffled, ``augment`` crop/flip, drop_last;
    test: fixed order, everything), a stream descriptor :class:`StreamLoader`s. The train loader's
    randomness is seeded by ``seed``; both yield normalised float [B,3,H,W] and int64 [B] on
    ``device``. ``num_workers`` applies to stream loaders only. ``normalization``: {"mean": [3],
    "std": [3]} (0-1 scale) in place of the data's own train-split statistics (None: those).
    ``with_views``: the train loader also yields guide-table rows (cached data with augment only).
    ``shard``: (rank, world_size) of a data-parallel run; each loader yields that rank's slice
    of every global batch (``batch_size``, ``eval_batch_size``) of the one shared order.
    """
    data = prepared_or_path
    if not isinstance(data, PreparedData):
        data = load_prepared(data)
    mean, std = ((normalization["mean"], normalization["std"]) if normalization
                 else (data.mean, data.std))
    if data.is_stream:
        if with_views:
            raise DataError("guide tables need the cached data path; this dataset is streamed "
                            "from disk: set guide_tables: false")
        common = dict(device=device, seed=seed, channels_last=channels_last, dtype=dtype,
                      num_workers=num_workers, mean=mean, std=std, shard=shard)
        return (StreamLoader(data, "train", batch_size=batch_size, augment=augment, **common),
                StreamLoader(data, "test", batch_size=eval_batch_size, augment=False, **common))
    device = resolve_device(device)
    common = dict(mean=mean, std=std, device=device, channels_last=channels_last, dtype=dtype,
                  shard=shard)
    # the data's one device copy, whoever else (a fused group's members) holds it
    train = TensorLoader(data.on_device("train_images", device),
                         data.on_device("train_labels", device), batch_size=batch_size,
                         train=True, augment=augment, generator_seed=seed,
                         with_views=with_views, **common)
    test = TensorLoader(data.on_device("test_images", device),
                        data.on_device("test_labels", device), batch_size=eval_batch_size,
                        train=False, augment=False, generator_seed=seed, **common)
    return train, test
