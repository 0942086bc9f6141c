"""Decoding ImageFolder images with PIL: one file, checked or resized to one size, or many in a
process pool; and the checksum that pins a stream descriptor's file listing."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dgkd_core.data.prepared import DataError

__all__ = ["DECODE_CHUNK", "decode_all", "image_size", "listing_checksum", "open_rgb"]

DECODE_CHUNK = 2048  # files per decoding task


def open_rgb(path: str, size: tuple[int, int] | None, expected: tuple[int, int] | None = None,
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


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of the image file ``path``, read from its header."""
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
            out[i] = np.asarray(open_rgb(p, size, expected, reference))
    except DataError as err:
        return str(err)
    return out


def decode_all(paths: list[str], size: tuple[int, int] | None, expected: tuple[int, int],
               workers: int | None, reference: str | None = None) -> torch.Tensor:
    """uint8 [N,3,H,W] of the files, decoded with PIL in a process pool when there are many."""
    import multiprocessing as mp

    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    chunk = DECODE_CHUNK
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


def listing_checksum(samples: dict[str, list[tuple[str, int]]], root: Path) -> str:
    """sha256 of the train/test listing (paths relative to ``root``, labels), in listing order."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        for path, label in samples[split]:
            h.update(f"{split}\0{os.path.relpath(path, root)}\0{label}\n".encode())
    return h.hexdigest()
