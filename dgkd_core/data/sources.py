"""Preparing a dataset from its source (CIFAR via torchvision, an image folder, the synthetic task)
into one prepared file; the format is described in :mod:`dgkd_core.data`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dgkd_core import io
from dgkd_core.data.imagefolder import decode_all, image_size, listing_checksum
from dgkd_core.data.prepared import (
    FORMAT_VERSION,
    DataError,
    cached_payload,
    channel_stats,
    ordered_meta,
)
from dgkd_core.data.recipes import IMAGENET_MEAN, IMAGENET_STD, RECIPES
from dgkd_core.data.synthetic import SYNTHETIC_CLASSES, make_synthetic

__all__ = [
    "DATASET_SOURCES",
    "DEFAULT_MAX_CACHED_BYTES",
    "DEFAULT_MAX_CACHED_IMAGES",
    "always_cached",
    "prepare_dataset",
    "source_num_classes",
]

DATASET_SOURCES = ("cifar10", "cifar100", "imagefolder", "synthetic")
# Each source's class count before anything is prepared; an image folder's are its subfolders.
_SOURCE_CLASSES = {"cifar10": 10, "cifar100": 100, "imagefolder": None,
                   "synthetic": len(SYNTHETIC_CLASSES)}


def _require_known_source(source: str) -> None:
    if source not in DATASET_SOURCES:
        raise DataError(f"unknown dataset source {source!r}; choose one of "
                        f"{', '.join(DATASET_SOURCES)}")


def source_num_classes(source: str) -> int | None:
    """How many classes a dataset of `source` has (None for an image folder: its subfolders)."""
    _require_known_source(source)
    return _SOURCE_CLASSES[source]

DEFAULT_MAX_CACHED_IMAGES = 2_000_000
DEFAULT_MAX_CACHED_BYTES = 8 * 2**30  # uint8 bytes of train + test images kept in one file

_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_STAT_SAMPLE = 20_000  # images used for a stream descriptor's mean/std


def prepare_dataset(
    source: str,
    out_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    name: str | None = None,
    seed: int = 0,
    resize: int | Sequence[int] | None = None,
    synthetic_train: int = 5000,
    synthetic_test: int = 1000,
    max_cached_images: int = DEFAULT_MAX_CACHED_IMAGES,
    max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES,
    workers: int | None = None,
    root_is_temporary: bool = False,
    recipe: str = "cifar",
) -> dict:
    """Turn a dataset into one prepared file at ``out_path`` (written atomically); returns its meta.

    source: one of ``DATASET_SOURCES``.
    root: cifar10/cifar100: the folder holding ``cifar-10-batches-py``/``cifar-100-python`` (or
        where the download goes; default ``<folder of out_path>/downloads``); imagefolder: the
        folder with ``train/`` and ``test/`` (required). Unused for synthetic.
    download: let torchvision download CIFAR when the files are missing.
    name: dataset name recorded in meta (default: the source; for imagefolder the root's name).
    seed: seed of the synthetic data (other sources ignore it).
    resize: imagefolder only: resize every image to ``[H, W]`` (an int means square) with PIL
        bilinear resampling; without it all images must share one size.
    synthetic_train / synthetic_test: number of synthetic images per split.
    max_cached_images / max_cached_bytes: above either, an imagefolder dataset is written as a
        stream descriptor (``meta["stream"] = True``) read by :class:`StreamLoader`.
    workers: processes decoding imagefolder images (default: up to 8, one per CPU core).
    root_is_temporary: the imagefolder root is removed once the file is prepared (an unpacked
        archive); a dataset too large to cache then raises DataError instead of becoming a
        stream descriptor, which would point into a folder that is gone when training reads it.
    recipe: "cifar" (default: the above); "imagenet" (imagefolder only): always a stream
        descriptor of images of any size, trained with RandomResizedCrop(224) + flip and
        evaluated with Resize(256) + CenterCrop(224), normalised with ImageNet's mean/std
        (data/recipes.py).

    Same inputs give the same tensors and therefore the same ``meta["checksum"]``.
    """
    out_path = Path(out_path)
    size = _checked_size(source, resize, recipe, root_is_temporary)
    if source in _CIFAR_FOLDERS:
        root = Path(root) if root is not None else out_path.parent / "downloads"
        payload = _prepare_cifar(source, root, download)
    elif source == "imagefolder":
        payload = _prepare_folder(root, recipe, size, max_cached_images, max_cached_bytes,
                                  workers, name, root_is_temporary)
    else:
        payload = _prepare_synthetic(seed, synthetic_train, synthetic_test)
    payload["meta"] = meta = _recorded_meta(payload["meta"], name, source)
    io.atomic_torch_save(payload, out_path)
    return meta


def _checked_size(source: str, resize: int | Sequence[int] | None, recipe: str,
                  root_is_temporary: bool) -> tuple[int, int] | None:
    """The image size that `resize` asks for; DataError where the arguments do not fit."""
    _require_known_source(source)
    size = _parse_resize(resize)
    if size is not None and source != "imagefolder":
        raise DataError(f"resize applies to the imagefolder source only, not {source!r}")
    _check_recipe(recipe, source, size, root_is_temporary)
    return size


def _prepare_folder(root, recipe, size, max_cached_images, max_cached_bytes, workers, name,
                    root_is_temporary) -> dict:
    """The imagefolder source: a stream descriptor (the ImageNet recipe) or a prepared payload."""
    if root is None:
        raise DataError("the imagefolder source needs root: a folder with train/<class>/... "
                        "and test/<class>/...")
    if recipe == "imagenet":
        return _imagenet_descriptor(Path(root))
    return _prepare_imagefolder(Path(root), size, max_cached_images, max_cached_bytes, workers,
                                name, root_is_temporary)


def _recorded_meta(meta: dict, name: str | None, source: str) -> dict:
    """The meta as the prepared file records it: its format, name (the caller's, else the
    source's default) and source, in the documented key order."""
    meta["format"] = FORMAT_VERSION
    meta["name"] = name or meta.pop("default_name", source)
    meta.pop("default_name", None)
    meta["source"] = source
    return ordered_meta(meta)


def always_cached(source: str, *, recipe: str = "cifar", root_is_temporary: bool = False) -> bool:
    """Whether `prepare_dataset` with these arguments always writes the cached uint8 tensor, never
    a stream descriptor; known before any image is read (the workflow plans guide tables by it,
    dgkd_core.experiment.table_plan).

    cifar10, cifar100 and synthetic are always cached. An imagefolder under recipe imagenet is
    always streamed; under recipe cifar it is streamed when it exceeds the cache limits, except
    where its root is temporary (an unpacked archive): the folder a stream descriptor would
    read is gone by train time, so a set too large to cache is refused instead."""
    if source != "imagefolder":
        return True
    return recipe == "cifar" and root_is_temporary


def _check_recipe(recipe: str, source: str, size, root_is_temporary: bool) -> None:
    if recipe not in RECIPES:
        raise DataError(f"recipe {recipe!r} is not one of {', '.join(RECIPES)}")
    if recipe != "imagenet":
        return
    if source != "imagefolder":
        raise DataError(f"recipe imagenet applies to the imagefolder source only, not {source!r}")
    if size is not None:
        raise DataError("recipe imagenet crops and resizes every image itself: remove resize")
    if root_is_temporary:
        raise DataError("recipe imagenet streams the images from their folder at train time: "
                        "unpack the archive yourself and set root")


def _parse_resize(resize: int | Sequence[int] | None) -> tuple[int, int] | None:
    if resize is None:
        return None
    if isinstance(resize, (int, np.integer)) and not isinstance(resize, bool):
        values = [int(resize)] * 2
    else:
        try:
            values = [int(v) for v in resize]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise DataError(f"resize must be an int or [H, W], got {resize!r}") from None
        if len(values) == 1:
            values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise DataError(f"resize must be a positive int or [H, W], got {resize!r}")
    return values[0], values[1]


# --------------------------------------------------------------------------- CIFAR (torchvision)


def _prepare_cifar(source: str, root: Path, download: bool) -> dict:
    import torchvision
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if source == "cifar10" else CIFAR100
    folder = root / _CIFAR_FOLDERS[source]
    place = (f"Put the extracted '{folder.name}' folder at {folder.resolve()}, or the archive "
             f"{cls.filename} (from {cls.url}) in {root.resolve()} with download on (torchvision "
             f"then only extracts it)")
    how = (f"{place}; or enable the download with `download: true` (`--download` on the command "
           f"line) on a machine with internet access.")
    if not download and not folder.is_dir():
        raise DataError(f"{source} is not at {folder.resolve()} and download is off. {how}")
    splits = {}
    for split in ("train", "test"):
        try:
            ds = cls(str(root), train=split == "train", download=download and split == "train")
        except RuntimeError as err:  # torchvision: files missing or md5 mismatch
            raise DataError(f"{source} files in {folder.resolve()} are missing or corrupted "
                            f"({err}). {how}") from err
        except (OSError, ValueError) as err:  # URLError is an OSError
            if download:
                raise DataError(f"downloading {source} into {root.resolve()} failed ({err}); "
                                f"this machine may be offline. {place}.") from err
            raise DataError(f"cannot read {source} from {folder.resolve()}: {err}. {how}") from err
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))
        splits[split] = (images, labels, list(ds.classes))
    (train_x, train_y, classes), (test_x, test_y, _) = splits["train"], splits["test"]
    detail = {"root": str(root.resolve()), "folder": folder.name, "download": bool(download),
              "torchvision": torchvision.__version__}
    return cached_payload(train_x, train_y, test_x, test_y, classes, detail, source)


