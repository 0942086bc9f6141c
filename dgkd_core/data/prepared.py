"""The prepared-file format: one ``torch.save`` of the four uint8/int64 tensors and their meta.

The layout and its meta keys are described in :mod:`dgkd_core.data`; :func:`load_prepared` reads
and checks a file, :class:`PreparedData` holds it in memory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dgkd_core.errors import DgkdError
from dgkd_core.io import UnreadableFile, load_tensor_file

__all__ = [
    "FORMAT_VERSION",
    "DataError",
    "PreparedData",
    "cached_payload",
    "channel_stats",
    "load_prepared",
    "ordered_meta",
    "tensor_checksum",
]

FORMAT_VERSION = 1
_TENSOR_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


class DataError(DgkdError, ValueError):
    """A dataset cannot be prepared or a prepared file cannot be used; the message says why."""


def ordered_meta(meta: dict) -> dict:
    """``meta`` with the documented keys first, in the documented order, then the rest."""
    first = ("format", "name", "source", "stream", "classes", "num_classes", "image_size", "mean",
             "std", "num_train", "num_test", "checksum")
    out = {k: meta[k] for k in first if k in meta}
    out.update({k: v for k, v in meta.items() if k not in out})
    return out


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


def cached_payload(train_x, train_y, test_x, test_y, classes, detail, default_name) -> dict:
    """The four tensors of a cached dataset and their meta (still holding ``default_name``)."""
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


@dataclass
class PreparedData:
    """A prepared file in memory. Images are uint8 [N,3,H,W] (None for a stream descriptor)."""

    train_images: torch.Tensor | None
    train_labels: torch.Tensor
    test_images: torch.Tensor | None
    test_labels: torch.Tensor
    meta: dict
    path: str | None = None
    # What runs holding this object share per device (a fused group's members hold one):
    # its tensors' device copies and the guide tables placed there, one copy each, not one
    # per member (key -> tensor or table; `on_device`, TrainerSetup._load_guide).
    device_copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def on_device(self, name: str, device: torch.device) -> torch.Tensor:
        """Tensor field `name` (train_images, train_labels, ...) on `device`, copied once."""
        key = (name, str(device))
        if key not in self.device_copies:
            self.device_copies[key] = getattr(self, name).to(device).contiguous()
        return self.device_copies[key]

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
        payload = load_tensor_file(path)
    except UnreadableFile as err:
        raise DataError(f"prepared data file {path} is unreadable: it {err.reason}; {redo}"
                        ) from None
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
