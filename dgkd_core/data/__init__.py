"""Datasets -> one prepared uint8 tensor file, and the loaders that train from it.

Preparing (once per dataset, `python -m dgkd_core prepare-data`)::

    meta = prepare_dataset("cifar10", "results/data/cifar10.pt", root="downloads", download=True)

writes ONE file (``torch.save`` of a dict, written atomically; docs/design.md)::

    {"train_images": uint8 [N,3,H,W], "train_labels": int64 [N],
     "test_images":  uint8 [M,3,H,W], "test_labels":  int64 [M],
     "meta": {"format", "name", "source", "stream": False, "classes", "num_classes",
              "image_size": [H, W], "mean": [3 floats, 0-1 scale, train split], "std": [...],
              "num_train", "num_test", "checksum": sha256 of the four tensors,
              "source_detail": {...}}}

Sources (``DATASET_SOURCES``):

* ``cifar10`` / ``cifar100``: torchvision's ``CIFAR10``/``CIFAR100`` (their ``.data`` arrays are
  used directly); ``root`` is the folder that holds ``cifar-10-batches-py`` / ``cifar-100-python``.
* ``imagefolder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` (ImageNet layout), decoded
  once with PIL. Images must share one size unless ``resize`` is given. A folder with more than
  ``max_cached_images`` images (or an estimated uint8 size above ``max_cached_bytes``) becomes a
  *stream descriptor*: no image tensors, ``meta["stream"] = True``, labels and the root are kept,
  and :class:`StreamLoader` reads the files at train time.
* An image folder packed as a tar file is unpacked first by :func:`extract_archive` (regular
  files and folders only: links, devices and fifos are refused).
* ``synthetic``: an embedded, procedurally generated 10-class 32x32 RGB task (see
  :func:`make_synthetic`), deterministic from ``seed``; it needs no files and no network.

Training (:func:`make_loaders`) never touches PIL for cached data: :class:`TensorLoader` keeps the
uint8 tensor on the training device and builds each batch there (random crop with 4 px of zero
padding + horizontal flip, done in batch, then normalisation with the train split's mean/std).
Every random number is drawn on the CPU from a generator that is a pure function of
(seed, epoch), so batches are identical on CPU and GPU and resumable mid-epoch.
"""

from __future__ import annotations

# One module per concern; the package exports the public names of each.
from dgkd_core.data.archive import extract_archive
from dgkd_core.data.augment import (
    CROP_PAD,
    Normalizer,
    augment_batch,
    crop_flip,
    draw_augment_params,
    view_index,
    view_params,
    view_rows,
    views_per_image,
)
from dgkd_core.data.loaders import StreamLoader, TensorLoader, make_loaders
from dgkd_core.data.prepared import (
    FORMAT_VERSION,
    DataError,
    PreparedData,
    channel_stats,
    load_prepared,
    tensor_checksum,
)
from dgkd_core.data.seeds import epoch_seed
from dgkd_core.data.sources import (
    DATASET_SOURCES,
    DEFAULT_MAX_CACHED_BYTES,
    DEFAULT_MAX_CACHED_IMAGES,
    always_cached,
    prepare_dataset,
    source_num_classes,
)
from dgkd_core.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_SHAPES,
    SYNTHETIC_SIZE,
    make_synthetic,
)

__all__ = [
    "CROP_PAD",
    "DATASET_SOURCES",
    "SYNTHETIC_SHAPES",
    "DataError",
    "Normalizer",
    "PreparedData",
    "StreamLoader",
    "TensorLoader",
    "always_cached",
    "augment_batch",
    "channel_stats",
    "crop_flip",
    "draw_augment_params",
    "extract_archive",
    "load_prepared",
    "make_loaders",
    "make_synthetic",
    "prepare_dataset",
    "source_num_classes",
    "tensor_checksum",
    "view_index",
    "view_params",
    "view_rows",
    "views_per_image",
]

