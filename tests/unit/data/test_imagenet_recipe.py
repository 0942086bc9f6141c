"""The ImageNet recipe (data/recipes.py): v2 transforms, torchvision vs PIL decoding, the
descriptor, and a training through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgkd_core.data import DataError, StreamLoader, load_prepared, prepare_dataset
from dgkd_core.data.recipes import IMAGENET_MEAN, decode_file, imagenet_transform


def write_jpegs(folder, sizes, seed=0, quality=90):
    """Smooth random RGB JPEGs (and the arrays written), one class folder per 2 images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        cls = folder / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        path = cls / f"img{i}.jpg"
        img.save(path, quality=quality)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_imagenet")
    write_jpegs(root / "train", [(300, 400), (256, 256), (500, 333), (240, 320)] * 2)
    write_jpegs(root / "test", [(280, 300), (256, 400), (300, 260), (400, 400)], seed=1)
    return root


def test_decode_jpeg_and_pil_agree_within_one_unit(tmp_path):
    paths = write_jpegs(tmp_path, [(37, 53), (64, 64), (120, 90)])
    from PIL import Image

    Image.new("L", (31, 17), 128).save(tmp_path / "grey.jpg")  # grey JPEG -> RGB
    for path in [*paths, tmp_path / "grey.jpg"]:
        ours = decode_file(str(path), "torchvision")
        pil = decode_file(str(path), "pil")
        reference = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert ours.dtype == torch.uint8 and ours.shape == reference.shape
        assert torch.equal(pil, reference)
        assert (ours.int() - reference.int()).abs().max() <= 1, path


def test_decode_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        decode_file(str(bad))


def test_v2_transforms_shapes_values_and_seeding():
    image = torch.randint(0, 256, (3, 300, 451), dtype=torch.uint8)
    train, test = imagenet_transform(True), imagenet_transform(False)
    out = test(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    # Resize(256) of the shorter side then the central 224: an independent computation
    import torch.nn.functional as F

    h, w = 256, int(451 * 256 / 300)  # the longer side as torchvision computes it
    resized = F.interpolate(image[None].float(), size=(h, w), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    top, left = (h - 224) // 2, (w - 224) // 2
    expected = resized[:, top:top + 224, left:left + 224].round().clamp(0, 255)
    assert (out.float() - expected).abs().max() <= 1
    crops = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        crop = train(image)
        assert crop.shape == (3, 224, 224) and crop.dtype == torch.uint8
        assert int(crop.min()) >= 0 and int(crop.max()) <= 255
        crops.append(crop)
    assert torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], crops[2])


def test_imagenet_descriptor_and_stream_loader(imagenet_folder, tmp_path):
    out = tmp_path / "imagenet.pt"
    meta = prepare_dataset("imagefolder", out, root=imagenet_folder, recipe="imagenet")
    assert meta["stream"] and meta["recipe"] == "imagenet" and meta["image_size"] == [224, 224]
    assert meta["mean"] == IMAGENET_MEAN and meta["num_train"] == 8
    data = load_prepared(out)
    common = dict(device="cpu", seed=4, num_workers=0)
    loader = StreamLoader(data, "train", batch_size=4, **common)
    loader.set_epoch(0)
    batches = [x for x, _ in loader]
    assert [tuple(x.shape) for x in batches] == [(4, 3, 224, 224)] * 2
    # normalised with ImageNet's statistics: pixel 0..255 -> (p/255 - mean)/std
    low = (0 - max(IMAGENET_MEAN)) / 0.224 - 0.1
    assert all(float(x.min()) >= low and float(x.max()) <= (1 - 0.406) / 0.225 + 1e-4
               for x in batches)
    # the epoch is a function of (seed, epoch) alone: again, and with 2 workers
    again = StreamLoader(data, "train", batch_size=4, device="cpu", seed=4, num_workers=2)
    again.set_epoch(0)
    assert all(torch.equal(a, b) for a, (b, _) in zip(batches, again))
    other_epoch = StreamLoader(data, "train", batch_size=4, **common)
    other_epoch.set_epoch(1)
    assert not torch.equal(batches[0], next(iter(other_epoch))[0])
    test = StreamLoader(data, "test", batch_size=3, **common)
    assert [x.shape[0] for x, _ in test] == [3, 1]


def test_imagenet_recipe_refuses_what_it_cannot_do(imagenet_folder, tmp_path):
    with pytest.raises(DataError, match="imagefolder source only"):
        prepare_dataset("synthetic", tmp_path / "s.pt", recipe="imagenet")
    with pytest.raises(DataError, match="remove resize"):
        prepare_dataset("imagefolder", tmp_path / "r.pt", root=imagenet_folder, resize=64,
                        recipe="imagenet")
    with pytest.raises(DataError, match="not one of"):
        prepare_dataset("imagefolder", tmp_path / "r.pt", root=imagenet_folder, recipe="big")


def test_train_resnet18_through_the_recipe(imagenet_folder, tmp_path):
    from dgkd_core.training.trainer import train
    from helpers import run_config

    data = tmp_path / "imagenet.pt"
    prepare_dataset("imagefolder", data, root=imagenet_folder, recipe="imagenet")
    metrics = train(run_config(model="resnet18", epochs=1, batch_size=4, eval_batch_size=4,
                               data_workers=0), data, tmp_path / "run", progress=False)
    assert metrics["num_classes"] == 2 and 0 <= metrics["top1_last"] <= 100
    assert (tmp_path / "run" / "model.pt").exists()
