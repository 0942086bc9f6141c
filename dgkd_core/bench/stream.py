"""`python -m dgkd_core bench --stream`: images/s of the ImageNet recipe's stream path
(data/recipes.py): decoding a JPEG and RandomResizedCrop(224) + flip, per image, with PIL
against torchvision's decode_jpeg, and, on CUDA, batched decode_jpeg on the GPU.

The images are written first: `images` JPEGs of ImageNet's typical size (500x375, quality 90,
smooth random content) in a temporary image folder, so the figure needs no dataset; a real
folder can be given instead (`folder`, ImageNet layout). Each figure is images per second of
one process (no DataLoader workers: a loader with k workers scales it by about min(k, cores)).
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dgkd_core.data.recipes import ImagenetFolder, imagenet_transform

__all__ = ["format_stream_table", "gpu_batch_decode_rate", "stream_bench", "write_jpegs"]


def write_jpegs(folder: Path, images: int, size: tuple[int, int] = (375, 500),
                seed: int = 0) -> Path:
    """`images` JPEGs [H, W] = `size` under folder/train/<class>/ (4 classes); returns folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(images):
        cls = folder / "train" / f"n{i % 4:08d}"
        cls.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(cls / f"{i}.JPEG",
                                                                   quality=90)
    return folder


def _cpu_rate(folder: str, decoder: str, count: int) -> float:
    """Images/s of ImagenetFolder's training item (decode + crop + flip) in this process."""
    from torchvision.datasets import ImageFolder

    listing = ImageFolder(folder, loader=str)
    n = len(listing)
    ds = ImagenetFolder(folder, True, listing.classes, n, decoder)
    for i in range(min(3, n)):  # warm-up: imports, first-call costs
        ds[(i, i)]
    start = time.perf_counter()
    for i in range(count):
        ds[(i % n, i)]
    return count / (time.perf_counter() - start)


def gpu_batch_decode_rate(folder: str, count: int, batch: int = 64) -> float | None:
    """Images/s of batched `decode_jpeg(..., device="cuda")` + per-image crop/flip on the GPU
    (file reads included); None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from torchvision.datasets import ImageFolder
    from torchvision.io import decode_jpeg, read_file

    paths = [p for p, _ in ImageFolder(folder, loader=str).samples]
    transform = imagenet_transform(True)

    def run(k: int) -> None:
        for lo in range(0, k, batch):
            data = [read_file(paths[i % len(paths)]) for i in range(lo, min(lo + batch, k))]
            images = decode_jpeg(data, device="cuda")
            torch.stack([transform(img) for img in images])
        torch.cuda.synchronize()

    run(batch)  # warm-up: nvJPEG's handles
    start = time.perf_counter()
    run(count)
    return count / (time.perf_counter() - start)


def stream_bench(folder: str | None = None, images: int = 128, count: int = 256) -> dict:
    """{"pil", "decode_jpeg", "gpu_decode_jpeg"}: images/s (gpu: None without CUDA), plus the
    machine, the images and the torch/torchvision versions."""
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder) if folder else write_jpegs(Path(tmp), images)
        train = str(root / "train")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one decoding worker's view: a loader runs k of them
        try:
            rates = {"pil": _cpu_rate(train, "pil", count),
                     "decode_jpeg": _cpu_rate(train, "torchvision", count)}
        finally:
            torch.set_num_threads(threads)
        rates["gpu_decode_jpeg"] = gpu_batch_decode_rate(train, count)
    return {"images_per_s": rates, "images": "given folder" if folder else
            f"{images} JPEGs 500x375 q90", "timed_images": count,
            "machine": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def format_stream_table(result: dict) -> str:
    rates = result["images_per_s"]
    rows = [f"{'decoder':<18} images/s (1 process, decode + RandomResizedCrop + flip)"]
    for name, rate in rates.items():
        rows.append(f"{name:<18} {'n/a (no CUDA)' if rate is None else f'{rate:.0f}'}")
    if rates["pil"]:
        rows.append(f"decode_jpeg / PIL: {rates['decode_jpeg'] / rates['pil']:.2f}x")
    return "\n".join(rows)
