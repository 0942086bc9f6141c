"""Issue 25 through Snakemake: an archive that unpacks past the dataset's max_cached_bytes is
refused by the extract_archive job in one line, and nothing unpacked stays behind."""

from __future__ import annotations

from test_workflow import image_archive_config, snakemake


def test_archive_unpacking_past_max_cached_bytes_stops_and_keeps_nothing(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    # 20 PNGs of some 200 bytes each: past 1000 bytes by the fifth or so
    proc = snakemake(workdir, config=image_archive_config(tmp_path, max_cached_bytes=1000))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    log = (workdir / "results" / "logs" / "extract_archive" / "imgs.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unpacks to more than 1000 bytes" in errors[0], log
    assert "max_cached_bytes" in errors[0] and "Traceback" not in log
    extracted = workdir / "results" / "extracted"
    assert not extracted.exists() or not any(extracted.iterdir()), list(extracted.iterdir())
    assert "rule prepare_data" not in out and not (workdir / "results" / "data").exists()
