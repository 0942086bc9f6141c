"""dgkd_core.data: preparing (CIFAR via torchvision, imagefolder, stream, archives, synthetic) and
loading prepared files; the loaders and augmentation are in tests/unit/data/test_loaders.py.

All tests run on the CPU on tiny data the tests write themselves (a few seconds in total).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dgkd_core import io
from dgkd_core.data import (
    DATASET_SOURCES,
    DataError,
    PreparedData,
    StreamLoader,
    extract_archive,
    load_prepared,
    make_loaders,
    make_synthetic,
    prepare_dataset,
)

SHARED_TAR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "cifar10-images.tar"


# --------------------------------------------------------------------------- CIFAR via torchvision


def _write_cifar(root: Path, kind: str, n_per_file: int = 6, seed: int = 0) -> dict:
    """Tiny files in torchvision's CIFAR on-disk format (pickled dicts of uint8 rows [k, 3072])."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        classes = [f"c10_{i}" for i in range(10)]
        label_key, meta_name, meta = "labels", "batches.meta", {"label_names": classes}
    else:
        folder = root / "cifar-100-python"
        files = {"train": ["train"], "test": ["test"]}
        classes = [f"c100_{i:02d}" for i in range(100)]
        label_key, meta_name = "fine_labels", "meta"
        meta = {"fine_label_names": classes, "coarse_label_names": [f"s{i}" for i in range(20)]}
    folder.mkdir(parents=True)
    written = {}
    for split, names in files.items():
        datas, labels = [], []
        for name in names:
            data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
            lab = [int(v) for v in rng.integers(0, len(classes), n_per_file)]
            entry = {"data": data, label_key: lab}
            if kind == "cifar100":
                entry["coarse_labels"] = [v // 5 for v in lab]
            with open(folder / name, "wb") as f:
                pickle.dump(entry, f)
            datas.append(data)
            labels += lab
        written[split] = (np.concatenate(datas).reshape(-1, 3, 32, 32), labels)
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return {"classes": classes, **written}


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision checks the md5 of every CIFAR file against the official archive's; the tiny
    files written here cannot match, so only check that each file exists (test-only patch of
    the module-level helper that CIFAR10._check_integrity and _load_meta call)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_through_torchvision(tmp_path, skip_cifar_md5, kind):
    written = _write_cifar(tmp_path / "raw", kind)
    meta = prepare_dataset(kind, tmp_path / "out.pt", root=tmp_path / "raw")
    data = load_prepared(tmp_path / "out.pt")
    assert meta == data.meta
    assert meta["name"] == kind and meta["source"] == kind and meta["stream"] is False
    assert data.classes == written["classes"] and data.num_classes == len(written["classes"])
    assert meta["image_size"] == [32, 32]
    for split in ("train", "test"):
        images, labels = written[split]
        got_x = getattr(data, f"{split}_images")
        got_y = getattr(data, f"{split}_labels")
        assert got_x.dtype == torch.uint8 and got_y.dtype == torch.int64
        assert torch.equal(got_x, torch.from_numpy(images))
        assert got_y.tolist() == labels
    x = torch.from_numpy(written["train"][0]).double() / 255
    assert data.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert data.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-5)


