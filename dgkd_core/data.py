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
* ``synthetic``: an embedded, procedurally generated 10-class 32x32 RGB task (see
  :func:`make_synthetic`), deterministic from ``seed``; it needs no files and no network.

Training (:func:`make_loaders`) never touches PIL for cached data: :class:`TensorLoader` keeps the
uint8 tensor on the training device and builds each batch there (random crop with 4 px of zero
padding + horizontal flip, done in batch, then normalisation with the train split's mean/std).
Every random number is drawn on the CPU from a generator that is a pure function of
(seed, epoch), so batches are identical on CPU and GPU and resumable mid-epoch.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dgkd_core import io

__all__ = [
    "DATASET_SOURCES",
    "SYNTHETIC_SHAPES",
    "DataError",
    "PreparedData",
    "StreamLoader",
    "TensorLoader",
    "augment_batch",
    "channel_stats",
    "crop_flip",
    "draw_augment_params",
    "load_prepared",
    "make_loaders",
    "make_synthetic",
    "prepare_dataset",
    "tensor_checksum",
]

DATASET_SOURCES = ("cifar10", "cifar100", "imagefolder", "synthetic")
FORMAT_VERSION = 1

DEFAULT_MAX_CACHED_IMAGES = 2_000_000
DEFAULT_MAX_CACHED_BYTES = 8 * 2**30  # uint8 bytes of train + test images kept in one file

_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_TENSOR_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_STAT_SAMPLE = 20_000  # images used for a stream descriptor's mean/std
_DECODE_CHUNK = 2048  # files per decoding task


class DataError(ValueError):
    """A dataset cannot be prepared or a prepared file cannot be used; the message says why."""


# =========================================================================== preparing


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

    Same inputs give the same tensors and therefore the same ``meta["checksum"]``.
    """
    if source not in DATASET_SOURCES:
        raise DataError(f"unknown dataset source {source!r}; choose one of "
                        f"{', '.join(DATASET_SOURCES)}")
    out_path = Path(out_path)
    size = _parse_resize(resize)
    if size is not None and source != "imagefolder":
        raise DataError(f"resize applies to the imagefolder source only, not {source!r}")
    if source in _CIFAR_FOLDERS:
        root = Path(root) if root is not None else out_path.parent / "downloads"
        payload = _prepare_cifar(source, root, download)
    elif source == "imagefolder":
        if root is None:
            raise DataError("the imagefolder source needs root: a folder with train/<class>/... "
                            "and test/<class>/...")
        payload = _prepare_imagefolder(Path(root), size, max_cached_images, max_cached_bytes,
                                       workers)
    else:
        payload = _prepare_synthetic(seed, synthetic_train, synthetic_test)

    meta = payload["meta"]
    meta["format"] = FORMAT_VERSION
    meta["name"] = name or meta.pop("default_name", source)
    meta.pop("default_name", None)
    meta["source"] = source
    meta = _ordered_meta(meta)
    payload["meta"] = meta
    io.atomic_torch_save(payload, out_path)
    return meta


def _ordered_meta(meta: dict) -> dict:
    first = ("format", "name", "source", "stream", "classes", "num_classes", "image_size", "mean",
             "std", "num_train", "num_test", "checksum")
    out = {k: meta[k] for k in first if k in meta}
    out.update({k: v for k, v in meta.items() if k not in out})
    return out


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


def tensor_checksum(tensors: dict[str, torch.Tensor | None]) -> str:
    """sha256 over the named tensors: name, dtype, shape and raw bytes, in ``_TENSOR_KEYS`` order."""
    h = hashlib.sha256()
    for key in _TENSOR_KEYS:
        t = tensors.get(key)
        if t is None:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{list(t.shape)};".encode())
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    return h.hexdigest()


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale, population std) of uint8 images [N,3,H,W]."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"cannot compute statistics of images of shape {list(images.shape)}")
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        s1 += x.sum(dim=(0, 2, 3))
        s2 += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s1 / count
    var = (s2 / count - mean.square()).clamp_min(0.0)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in var.sqrt()]


def _cached_payload(train_x, train_y, test_x, test_y, classes, detail, default_name) -> dict:
    tensors = {"train_images": train_x.contiguous(), "train_labels": train_y.to(torch.int64),
               "test_images": test_x.contiguous(), "test_labels": test_y.to(torch.int64)}
    for split in ("train", "test"):
        if tensors[f"{split}_images"].shape[0] == 0:
            raise DataError(f"the {split} split of {default_name!r} is empty")
    mean, std = channel_stats(tensors["train_images"])
    meta = {
        "stream": False,
        "classes": list(classes),
        "num_classes": len(classes),
        "image_size": [int(train_x.shape[2]), int(train_x.shape[3])],
        "mean": mean,
        "std": std,
        "num_train": int(train_x.shape[0]),
        "num_test": int(test_x.shape[0]),
        "checksum": tensor_checksum(tensors),
        "source_detail": detail,
        "default_name": default_name,
    }
    return {**tensors, "meta": meta}


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
    return _cached_payload(train_x, train_y, test_x, test_y, classes, detail, source)


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


def _open_rgb(path: str, size: tuple[int, int] | None, expected: tuple[int, int] | None = None,
              reference: str | None = None):
    """PIL RGB image of ``path``, resized to ``size`` [H, W]; else checks ``expected`` [H, W]
    (the size of the file ``reference``) if given."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except OSError as err:
        raise DataError(f"cannot decode image {path}: {err}") from err
    if size is not None:
        if (img.height, img.width) != size:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
    elif expected is not None and (img.height, img.width) != expected:
        raise DataError(_size_error(path, (img.height, img.width), expected, reference))
    return img


def _size_error(path: str, got: tuple[int, int], expected: tuple[int, int],
                reference: str | None) -> str:
    ref = f" like {reference}" if reference else ""
    return (f"image {path} is {got[0]}x{got[1]} (HxW) but the dataset's images are "
            f"{expected[0]}x{expected[1]}{ref}; images must share one size: set resize (e.g. "
            f"`resize: [{expected[0]}, {expected[1]}]`, `--resize {expected[0]} {expected[1]}`) "
            f"to resize every image when preparing")


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except OSError as err:
        raise DataError(f"cannot decode image {path}: {err}") from err


def _decode_chunk(paths: list[str], size: tuple[int, int] | None, expected: tuple[int, int],
                  reference: str | None = None) -> np.ndarray | str:
    """uint8 [k,H,W,3] of ``paths``; an error message string instead when one fails."""
    out = np.empty((len(paths), expected[0], expected[1], 3), dtype=np.uint8)
    try:
        for i, p in enumerate(paths):
            out[i] = np.asarray(_open_rgb(p, size, expected, reference))
    except DataError as err:
        return str(err)
    return out


def _decode_all(paths: list[str], size: tuple[int, int] | None, expected: tuple[int, int],
                workers: int | None, reference: str | None = None) -> torch.Tensor:
    """uint8 [N,3,H,W] of the files, decoded with PIL in a process pool when there are many."""
    import multiprocessing as mp

    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    chunk = _DECODE_CHUNK
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    if workers > 1 and len(chunks) > 1 and "fork" in mp.get_all_start_methods():
        # fork: workers only run PIL/numpy, and start without re-importing torch
        with mp.get_context("fork").Pool(min(workers, len(chunks))) as pool:
            parts = pool.map(partial(_decode_chunk, size=size, expected=expected,
                                     reference=reference), chunks)
    else:
        parts = [_decode_chunk(c, size, expected, reference) for c in chunks]
    for part in parts:
        if isinstance(part, str):
            raise DataError(part)
    arr = np.concatenate(parts) if parts else np.empty((0, expected[0], expected[1], 3), np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _listing_checksum(samples: dict[str, list[tuple[str, int]]], root: Path) -> str:
    h = hashlib.sha256()
    for split in ("train", "test"):
        for path, label in samples[split]:
            h.update(f"{split}\0{os.path.relpath(path, root)}\0{label}\n".encode())
    return h.hexdigest()


def _prepare_imagefolder(root: Path, size: tuple[int, int] | None, max_images: int,
                         max_bytes: int, workers: int | None) -> dict:
    import torchvision

    classes, samples = _list_imagefolder(root)
    first = samples["train"][0][0]
    expected = size if size is not None else _image_size(first)
    n_images = len(samples["train"]) + len(samples["test"])
    est_bytes = n_images * 3 * expected[0] * expected[1]
    detail = {"root": str(root.resolve()), "resize": list(size) if size else None,
              "torchvision": torchvision.__version__}
    if n_images > max_images or est_bytes > max_bytes:
        return _stream_descriptor(root, classes, samples, size, expected, detail,
                                  reason=f"{n_images} images, about {est_bytes / 2**30:.2f} GiB "
                                         f"as uint8 (limits: {max_images} images, "
                                         f"{max_bytes / 2**30:.2f} GiB)")
    tensors = {}
    for split in ("train", "test"):
        paths = [p for p, _ in samples[split]]
        tensors[split] = (_decode_all(paths, size, expected, workers, first),
                          torch.tensor([t for _, t in samples[split]], dtype=torch.int64))
    (train_x, train_y), (test_x, test_y) = tensors["train"], tensors["test"]
    return _cached_payload(train_x, train_y, test_x, test_y, classes, detail, root.resolve().name)


def _stream_descriptor(root, classes, samples, size, expected, detail, reason) -> dict:
    """Meta + labels for a dataset read from its files at train time (no image tensors)."""
    paths = [p for p, _ in samples["train"]]
    step = max(1, len(paths) // _STAT_SAMPLE)
    sample = paths[::step][:_STAT_SAMPLE]
    mean, std = channel_stats(_decode_all(sample, size, expected, None, paths[0]))
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
        "checksum": _listing_checksum(samples, root),
        "root": str(root.resolve()),
        "resize": list(size) if size else None,
        "source_detail": {**detail, "stream_reason": reason, "stats_images": len(sample),
                          "checksum_of": "file listing (relative paths and labels)"},
        "default_name": root.resolve().name,
    }
    return {"train_images": None, "train_labels": labels["train"],
            "test_images": None, "test_labels": labels["test"], "meta": meta}


# --------------------------------------------------------------------------- synthetic


def _prepare_synthetic(seed: int, n_train: int, n_test: int) -> dict:
    if n_train < 1 or n_test < 1:
        raise DataError(f"synthetic_train and synthetic_test must be >= 1, got {n_train}, {n_test}")
    train_x, train_y = make_synthetic(n_train, seed=seed, split="train")
    test_x, test_y = make_synthetic(n_test, seed=seed, split="test")
    detail = {"seed": int(seed), "generator": "dgkd_core.data.make_synthetic v1",
              "train": int(n_train), "test": int(n_test)}
    return _cached_payload(train_x, train_y, test_x, test_y, SYNTHETIC_CLASSES, detail,
                           "synthetic")


def _derived_seed(label: str) -> int:
    """A 63-bit seed that is a pure function of `label` (sha256, first 8 bytes)."""
    digest = hashlib.sha256(label.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _split_seed(seed: int, split: str) -> int:
    return _derived_seed(f"dgkd-synthetic:{int(seed)}:{split}")


# Synthetic task: 10 solid shapes, one per class; each image holds one large object of its class
# at a random position, rotation, scale and colour, on a random colour-gradient background with
# two small distractor shapes of random kinds and pixel noise. Colour carries no class
# information, so a model has to recognise outline geometry anywhere in the image (translation
# and rotation invariance, corners vs curves, holes vs solids): shallow or narrow models learn it
# slowly, deeper ones clearly better. Pixel arrays only see +, -, *, comparisons and
# torch.where (per-sample trig is computed in float64 and rounded to float32), and the random
# numbers come from torch.rand/randint/randperm on a CPU generator (no randn, whose vectorised
# paths differ), so the bytes should not depend on the CPU's vector instruction set; the
# checksum in meta is what pins a prepared file.
SYNTHETIC_SHAPES = ("disc", "square", "triangle", "plus", "bar", "half-disc", "ring", "frame",
                    "triangle-frame", "dumbbell")
SYNTHETIC_CLASSES = SYNTHETIC_SHAPES
SYNTHETIC_SIZE = 32
_TRI = [(math.cos(2 * math.pi * k / 3 + math.pi / 2), math.sin(2 * math.pi * k / 3 + math.pi / 2))
        for k in range(3)]


def _triangle(u: torch.Tensor, v: torch.Tensor, r: torch.Tensor, inner: float) -> torch.Tensor:
    m = None
    for c, s in _TRI:
        side = (u * c + v * s) < r * inner
        m = side if m is None else m & side
    return m


def _shape_mask(kind: int, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Bool mask of shape ``kind`` in object coordinates u, v [k,H,W] (pixels), radius r [k,1,1]."""
    r2 = r * r
    d2 = u * u + v * v
    au, av = u.abs(), v.abs()
    box = torch.maximum(au, av)
    name = SYNTHETIC_SHAPES[kind]
    if name == "disc":
        return d2 < r2
    if name == "square":
        return box < r * 0.8
    if name == "triangle":
        return _triangle(u, v, r, 0.5)
    if name == "plus":
        return ((au < r * 0.3) & (av < r)) | ((av < r * 0.3) & (au < r))
    if name == "bar":
        return (au < r) & (av < r * 0.35)
    if name == "half-disc":
        return (d2 < r2) & (v > 0)
    if name == "ring":
        return (d2 < r2) & (d2 > r2 * 0.3025)  # inner radius 0.55 r
    if name == "frame":
        return (box < r * 0.8) & (box > r * 0.45)
    if name == "triangle-frame":
        return _triangle(u, v, r, 0.5) & ~_triangle(u, v, r, 0.2)
    # dumbbell: two discs of radius 0.42 r, centres at +-0.55 r along u
    a, b = u - r * 0.55, u + r * 0.55
    vv, rr = v * v, r2 * 0.1764
    return (a * a + vv < rr) | (b * b + vv < rr)


def _draw_objects(img: torch.Tensor, kinds: torch.Tensor, g: torch.Generator, *, centre: tuple,
                  radius: tuple, bg_lum: torch.Tensor, contrast: float,
                  window: int | None = None) -> None:
    """Paint one solid shape per image into img [n,3,H,W] (in place), kinds int64 [n].

    window: side of a square window around each centre that holds the whole shape (only that
    window is computed); None computes the whole image.
    """
    n, _, h, w = img.shape
    cx = _uniform(g, n, *centre)
    cy = _uniform(g, n, *centre)
    r = _uniform(g, n, *radius)
    rot = _uniform(g, n, 0.0, 2 * math.pi)
    cos, sin = torch.cos(rot), torch.sin(rot)
    colour = torch.rand(n, 3, generator=g, dtype=torch.float64)
    # push the colour's luminance away from the background's so the object is visible
    sign = torch.where(colour.mean(1) >= bg_lum, 1.0, -1.0)
    colour = (colour + sign[:, None] * contrast).clamp(0.0, 1.0)
    f32 = partial(torch.as_tensor, dtype=torch.float32)
    if window is None:
        oy = ox = torch.zeros(n, dtype=torch.int64)
        wh, ww = h, w
    else:
        oy = (cy.floor().long() - window // 2).clamp(0, h - window)
        ox = (cx.floor().long() - window // 2).clamp(0, w - window)
        wh = ww = window
    canvas = img.permute(0, 2, 3, 1)  # view [n,H,W,3]
    for kind in range(len(SYNTHETIC_SHAPES)):
        idx = (kinds == kind).nonzero().flatten()
        if idx.numel() == 0:
            continue
        rows = oy[idx, None] + torch.arange(wh)  # [k,wh] pixel indices
        cols = ox[idx, None] + torch.arange(ww)
        dy = (rows.to(torch.float32) + 0.5)[:, :, None] - f32(cy[idx])[:, None, None]  # [k,wh,1]
        dx = (cols.to(torch.float32) + 0.5)[:, None, :] - f32(cx[idx])[:, None, None]  # [k,1,ww]
        c, s = f32(cos[idx])[:, None, None], f32(sin[idx])[:, None, None]
        u = c * dx + s * dy
        v = c * dy - s * dx
        mask = _shape_mask(kind, u, v, f32(r[idx])[:, None, None])
        col = f32(colour[idx])
        if window is None:
            img[idx] = torch.where(mask[:, None], col[:, :, None, None], img[idx])
        else:
            where = (idx[:, None, None], rows[:, :, None], cols[:, None, :])
            canvas[where] = torch.where(mask[..., None], col[:, None, None, :], canvas[where])


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def make_synthetic(n: int, *, seed: int = 0, split: str = "train", noise: float = 0.1,
                   distractors: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural 10-class shape task: (uint8 images [n,3,32,32], int64 labels [n]).

    Class k is ``SYNTHETIC_SHAPES[k]``; classes are balanced (each appears n//10 or n//10 + 1
    times, in random order). Deterministic in (n, seed, split, noise, distractors); "train" and
    "test" use independent random streams. About 1-2 s for 10,000 images on one CPU core.
    """
    if n < 0:
        raise DataError(f"number of synthetic images must be >= 0, got {n}")
    g = torch.Generator().manual_seed(_split_seed(seed, split))
    c = len(SYNTHETIC_SHAPES)
    size = SYNTHETIC_SIZE
    labels = (torch.arange(n) % c)[torch.randperm(n, generator=g)]
    # background: linear gradient between two random colours in a random direction
    c0 = torch.rand(n, 3, generator=g, dtype=torch.float64)
    c1 = torch.rand(n, 3, generator=g, dtype=torch.float64)
    ang = _uniform(g, n, 0.0, 2 * math.pi)
    ax = torch.cos(ang).float()[:, None, None, None] / size
    ay = torch.sin(ang).float()[:, None, None, None] / size
    pos = torch.arange(size, dtype=torch.float32) + (0.5 - size / 2)
    ramp = ax * pos[None, None, None, :] + ay * pos[None, None, :, None] + 0.5  # [n,1,H,W]
    c0f, dc = c0.float()[:, :, None, None], (c1 - c0).float()[:, :, None, None]
    img = c0f + dc * ramp  # [n,3,H,W]
    bg_lum = ((c0 + c1) / 2).mean(1)  # mean over pixels of a symmetric ramp, exactly
    for _ in range(distractors):
        kinds = torch.randint(0, c, (n,), generator=g)
        _draw_objects(img, kinds, g, centre=(2.0, size - 2.0), radius=(2.0, 3.5), bg_lum=bg_lum,
                      contrast=0.3, window=11)  # the largest distractor spans < 9 px
    _draw_objects(img, labels, g, centre=(11.0, size - 11.0), radius=(8.0, 12.0), bg_lum=bg_lum,
                  contrast=0.35)
    if noise:
        # triangular noise from two uniforms (exact on every CPU, unlike randn's vector paths)
        u = torch.rand(2, n, 3, size, size, generator=g)
        img = img + (u[0] - u[1]) * noise
    images = (img.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    return images, labels


# =========================================================================== loading


@dataclass
class PreparedData:
    """A prepared file in memory. Images are uint8 [N,3,H,W] (None for a stream descriptor)."""

    train_images: torch.Tensor | None
    train_labels: torch.Tensor
    test_images: torch.Tensor | None
    test_labels: torch.Tensor
    meta: dict
    path: str | None = None

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def mean(self) -> list[float]:
        """Per-channel mean of the train split, 0-1 scale."""
        return [float(v) for v in self.meta["mean"]]

    @property
    def std(self) -> list[float]:
        """Per-channel standard deviation of the train split, 0-1 scale."""
        return [float(v) for v in self.meta["std"]]

    @property
    def is_stream(self) -> bool:
        return bool(self.meta.get("stream", False))


def load_prepared(path: str | os.PathLike, *, verify: bool = True) -> PreparedData:
    """Read a file written by :func:`prepare_dataset` (``torch.load(weights_only=True)``, on CPU).

    verify: recompute the sha256 of the tensors and compare it with ``meta["checksum"]``.
    Raises :class:`DataError` naming the file when it is missing, truncated, corrupt or not a
    prepared data file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared data file {path} does not exist; create it with "
                        f"`python -m dgkd_core prepare-data --out {path} ...`")
    redo = f"delete {path} and prepare it again (python -m dgkd_core prepare-data)"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...: several exception types
        raise DataError(f"prepared data file {path} is unreadable (truncated or corrupt?): "
                        f"{type(err).__name__}: {err}; {redo}") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict):
        raise DataError(f"{path} is not a prepared data file (no meta dict); {redo}")
    meta = payload["meta"]
    missing = [k for k in ("classes", "num_classes", "mean", "std", "checksum") if k not in meta]
    if missing:
        raise DataError(f"prepared data file {path} lacks meta keys {missing}; {redo}")
    stream = bool(meta.get("stream", False))
    for key in _TENSOR_KEYS:
        t = payload.get(key)
        if key.endswith("images") and stream:
            continue
        if not isinstance(t, torch.Tensor):
            raise DataError(f"prepared data file {path} lacks the tensor {key!r}; {redo}")
        want = torch.uint8 if key.endswith("images") else torch.int64
        ndim = 4 if key.endswith("images") else 1
        if t.dtype != want or t.ndim != ndim:
            raise DataError(f"prepared data file {path}: {key} is {t.dtype} {list(t.shape)}, "
                            f"expected {want} with {ndim} dims; {redo}")
    for split in ("train", "test"):
        labels, images = payload[f"{split}_labels"], payload.get(f"{split}_images")
        if images is not None and images.shape[0] != labels.shape[0]:
            raise DataError(f"prepared data file {path}: {split} has {images.shape[0]} images "
                            f"but {labels.shape[0]} labels; {redo}")
        n_cls = int(meta["num_classes"])
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_cls):
            raise DataError(f"prepared data file {path}: {split} labels outside "
                            f"[0, {meta['num_classes']}); {redo}")
    if verify and not stream and tensor_checksum(payload) != meta["checksum"]:
        raise DataError(f"prepared data file {path} fails its checksum (the tensors changed "
                        f"after it was written); {redo}")
    return PreparedData(payload.get("train_images"), payload["train_labels"],
                        payload.get("test_images"), payload["test_labels"], meta, str(path))


# =========================================================================== loaders


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" (or None) -> cuda where a CUDA device is visible, else cpu; anything else as is."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, stream)."""
    return _derived_seed(f"dgkd-loader:{stream}:{int(seed)}:{int(epoch)}")


def draw_augment_params(n: int, generator: torch.Generator, pad: int = 4
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets and flips drawn on the CPU from ``generator``.

    Returns (dy, dx, flip): int64 [n] offsets in [0, 2*pad] into the zero-padded image (``pad``
    means no shift) and bool [n] horizontal flips (probability 1/2).
    """
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return offsets[0], offsets[1], flip


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              pad: int = 4) -> torch.Tensor:
    """Batch crop + flip, vectorised: uint8 (or any dtype) [B,C,H,W] -> same shape and dtype.

    Sample b becomes the HxW window at (dy[b], dx[b]) of the image zero-padded by ``pad`` on every
    side (torchvision ``RandomCrop(H, padding=pad)``), mirrored left-right where ``flip[b]``.
    ``dy``/``dx``/``flip`` may live on any device; they are moved to the images' device.
    """
    b, c, h, w = images.shape
    dev = images.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images.contiguous()
    wp = w + 2 * pad
    rows = dy[:, None] + torch.arange(h, device=dev)  # [B,H] rows of the padded image
    col = torch.arange(w, device=dev)
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - col, col)  # [B,W]
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def augment_batch(images_uint8: torch.Tensor, generator: torch.Generator,
                  pad: int = 4) -> torch.Tensor:
    """Random crop (``pad`` px of zeros, then the original size) + horizontal flip of each sample.

    images_uint8: [B,3,H,W] uint8 on any device; generator: a CPU ``torch.Generator`` (numbers are
    drawn on the CPU, so the result does not depend on the device). Returns uint8 [B,3,H,W].
    """
    dy, dx, flip = draw_augment_params(images_uint8.shape[0], generator, pad)
    return crop_flip(images_uint8, dy, dx, flip, pad)


class _Normalizer:
    """uint8 [B,3,H,W] -> (x/255 - mean)/std in ``dtype``, optionally channels_last."""

    def __init__(self, mean, std, device, dtype, channels_last):
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1) * 255.0
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1) * 255.0
        if bool((std_t <= 0).any()):
            raise DataError(f"std must be positive, got {list(std)}")
        self.shift = mean_t.to(device)
        self.scale = (1.0 / std_t).to(device)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = (images_uint8.to(torch.float32) - self.shift) * self.scale
        return x.to(dtype=self.dtype, memory_format=self.memory_format)


class _EpochState:
    """Shared bookkeeping: which epoch, which batch comes next, and the epoch generator state."""

    def __init__(self, num_samples: int, batch_size: int, generator_seed: int, drop_last: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.generator_seed = int(generator_seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.next_batch = 0
        self.gen_state: torch.Tensor | None = None  # None: derive from (seed, epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.next_batch, self.gen_state = int(epoch), 0, None

    def generator(self, stream: str) -> torch.Generator:
        g = torch.Generator()
        if self.gen_state is not None:
            g.set_state(self.gen_state)
        else:
            g.manual_seed(epoch_seed(self.generator_seed, self.epoch, stream))
        return g

    def state_dict(self, stream: str) -> dict:
        return {"epoch": self.epoch, "next_batch": self.next_batch,
                "generator_state": self.generator(stream).get_state(),
                "generator_seed": self.generator_seed, "num_samples": self.num_samples,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict, owner: str) -> None:
        for key in ("num_samples", "batch_size", "generator_seed"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"{owner} state has {key}={state[key]}, but this loader has "
                                 f"{getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self.next_batch = int(state["next_batch"])
        gs = state.get("generator_state")
        self.gen_state = gs.clone() if isinstance(gs, torch.Tensor) else None

    def finish_epoch(self) -> None:
        """Called when an epoch has been fully yielded: the next iteration starts the next epoch."""
        self.set_epoch(self.epoch + 1)


class _EpochLoader:
    """What both loaders share: epoch bookkeeping in ``self._state`` (an :class:`_EpochState`)."""

    _STREAM = ""
    _state: _EpochState

    @property
    def batch_size(self) -> int:
        return self._state.batch_size

    @property
    def epoch(self) -> int:
        return self._state.epoch

    @property
    def drop_last(self) -> bool:
        return self._state.drop_last

    def __len__(self) -> int:
        return len(self._state)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch at the next iteration."""
        self._state.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where iteration stands: {"epoch", "next_batch", "generator_state", ...} (CPU values)."""
        return self._state.state_dict(self._STREAM)

    def load_state_dict(self, state: dict) -> None:
        """Resume at batch ``state["next_batch"]`` of ``state["epoch"]`` at the next iteration."""
        self._state.load_state_dict(state, type(self).__name__)


class TensorLoader(_EpochLoader):
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
                 dtype: torch.dtype = torch.float32, pad: int = 4) -> None:
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise DataError(f"images must be uint8 [N,C,H,W], got {images_uint8.dtype} "
                            f"{list(images_uint8.shape)}")
        if labels.shape != (images_uint8.shape[0],):
            raise DataError(f"labels must be [{images_uint8.shape[0]}], got {list(labels.shape)}")
        self.device = resolve_device(device)
        self.train = bool(train)
        self.augment = bool(augment) and self.train
        self.pad = int(pad)
        self.images = images_uint8.to(self.device).contiguous()
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.normalize = _Normalizer(mean, std, self.device, dtype, channels_last)
        drop = self.train if drop_last is None else bool(drop_last)
        self._state = _EpochState(images_uint8.shape[0], int(batch_size), generator_seed, drop)
        self._plan: tuple[tuple[int, int], Any] | None = None  # ((epoch, id), tensors)

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
            if aug is not None:
                aug = tuple(t.to(self.device, non_blocking=True) for t in aug)
            plan = (order.to(self.device, non_blocking=True), aug)
        self._plan = (self._state.epoch, plan)
        return plan

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        st = self._state
        plan = self._epoch_plan()
        n, bs, total = st.num_samples, st.batch_size, len(st)
        while st.next_batch < total:
            k = st.next_batch
            lo, hi = k * bs, min((k + 1) * bs, n)
            if plan is None:
                images, labels = self.images[lo:hi], self.labels[lo:hi]
            else:
                order, aug = plan
                idx = order[lo:hi]
                images, labels = self.images[idx], self.labels[idx]
                if aug is not None:
                    images = crop_flip(images, aug[0][lo:hi], aug[1][lo:hi], aug[2][lo:hi],
                                       self.pad)
            st.next_batch = k + 1
            yield self.normalize(images), labels
        st.finish_epoch()
        self._plan = None


# --------------------------------------------------------------------------- stream


def _stream_load(path: str, size: tuple[int, int] | None, expected: tuple[int, int]):
    return _open_rgb(path, size, expected, "the first train image when it was prepared")


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


class _ResumableSampler:
    """Yields (index, per-sample seed) for positions [start, N) of an epoch's order."""

    def __init__(self, order: torch.Tensor, seeds: torch.Tensor, start: int):
        self.items = list(zip(order[start:].tolist(), seeds[start:].tolist()))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


class StreamLoader(_EpochLoader):
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
    same batches as an uninterrupted run. This path is for datasets too large for the tensor
    cache; it is correct but slow (PIL per image, every epoch).
    """

    _STREAM = "stream"

    def __init__(self, prepared: PreparedData, split: str, *, batch_size: int,
                 device: str | torch.device | None, seed: int = 0, train: bool | None = None,
                 augment: bool = True, drop_last: bool | None = None, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, num_workers: int | None = None,
                 pad: int = 4) -> None:
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
        self.dataset = _StreamDataset(os.path.join(meta["root"], split), size, expected,
                                      self.augment, int(pad), meta["classes"], len(labels))
        self.normalize = _Normalizer(meta["mean"], meta["std"], self.device, dtype, channels_last)
        self.num_workers = (min(4, os.cpu_count() or 1) if num_workers is None else num_workers)
        drop = self.train if drop_last is None else bool(drop_last)
        self._state = _EpochState(len(self.dataset), int(batch_size), seed, drop)

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
            self.dataset, batch_size=bs, drop_last=False, num_workers=self.num_workers,
            sampler=_ResumableSampler(order, seeds, st.next_batch * bs),
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
                 dtype: torch.dtype = torch.float32, num_workers: int | None = None):
    """(train_loader, test_loader) for a prepared file or :class:`PreparedData`.

    Cached data gives :class:`TensorLoader`s (train: shuffled, ``augment`` crop/flip, drop_last;
    test: fixed order, everything), a stream descriptor :class:`StreamLoader`s. The train loader's
    randomness is seeded by ``seed``; both yield normalised float [B,3,H,W] and int64 [B] on
    ``device``. ``num_workers`` applies to stream loaders only.
    """
    data = prepared_or_path
    if not isinstance(data, PreparedData):
        data = load_prepared(data)
    if data.is_stream:
        common = dict(device=device, seed=seed, channels_last=channels_last, dtype=dtype,
                      num_workers=num_workers)
        return (StreamLoader(data, "train", batch_size=batch_size, augment=augment, **common),
                StreamLoader(data, "test", batch_size=eval_batch_size, augment=False, **common))
    common = dict(mean=data.mean, std=data.std, device=device, channels_last=channels_last,
                  dtype=dtype)
    train = TensorLoader(data.train_images, data.train_labels, batch_size=batch_size, train=True,
                         augment=augment, generator_seed=seed, **common)
    test = TensorLoader(data.test_images, data.test_labels, batch_size=eval_batch_size,
                        train=False, augment=False, generator_seed=seed, **common)
    return train, test
