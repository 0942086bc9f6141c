"""Batch augmentation (random crop with zero padding + horizontal flip) and normalisation.

Every random number is drawn on the CPU, so a batch is the same on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgkd_core.data.prepared import DataError

# The cached data path's random crop: zero padding in pixels on each side (torchvision
# RandomCrop(H, padding=4), as in the released code).
CROP_PAD = 4

__all__ = ["CROP_PAD", "Normalizer", "augment_batch", "crop_flip", "draw_augment_params", "view_index",
           "view_params", "view_rows", "views_per_image"]


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


# The views of the crop and flip, numbered for guide tables (dgkd_core.guides.logit_tables).


def views_per_image(pad: int = 4) -> int:
    """How many distinct crop-and-flip views an image has: (2·pad+1)² offsets × 2 flips."""
    return (2 * pad + 1) ** 2 * 2


def view_index(dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4
               ) -> torch.Tensor:
    """int64 [n] view numbers in [0, views_per_image(pad)) of crop offsets dy, dx (int64 [n],
    in [0, 2·pad]) and flips (bool [n]), as `draw_augment_params` draws them."""
    return (dy.long() * (2 * pad + 1) + dx.long()) * 2 + flip.long()


def view_params(views: torch.Tensor, pad: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of `view_index`: (dy, dx, flip) of int64 view numbers [n]."""
    side = 2 * pad + 1
    offset = views // 2
    return offset // side, offset % side, (views % 2).bool()


def view_rows(indices: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              pad: int = 4) -> torch.Tensor:
    """int64 [n] rows of a flattened table [N·V, C]: image `indices` [n] under their views."""
    return indices.long() * views_per_image(pad) + view_index(dy, dx, flip, pad)


class Normalizer:
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
