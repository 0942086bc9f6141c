"""Issue 25, item 6: archive bombs. A small archive of huge content is refused as its members'
declared sizes add up past the limit, before they are written or read, and nothing unpacked is
kept: a dataset archive (dgkd_core.data.archive) and a campaign state (dgkd_core.campaign.pack)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from dgkd_core import cli
from dgkd_core.campaign import pack as campaign_pack
from dgkd_core.campaign.state import CampaignError
from dgkd_core.data import DataError, extract_archive

MB = 2**20


def _bomb(path: Path, mode: str, members: dict[str, int]) -> Path:
    """An archive of `members` (name -> size), each all zeros: it compresses to almost nothing."""
    with tarfile.open(path, mode) as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_dataset_archive_bomb_stops_at_the_limit_and_keeps_nothing(tmp_path):
    members = {"imgs/train/a/0.png": MB // 2, "imgs/train/a/1.png": 4 * MB,
               "imgs/test/a/0.png": MB // 2}
    archive = _bomb(tmp_path / "imgs.tar.gz", "w:gz", members)
    assert archive.stat().st_size < 64 * 1024  # 5 MB of content in a few KB
    dest = tmp_path / "extracted" / "imgs"
    with pytest.raises(DataError) as caught:
        extract_archive(archive, dest, max_bytes=2 * MB)
    message = str(caught.value)
    assert "\n" not in message and str(archive) in message and "1.png" in message, message
    assert "max_cached_bytes" in message and "root" in message
    assert not dest.exists()
    assert list((tmp_path / "extracted").iterdir()) == []  # no partial folder is left behind


def test_dataset_archive_within_the_limit_unpacks(tmp_path):
    archive = _bomb(tmp_path / "imgs.tar", "w", {"imgs/train/a/0.png": MB,
                                                 "imgs/test/a/0.png": MB})
    assert extract_archive(archive, tmp_path / "imgs", max_bytes=2 * MB) == 2


def test_campaign_state_bomb_is_refused_before_it_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(campaign_pack, "MAX_STATE_BYTES", 2 * MB)
    archive = _bomb(tmp_path / "state.tar.xz", "w:xz", {"manifest.json": 100,
                                                        "results/x/model.pt": 16 * MB})
    state = tmp_path / "state" / "tiny"
    state.mkdir(parents=True)
    (state / "manifest.json").write_text("{}")
    with pytest.raises(CampaignError) as caught:
        campaign_pack.unpack(archive, state)
    message = str(caught.value)
    assert "\n" not in message and str(archive) in message and "model.pt" in message, message
    assert "unchanged" in message
    assert [p.name for p in state.iterdir()] == ["manifest.json"]
    assert cli.main(["campaign", "unpack", str(archive), "--state", str(state)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines


def test_pack_refuses_a_state_that_unpack_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr(campaign_pack, "MAX_STATE_BYTES", MB)
    big = tmp_path / "model.pt"
    big.write_bytes(bytes(2 * MB))
    out = tmp_path / "state.tar.xz"
    with pytest.raises(CampaignError, match="more than unpack accepts"):
        campaign_pack._write_archive(out, {}, {"results/x/model.pt": big})
    assert not out.exists()
