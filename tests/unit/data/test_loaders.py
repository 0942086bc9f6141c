"""dgkd_core.data: batch crop/flip augmentation and the loaders (TensorLoader, make_loaders).

All tests run on the CPU on tiny data the tests make themselves.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgkd_core.data import (
    TensorLoader,
    augment_batch,
    crop_flip,
    make_loaders,
    prepare_dataset,
)


# --------------------------------------------------------------------------- augmentation


def _windows(image: torch.Tensor, pad: int = 4) -> list[torch.Tensor]:
    """All 32x32 windows of the zero-padded image and their mirrors (81 offsets x 2 flips)."""
    padded = F.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            win = padded[:, dy:dy + h, dx:dx + w]
            out += [win, win.flip(-1)]
    return out


def test_augment_batch_is_a_padded_window_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)  # no zeros
    out = augment_batch(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for b in range(images.shape[0]):
        assert any(torch.equal(out[b], win) for win in _windows(images[b])), f"sample {b}"


def test_augment_batch_varies_and_is_seeded():
    image = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(2))
    batch = image.expand(128, -1, -1, -1).contiguous()
    out = augment_batch(batch, torch.Generator().manual_seed(3))
    distinct = {bytes(o.numpy().tobytes()) for o in out}
    assert len(distinct) > 40  # 162 possible results
    flipped = sum(any(torch.equal(o, w) for w in _windows(image[0])[1::2]) for o in out[:32])
    assert 4 <= flipped <= 28
    again = augment_batch(batch, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_crop_flip_matches_torchvision_functional():
    import torchvision.transforms.functional as TF

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(4))
    dy = torch.tensor([0, 4, 8, 2, 7])
    dx = torch.tensor([8, 4, 0, 5, 1])
    flip = torch.tensor([False, False, True, True, False])
    out = crop_flip(images, dy, dx, flip)
    for b in range(5):
        ref = TF.crop(TF.pad(images[b], [4], fill=0), int(dy[b]), int(dx[b]), 32, 32)
        if flip[b]:
            ref = TF.hflip(ref)
        assert torch.equal(out[b], ref)
    assert torch.equal(crop_flip(images, torch.full((5,), 4), torch.full((5,), 4),
                                 torch.zeros(5, dtype=torch.bool)), images)


# --------------------------------------------------------------------------- TensorLoader


def _loader(n=50, batch=8, seed=0, **kw):
    g = torch.Generator().manual_seed(9)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n)  # label = sample id, to trace samples through batches
    args = dict(batch_size=batch, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], train=True,
                augment=True, device="cpu", generator_seed=seed)
    args.update(kw)
    return TensorLoader(images, labels, **args), images


def _epoch(loader, e=None):
    if e is not None:
        loader.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
                                    for p, q in zip(a, b))


def test_loader_epoch_is_a_function_of_seed_and_epoch():
    a, _ = _loader()
    b, _ = _loader()
    assert len(a) == 50 // 8  # drop_last for train by default
    e3 = _epoch(a, 3)
    _epoch(b, 0)
    assert _same(e3, _epoch(b, 3))
    assert not _same(e3, _epoch(a, 4))
    c, _ = _loader(seed=1)
    assert not _same(e3, _epoch(c, 3))
    # without set_epoch a finished epoch advances to the next one
    a.set_epoch(3)
    _epoch(a)
    assert _same(_epoch(a), _epoch(b, 4))


def test_loader_mid_epoch_resume():
    a, _ = _loader()
    full = _epoch(a, 2)
    b, _ = _loader()
    b.set_epoch(2)
    it = iter(b)
    head = [next(it) for _ in range(3)]
    state = b.state_dict()
    assert state["epoch"] == 2 and state["next_batch"] == 3
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    c, _ = _loader()
    c.load_state_dict(state)
    tail = _epoch(c)
    assert _same(full[:3], [(x.clone(), y.clone()) for x, y in head])
    assert _same(full[3:], tail)
    assert _same(_epoch(c), _epoch(a, 3))  # then continues with the next epoch
    d, _ = _loader(batch=5)
    with pytest.raises(ValueError, match="batch_size"):
        d.load_state_dict(state)


def test_loader_every_sample_once_and_normalisation():
    loader, images = _loader(n=50, batch=8, drop_last=False, augment=False)
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == 7
    ids = torch.cat([y for _, y in batches])
    assert sorted(ids.tolist()) == list(range(50)) and ids.tolist() != list(range(50))
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    for x, y in batches:
        assert x.dtype == torch.float32
        torch.testing.assert_close(x * std + mean, images[y].float() / 255, atol=1e-5, rtol=0)
    # augmented epochs also visit every sample once
    aug, _ = _loader(n=50, batch=8, drop_last=False)
    assert sorted(torch.cat([y for _, y in _epoch(aug, 5)]).tolist()) == list(range(50))


def test_test_loader_order_and_options():
    loader, images = _loader(n=20, batch=8, train=False, augment=True, channels_last=True,
                             dtype=torch.bfloat16)
    batches = _epoch(loader, 7)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [8, 8, 4]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(20))
    x = batches[0][0]
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert _same(batches, _epoch(loader, 0))  # no randomness in the test loader


def test_make_loaders_from_path(tmp_path):
    prepare_dataset("synthetic", tmp_path / "s.pt", synthetic_train=100, synthetic_test=30)
    train, test = make_loaders(tmp_path / "s.pt", batch_size=16, eval_batch_size=64,
                               device="cpu", seed=0, augment=True, channels_last=False)
    assert isinstance(train, TensorLoader) and isinstance(test, TensorLoader)
    assert len(train) == 6 and len(test) == 1
    x, y = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
    assert abs(float(next(iter(test))[0].mean())) < 0.3  # normalised with the train statistics
