"""The ImageNet recipe for image folders streamed from disk, chosen per dataset
(`options.recipe: imagenet` in the workflow config, `prepare_dataset(..., recipe="imagenet")`).

* training: RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3) and a horizontal flip;
* evaluation: Resize(256) (the shorter side) and CenterCrop(224);

both with `torchvision.transforms.v2` on uint8 image tensors, as torchvision's reference
scripts train ImageNet, then normalised with ImageNet's mean/std by the loader. Files are
decoded with `torchvision.io` (libjpeg-turbo's `decode_jpeg` for JPEGs, `decode_image` for
other formats), in `num_workers` DataLoader processes per rank; `decoder="pil"` decodes with PIL
instead (the benchmark compares the two).

The per-sample randomness is a pure function of the seed the loader draws for that sample from
(seed, epoch): each sample's transform runs under `torch.random.fork_rng` seeded with it, so an
epoch does not depend on the worker count, and resuming mid-epoch yields the same batches.

The "cifar" recipe is the default and stays where it was: cached tensors (data/loaders.py,
TensorLoader) or, for large folders of one image size, StreamLoader's PIL path with CIFAR's
pad-4 crop.
"""

from __future__ import annotations

import torch

from dgkd_core.data.prepared import DataError

__all__ = ["CROP_SIZE", "DECODERS", "IMAGENET_MEAN", "IMAGENET_STD", "RECIPES", "RESIZE_SIZE",
           "ImagenetFolder", "decode_file", "imagenet_transform"]

RECIPES = ("cifar", "imagenet")
DECODERS = ("torchvision", "pil")
CROP_SIZE, RESIZE_SIZE = 224, 256  # pixels: the crop trained and evaluated, the eval resize
# torchvision's ImageNet statistics (0-1 scale), which its reference scripts and weights use.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def decode_file(path: str, decoder: str = "torchvision") -> torch.Tensor:
    """The image file `path` as uint8 [3,H,W] RGB. torchvision: `torchvision.io.decode_jpeg`
    for a JPEG (`decode_image` for PNG and the rest), grey and CMYK converted to RGB; pil: PIL's
    decoder, converted to RGB. The two agree within 1 unit on JPEGs (tests/unit/data/test_imagenet_recipe.py)."""
    try:
        if decoder == "pil":
            import numpy as np
            from PIL import Image

            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

        data = read_file(path)
        if bytes(data[:3].tolist()) == b"\xff\xd8\xff":  # the JPEG signature
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        return decode_image(data, mode=ImageReadMode.RGB)
    except (OSError, RuntimeError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from err


def imagenet_transform(train: bool, crop: int = CROP_SIZE, resize: int = RESIZE_SIZE):
    """uint8 [3,H,W] -> uint8 [3,crop,crop]: RandomResizedCrop + flip (train), Resize of the
    shorter side to `resize` + CenterCrop (evaluation); bilinear with antialiasing."""
    from torchvision.transforms import v2

    if train:
        return v2.Compose([v2.RandomResizedCrop(crop, antialias=True),
                           v2.RandomHorizontalFlip()])
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])


class ImagenetFolder:
    """One split of an image folder under the ImageNet recipe: items are (index, seed) ->
    (uint8 [3,224,224], label). classes and num_samples: what the descriptor recorded."""

    def __init__(self, folder: str, train: bool, classes, num_samples: int,
                 decoder: str = "torchvision"):
        from torchvision.datasets import ImageFolder

        if decoder not in DECODERS:
            raise DataError(f"decoder {decoder!r} is not one of {', '.join(DECODERS)}")
        listing = ImageFolder(folder, loader=str)  # paths only; decoding happens here
        if list(listing.classes) != list(classes) or len(listing) != num_samples:
            raise DataError(f"{folder} changed since it was prepared (now {len(listing)} "
                            f"images, {len(listing.classes)} classes; prepared: {num_samples} "
                            f"images, {len(classes)} classes); prepare the dataset again")
        self.samples = listing.samples
        self.train, self.decoder = train, decoder
        self.transform = imagenet_transform(train)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        path, label = self.samples[index]
        image = decode_file(path, self.decoder)
        # The transform draws from the global RNG: a private copy of it, seeded per sample.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.transform(image)
        return image, label
