"""The embedded synthetic task: procedurally drawn shapes, deterministic from a seed."""

from __future__ import annotations

import math
from functools import partial

import torch

from dgkd_core.data.prepared import DataError
from dgkd_core.data.seeds import derived_seed

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_SHAPES", "SYNTHETIC_SIZE", "make_synthetic"]


def _split_seed(seed: int, split: str) -> int:
    return derived_seed(f"dgkd-synthetic:{int(seed)}:{split}")


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