# --------------------------------------------------------------------------- ImageFolder


def _list_imagefolder(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names and (path, label) samples of root/train and root/test via torchvision."""
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataError(f"imagefolder root {root} does not exist or is not a folder")
    samples: dict[str, list[tuple[str, int]]] = {}
    classes: dict[str, list[str]] = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"imagefolder root {root} has no '{split}' folder: expected "
                            f"{folder}/<class>/<image files> (ImageNet layout)")
        try:
            ds = ImageFolder(str(folder), allow_empty=False)
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"cannot list images in {folder}: {err}") from err
        classes[split] = list(ds.classes)
        samples[split] = [(p, int(t)) for p, t in ds.samples]
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataError(f"imagefolder {root}: train/ and test/ have different class folders "
                        f"(only in train: {only_train or 'none'}; only in test: "
                        f"{only_test or 'none'}); both splits need the same classes")
    return classes["train"], samples


def _prepare_imagefolder(root: Path, size: tuple[int, int] | None, max_images: int,
                         max_bytes: int, workers: int | None, name: str | None,
                         root_is_temporary: bool) -> dict:
    import torchvision

    classes, samples = _list_imagefolder(root)
    first = samples["train"][0][0]
    expected = size if size is not None else image_size(first)
    n_images = len(samples["train"]) + len(samples["test"])
    est_bytes = n_images * 3 * expected[0] * expected[1]
    detail = {"root": str(root.resolve()), "resize": list(size) if size else None,
              "torchvision": torchvision.__version__}
    if n_images > max_images or est_bytes > max_bytes:
        size_text = f"{n_images} images, about {est_bytes / 2**30:.2f} GiB as uint8"
        limits = f"{max_images} images, {max_bytes / 2**30:.2f} GiB"
        reason = f"{size_text} (limits: {limits})"
        if always_cached("imagefolder", root_is_temporary=root_is_temporary):
            # Refused here rather than keeping the unpacked folder for training: it would then
            # have to outlive every training job (on a cluster, on storage that every node
            # sees), which is what `root` already gives, with the user choosing where it lives.
            name = name or root.resolve().name
            raise DataError(f"dataset '{name}' is given as an archive, which is unpacked only for "
                            f"preparing, but it is too large to cache ({size_text}; limits: "
                            f"{limits}): unpack it yourself and set datasets.{name}.root, or "
                            f"raise options.max_cached_images/max_cached_bytes")
        return _stream_descriptor(root, classes, samples, size, expected, detail, reason=reason)
    tensors = {}
    for split in ("train", "test"):
        paths = [p for p, _ in samples[split]]
        tensors[split] = (decode_all(paths, size, expected, workers, first),
                          torch.tensor([t for _, t in samples[split]], dtype=torch.int64))
    (train_x, train_y), (test_x, test_y) = tensors["train"], tensors["test"]
    return cached_payload(train_x, train_y, test_x, test_y, classes, detail, root.resolve().name)


def _stream_descriptor(root, classes, samples, size, expected, detail, reason,
                       stats=None) -> dict:
    """Meta + labels for a dataset read from its files at train time (no image tensors).
    stats: (mean, std) to record; None: measured on up to 20000 train images."""
    paths = [p for p, _ in samples["train"]]
    step = max(1, len(paths) // _STAT_SAMPLE)
    sample = paths[::step][:_STAT_SAMPLE] if stats is None else []
    mean, std = stats or channel_stats(decode_all(sample, size, expected, None, paths[0]))
    labels = {split: torch.tensor([t for _, t in samples[split]], dtype=torch.int64)
              for split in ("train", "test")}
    meta = {
        "stream": True,
        "classes": list(classes),
        "num_classes": len(classes),
        "image_size": list(expected),
        "mean": mean,
        "std": std,
        "num_train": len(samples["train"]),
        "num_test": len(samples["test"]),
        "checksum": listing_checksum(samples, root),
        "root": str(root.resolve()),
        "resize": list(size) if size else None,
        "source_detail": {**detail, "stream_reason": reason, "stats_images": len(sample),
                          "checksum_of": "file listing (relative paths and labels)"},
        "default_name": root.resolve().name,
    }
    return {"train_images": None, "train_labels": labels["train"],
            "test_images": None, "test_labels": labels["test"], "meta": meta}


def _imagenet_descriptor(root: Path) -> dict:
    """A stream descriptor for the ImageNet recipe: images of any size, ImageNet's statistics
    (the recipe's, not measured: the images have no one size to measure them at)."""
    import torchvision

    classes, samples = _list_imagefolder(root)
    detail = {"root": str(root.resolve()), "torchvision": torchvision.__version__,
              "stats": "ImageNet's (torchvision)"}
    payload = _stream_descriptor(root, classes, samples, None, [224, 224], detail,
                                 reason="recipe imagenet", stats=(IMAGENET_MEAN, IMAGENET_STD))
    meta = payload["meta"]
    meta["recipe"] = "imagenet"
    # The same files under another recipe are other training data: another checksum.
    meta["checksum"] = hashlib.sha256(f"{meta['checksum']}\0recipe imagenet".encode()).hexdigest()
    return payload


# --------------------------------------------------------------------------- synthetic


def _prepare_synthetic(seed: int, n_train: int, n_test: int) -> dict:
    if n_train < 1 or n_test < 1:
        raise DataError(f"synthetic_train and synthetic_test must be >= 1, got {n_train}, {n_test}")
    train_x, train_y = make_synthetic(n_train, seed=seed, split="train")
    test_x, test_y = make_synthetic(n_test, seed=seed, split="test")
    # the generator's name and version as recorded in every prepared file, not a module path
    detail = {"seed": int(seed), "generator": "dgkd_core.data.make_synthetic v1",
              "train": int(n_train), "test": int(n_test)}
    return cached_payload(train_x, train_y, test_x, test_y, SYNTHETIC_CLASSES, detail,
                          "synthetic")