def test_cifar_offline_error_names_the_folder(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        prepare_dataset("cifar10", tmp_path / "out.pt", root=root, download=False)
    msg = str(err.value)
    assert str((root / "cifar-10-batches-py").resolve()) in msg
    assert "download: true" in msg
    with pytest.raises(DataError, match="cifar-100-python"):
        prepare_dataset("cifar100", tmp_path / "out.pt", root=root)
    assert not (tmp_path / "out.pt").exists()


def test_cifar_corrupt_files_error(tmp_path):
    _write_cifar(tmp_path / "raw", "cifar10")  # real md5 check: these files do not match
    with pytest.raises(DataError, match="missing or corrupted") as err:
        prepare_dataset("cifar10", tmp_path / "out.pt", root=tmp_path / "raw")
    assert "cifar-10-batches-py" in str(err.value)


# --------------------------------------------------------------------------- imagefolder


def _write_folder(root: Path, classes=("cat", "dog", "eel"), n_train=4, n_test=2, size=(8, 8),
                  seed=0) -> dict:
    """ImageFolder layout of random PNGs; returns {split: [(relpath, HWC uint8 array, label)]}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
                rel = f"{split}/{cls}/{i:03d}.png"
                Image.fromarray(arr).save(root / rel)
                out[split].append((rel, arr, label))
    return out


def test_imagefolder_prepare(tmp_path):
    written = _write_folder(tmp_path / "folder")
    meta = prepare_dataset("imagefolder", tmp_path / "out.pt", root=tmp_path / "folder",
                           workers=1)
    data = load_prepared(tmp_path / "out.pt")
    assert meta["name"] == "folder" and meta["classes"] == ["cat", "dog", "eel"]
    assert meta["image_size"] == [8, 8] and meta["num_train"] == 12 and meta["num_test"] == 6
    for split in ("train", "test"):
        expect = torch.from_numpy(np.stack([a for _, a, _ in written[split]])).permute(0, 3, 1, 2)
        assert torch.equal(getattr(data, f"{split}_images"), expect)
        assert getattr(data, f"{split}_labels").tolist() == [lab for *_, lab in written[split]]


def test_imagefolder_parallel_decode_matches_serial(tmp_path, monkeypatch):
    from dgkd_core.data import imagefolder

    _write_folder(tmp_path / "folder", n_train=5)
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK", 4)  # several chunks -> the process pool
    a = prepare_dataset("imagefolder", tmp_path / "a.pt", root=tmp_path / "folder", workers=2)
    b = prepare_dataset("imagefolder", tmp_path / "b.pt", root=tmp_path / "folder", workers=1)
    assert a["checksum"] == b["checksum"]


def test_imagefolder_mixed_sizes_error_and_resize(tmp_path):
    from PIL import Image

    _write_folder(tmp_path / "folder")
    odd = tmp_path / "folder" / "test" / "dog" / "001.png"
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(DataError) as err:
        prepare_dataset("imagefolder", tmp_path / "out.pt", root=tmp_path / "folder", workers=1)
    msg = str(err.value)
    assert str(odd) in msg and "10x12" in msg and "8x8" in msg and "resize" in msg
    assert str(tmp_path / "folder" / "train" / "cat" / "000.png") in msg  # the reference image
    meta = prepare_dataset("imagefolder", tmp_path / "out.pt", root=tmp_path / "folder",
                           resize=[6, 7], workers=1)
    data = load_prepared(tmp_path / "out.pt")
    assert meta["image_size"] == [6, 7] and meta["source_detail"]["resize"] == [6, 7]
    assert data.train_images.shape == (12, 3, 6, 7) and data.test_images.shape == (6, 3, 6, 7)
    prepare_dataset("imagefolder", tmp_path / "sq.pt", root=tmp_path / "folder", resize=5,
                    workers=1)
    assert load_prepared(tmp_path / "sq.pt").meta["image_size"] == [5, 5]


def test_imagefolder_layout_errors(tmp_path):
    _write_folder(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "test" / "cat").rename(tmp_path / "a" / "test" / "cow")
    with pytest.raises(DataError, match=r"only in train: \['cat'\].*only in test: \['cow'\]"):
        prepare_dataset("imagefolder", tmp_path / "o.pt", root=tmp_path / "a")
    _write_folder(tmp_path / "b")
    (tmp_path / "b" / "test").rename(tmp_path / "b" / "elsewhere")
    with pytest.raises(DataError, match="no 'test' folder"):
        prepare_dataset("imagefolder", tmp_path / "o.pt", root=tmp_path / "b")
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset("imagefolder", tmp_path / "o.pt", root=tmp_path / "missing")
    with pytest.raises(DataError, match="needs root"):
        prepare_dataset("imagefolder", tmp_path / "o.pt")
    with pytest.raises(DataError, match="unknown dataset source"):
        prepare_dataset("mnist", tmp_path / "o.pt")
    assert set(DATASET_SOURCES) == {"cifar10", "cifar100", "imagefolder", "synthetic"}


def test_stream_descriptor_and_loader(tmp_path):
    written = _write_folder(tmp_path / "folder", n_train=5, n_test=3, size=(12, 12))
    meta = prepare_dataset("imagefolder", tmp_path / "s.pt", root=tmp_path / "folder",
                           max_cached_images=10, resize=[8, 8], workers=1)
    assert meta["stream"] is True and meta["root"] == str((tmp_path / "folder").resolve())
    assert meta["image_size"] == [8, 8] and meta["num_train"] == 15
    assert os.path.getsize(tmp_path / "s.pt") < 20_000  # no image tensors
    data = load_prepared(tmp_path / "s.pt")
    assert data.is_stream and data.train_images is None
    train, test = make_loaders(data, batch_size=4, eval_batch_size=5, device="cpu", seed=3,
                               augment=True, channels_last=False, num_workers=0)
    assert isinstance(train, StreamLoader) and isinstance(test, StreamLoader)
    assert len(train) == 3 and len(test) == 2  # drop_last on train only

    labels = []
    for x, y in test:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)
        labels += y.tolist()
    assert labels == [lab for *_, lab in written["test"]]

    def epoch(loader, e):
        loader.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in loader]

    first, again, other = epoch(train, 1), epoch(train, 1), epoch(train, 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))
    train.set_epoch(1)
    it = iter(train)
    next(it)
    state = train.state_dict()
    resumed, _ = make_loaders(data, batch_size=4, eval_batch_size=5, device="cpu", seed=3,
                              augment=True, channels_last=False, num_workers=0)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[1:], rest))


def _extract_subset(tar_path: Path, dest: Path, keep) -> int:
    """Extract the regular files whose names pass ``keep`` from a plain ustar archive.

    A minimal header walk (seeking past every file's data): about 5x faster than tarfile's member
    objects on the 60,000-file archive. Returns the number of files written."""
    written = 0
    with open(tar_path, "rb") as f:
        while True:
            header = f.read(512)
            if len(header) < 512 or not header.strip(b"\0"):
                return written
            name = header[:100].rstrip(b"\0").decode()
            prefix = header[345:500].rstrip(b"\0").decode()
            name = f"{prefix}/{name}" if prefix else name
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            if header[156:157] in (b"0", b"\0") and keep(name):
                target = dest / name
                assert dest in target.resolve().parents
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.read(size))
                written += 1
                f.seek(-size % 512, 1)
            else:
                f.seek(size + -size % 512, 1)


@pytest.mark.skipif(not SHARED_TAR.is_file(), reason=f"{SHARED_TAR} not present")
def test_shared_cifar10_jpeg_subset(tmp_path):
    """Two images per class and split of the shared CIFAR-10 JPEG copy, prepared as imagefolder."""
    pattern = re.compile(r"(?:^|/)(train|test)/([^/]+)/(\d+)\.jpg$")
    dest = (tmp_path / "c10").resolve()
    n = _extract_subset(SHARED_TAR, dest,
                        lambda name: bool((m := pattern.search(name)) and int(m.group(3)) < 2))
    assert n == 40
    root = next(p.parent for p in dest.rglob("train"))
    meta = prepare_dataset("imagefolder", tmp_path / "c10.pt", root=root, name="cifar10")
    data = load_prepared(tmp_path / "c10.pt")
    assert meta["classes"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                               "horse", "ship", "truck"]
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (20, 3, 32, 32)
    assert data.train_labels.bincount().tolist() == [2] * 10


# --------------------------------------------------------------------------- archives


def _image_tar(tmp_path: Path, bad=None, mode: str = "w") -> Path:
    """A tar of a small ImageFolder (2 classes, PNGs under train/<class>/ and test/<class>/);
    ``bad(tar)`` adds further members after the good ones."""
    import tarfile

    folder = tmp_path / "images"
    _write_folder(folder, classes=("cat", "dog"), n_train=3, n_test=1)
    path = tmp_path / {"w": "images.tar", "w:gz": "images.tar.gz"}[mode]
    with tarfile.open(path, mode) as tar:
        for file in sorted(folder.rglob("*")):
            tar.add(file, arcname=file.relative_to(folder).as_posix(), recursive=False)
        if bad is not None:
            bad(tar)
    return path


def _add_member(tar, name: str, kind: bytes, linkname: str = "", data: bytes = b"") -> None:
    import io as bytes_io
    import tarfile

    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    tar.addfile(info, bytes_io.BytesIO(data) if data else None)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_extract_archive_unpacks_an_imagefolder(tmp_path, mode):
    tar = _image_tar(tmp_path, mode=mode)
    dest = tmp_path / "extracted" / "imgs"
    assert extract_archive(tar, dest) == 8
    assert sorted(p.name for p in dest.parent.iterdir()) == ["imgs"]  # no partial folder left
    unpacked = prepare_dataset("imagefolder", tmp_path / "a.pt", root=dest, workers=1)
    original = prepare_dataset("imagefolder", tmp_path / "b.pt", root=tmp_path / "images",
                               workers=1)
    assert unpacked["checksum"] == original["checksum"] and unpacked["num_train"] == 6


PNG_BYTES = b"\x89PNG\r\n\x1a\n not really"


@pytest.mark.parametrize("name, kind, linkname, data, says", [
    ("train/cat/passwd.png", b"2", "/etc/passwd", b"", "is a symbolic link (to '/etc/passwd')"),
    ("train/cat/secret.png", b"2", "../../secret.png", b"", "is a symbolic link"),
    ("train/dog/same.png", b"1", "train/cat/000.png", b"", "is a hard link"),
    ("train/dog/fifo", b"6", "", b"", "is a device or fifo"),
    ("../x.png", b"0", "", PNG_BYTES, "absolute path or '..'"),
    ("train/../../x.png", b"0", "", PNG_BYTES, "absolute path or '..'"),
    ("/tmp/x.png", b"0", "", PNG_BYTES, "absolute path or '..'"),
])
def test_extract_archive_refuses_links_devices_and_escapes(tmp_path, name, kind, linkname, data,
                                                           says):
    tar = _image_tar(tmp_path, bad=lambda t: _add_member(t, name, kind, linkname, data))
    dest = tmp_path / "extracted" / "imgs"
    with pytest.raises(DataError) as err:
        extract_archive(tar, dest)
    msg = str(err.value)
    assert f"member {name!r}" in msg and str(tar) in msg and says in msg and "\n" not in msg
    # the good members before the bad one were unpacked, then removed with the temporary folder
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert not (tmp_path / "x.png").exists() and not Path("/tmp/x.png").exists()


def test_extract_archive_unreadable_or_taken_destination(tmp_path):
    good = _image_tar(tmp_path, mode="w:gz")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "notes.tar").write_text("not an archive")
    for broken in (truncated, tmp_path / "notes.tar", tmp_path / "missing.tar"):
        with pytest.raises(DataError, match=f"cannot unpack archive {re.escape(str(broken))}: "
                           ) as err:
            extract_archive(broken, tmp_path / "out" / "d")
        assert "\n" not in str(err.value)
        assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "out" / "d").mkdir()  # an empty folder is replaced ...
    assert extract_archive(good, tmp_path / "out" / "d") == 8
    with pytest.raises(DataError, match="already exists and is not empty"):  # ... a full one not
        extract_archive(good, tmp_path / "out" / "d")


def test_too_large_to_cache_with_a_temporary_root_is_refused(tmp_path):
    _write_folder(tmp_path / "unpacked", n_train=3, n_test=1)  # 12 images
    with pytest.raises(DataError) as err:
        prepare_dataset("imagefolder", tmp_path / "s.pt", root=tmp_path / "unpacked", name="imgs",
                        max_cached_images=10, root_is_temporary=True, workers=1)
    msg = str(err.value)
    assert msg.startswith("dataset 'imgs' is given as an archive") and "\n" not in msg
    assert "12 images" in msg and "limits: 10 images" in msg and "datasets.imgs.root" in msg
    assert not (tmp_path / "s.pt").exists()
    # small enough to cache: a temporary root is fine
    meta = prepare_dataset("imagefolder", tmp_path / "c.pt", root=tmp_path / "unpacked",
                           root_is_temporary=True, workers=1)
    assert meta["stream"] is False


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_balanced(tmp_path):
    kw = dict(synthetic_train=200, synthetic_test=50)
    a = prepare_dataset("synthetic", tmp_path / "a.pt", seed=1, **kw)
    b = prepare_dataset("synthetic", tmp_path / "b.pt", seed=1, **kw)
    c = prepare_dataset("synthetic", tmp_path / "c.pt", seed=2, **kw)
    assert a["checksum"] == b["checksum"] != c["checksum"]
    data = load_prepared(tmp_path / "a.pt")
    assert data.train_images.shape == (200, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (50, 3, 32, 32) and data.train_labels.dtype == torch.int64
    assert data.num_classes == 10 and len(data.classes) == 10 and a["name"] == "synthetic"
    assert data.train_labels.bincount(minlength=10).tolist() == [20] * 10
    assert data.test_labels.bincount(minlength=10).tolist() == [5] * 10
    assert not torch.equal(data.train_images[:50], data.test_images)
    assert all(0.0 < m < 1.0 for m in data.mean) and all(0.05 < s < 0.5 for s in data.std)
    assert a["source_detail"]["seed"] == 1


def test_make_synthetic_splits_and_images():
    x, y = make_synthetic(100, seed=0, split="train")
    x2, y2 = make_synthetic(100, seed=0, split="train")
    xt, _ = make_synthetic(100, seed=0, split="test")
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, xt)
    assert int(x.float().std()) > 20  # not blank
    # images of the same class are not copies of each other
    same = x[y == 0]
    assert not torch.equal(same[0], same[1])


# --------------------------------------------------------------------------- corrupt files


def test_corrupt_or_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "s.pt"
    prepare_dataset("synthetic", path, synthetic_train=50, synthetic_test=20)
    blob = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_prepared(bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(DataError, match=re.escape(str(garbage))):
        load_prepared(garbage)
    with pytest.raises(DataError, match="does not exist"):
        load_prepared(tmp_path / "missing.pt")
    payload = torch.load(path, weights_only=True)
    payload["train_images"][0, 0, 0, 0] ^= 1
    io.atomic_torch_save(payload, tmp_path / "tampered.pt")
    with pytest.raises(DataError, match="checksum"):
        load_prepared(tmp_path / "tampered.pt")
    assert isinstance(load_prepared(tmp_path / "tampered.pt", verify=False), PreparedData)
    io.atomic_torch_save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a prepared data file"):
        load_prepared(tmp_path / "other.pt")


def test_atomic_writes(tmp_path):
    target = tmp_path / "deep" / "dir" / "f.json"
    io.atomic_write_json({"a": 1}, target)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    io.atomic_write_text("hi", target)
    io.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert target.read_text() == "hi" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]  # no temp files left

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        io.atomic_torch_save({"x": Boom()}, target)
    assert target.read_text() == "hi" and sorted(os.listdir(target.parent)) == ["f.json"]
