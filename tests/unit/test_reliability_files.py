"""Issue 25, items 2, 3 and 9: a guide table's contents are checked on load; a disk that fills
mid-save names ENOSPC and the file and keeps the previous file; a crafted pickle is named as
refused code, with no unsafe hint."""

from __future__ import annotations

import errno
import pickle

import pytest
import torch

from dgkd_core import io
from dgkd_core.guides import checkpoints
from dgkd_core.errors import TrainingError
from dgkd_core.data import load_prepared
from dgkd_core.guides.logit_tables import load_guide_table, save_guide_table, table_checksum

PAD = 4


@pytest.fixture(scope="module")
def table_setup(tiny_data, teacher, tmp_path_factory):
    """A well-formed table file (random logits) for `teacher` on `tiny_data`."""
    data = load_prepared(tiny_data)
    norm = {"mean": data.mean, "std": data.std}
    path = tmp_path_factory.mktemp("table") / "guide_table.pt"
    table = torch.randn(data.meta["num_train"], 162, 10, generator=torch.Generator().manual_seed(0))
    save_guide_table(path, table, guide_checkpoint=str(teacher), data_meta=data.meta,
                     normalization=norm, pad=PAD, build_s=1.0)
    return path, data.meta, norm


def _load(path, teacher, meta, norm):
    return load_guide_table(path, guide_checkpoint=teacher, data_meta=meta, normalization=norm,
                            pad=PAD, device=torch.device("cpu"))


def _nan(p):
    p["table"][3, 5, 7] = float("nan")
    p["table_sha256"] = table_checksum(p["table"])


def _bit_flip(p):
    p["table"].view(torch.int32)[1, 2, 3] ^= 1 << 20  # the checksum is left as built


def _shape(p):
    p["table"] = p["table"][:, :100].contiguous()
    p["table_sha256"] = table_checksum(p["table"])


def _dtype(p):
    p["table"] = p["table"].double()
    p["table_sha256"] = table_checksum(p["table"])


def _no_checksum(p):
    del p["table_sha256"]


def _no_classes(p):
    del p["num_classes"]


def _not_a_tensor(p):
    p["table"] = [[1.0]]


@pytest.mark.parametrize("damage, fragment", [
    (_nan, "not finite"), (_bit_flip, "checksum"), (_shape, "shape"), (_dtype, "dtype"),
    (_no_checksum, "lacks"), (_no_classes, "lacks"), (_not_a_tensor, "not a tensor")])
def test_damaged_guide_table_is_refused_in_one_line(table_setup, teacher, tmp_path, damage,
                                                     fragment):
    path, meta, norm = table_setup
    _load(path, teacher, meta, norm)  # the table as built loads
    payload = torch.load(path, weights_only=True)
    damage(payload)
    bad = tmp_path / "guide_table.pt"
    torch.save(payload, bad)
    with pytest.raises(TrainingError) as err:
        _load(bad, teacher, meta, norm)
    text = str(err.value)
    assert "\n" not in text and str(bad) in text and fragment in text
    assert "python -m dgkd_core guide-table" in text


def test_non_finite_table_is_never_saved(table_setup, teacher, tmp_path):
    _, meta, norm = table_setup
    table = torch.zeros(meta["num_train"], 162, 10)
    table[0, 0, 0] = float("inf")
    with pytest.raises(TrainingError, match="not finite"):
        save_guide_table(tmp_path / "t.pt", table, guide_checkpoint=str(teacher), data_meta=meta,
                         normalization=norm, pad=PAD, build_s=1.0)
    assert not (tmp_path / "t.pt").exists()


# ---------------------------------------------------------------- a disk that fills mid-save

def _full_disk_after(monkeypatch, nbytes: int):
    """Every file object's write raises ENOSPC once `nbytes` bytes have been written."""
    import os
    real_fdopen = os.fdopen

    class Filling:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > nbytes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(io.os, "fdopen", lambda *a, **k: Filling(real_fdopen(*a, **k)))


@pytest.mark.parametrize("save", [
    lambda p: io.atomic_torch_save({"w": torch.zeros(100_000)}, p),
    lambda p: io.atomic_write_text("x" * 100_000, p),
    lambda p: checkpoints.save_checkpoint(p, torch.nn.Linear(300, 300), {"model": "m"},
                                          {"name": "d", "num_classes": 10}, {}),
], ids=["torch", "text", "checkpoint"])
def test_disk_full_mid_save_names_enospc_and_keeps_the_file(tmp_path, monkeypatch, save):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous")
    _full_disk_after(monkeypatch, 4096)
    with pytest.raises(OSError) as err:
        save(path)
    text = str(err.value)
    assert "\n" not in text and "ENOSPC" in text and str(path) in text, text
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


# ---------------------------------------------------------------- crafted pickles

class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_crafted_pickle_is_named_as_refused_code_without_an_unsafe_hint(tmp_path, capsys):
    path = tmp_path / "resume.pt"
    torch.save({"state": _Payload()}, path)
    with pytest.raises(io.UnreadableFile) as err:
        io.load_tensor_file(path)
    text = str(err.value)
    assert err.value.refused and "\n" not in text and str(path) in text
    assert "code or objects" in text and "refused" in text
    assert "weights_only" not in text and "truncated" not in text
    assert "this ran" not in capsys.readouterr().out


def test_plain_pickle_of_an_object_is_refused_not_called_corrupt(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"x": _Payload()}, protocol=2))
    with pytest.raises(io.UnreadableFile) as err:
        io.load_tensor_file(path)
    assert err.value.refused and "weights_only" not in str(err.value)


# ---------------------------------------------------------------- deep nesting in an archive

def test_tar_member_2000_folders_deep_is_one_line(tmp_path):
    import io as _io
    import tarfile

    from dgkd_core.data import DataError
    from dgkd_core.data.archive import extract_archive

    archive = tmp_path / "deep.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("/".join(["d"] * 2000) + "/img.png")
        info.size = 3
        tar.addfile(info, _io.BytesIO(b"png"))
    with pytest.raises(DataError) as err:
        extract_archive(archive, tmp_path / "out")
    text = str(err.value)
    assert "\n" not in text and len(text) < 400 and str(archive) in text and "deep" in text, text
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["deep.tar"]
