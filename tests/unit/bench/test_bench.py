"""The speed benchmark's command: what it writes and prints (its figures are in
docs/performance.md, never asserted on: speed targets are not timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
KEYS = {"workload", "device", "batch_size", "baseline_img_s", "project_img_s", "ratio"}


def test_bench_writes_one_entry_per_workload_and_prints_the_table(tmp_path):
    out = tmp_path / "benchmarks" / "step.json"
    res = subprocess.run(
        [sys.executable, "-m", "dgkd_core", "bench", "--device", "cpu", "--steps", "1",
         "--repeat", "2", "--train-images", "512", "--skip-workflow", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    entries = {e["workload"]: e for e in result["workloads"]}
    build = entries.pop("guide_table_build")
    assert build["views_per_image"] == 162 and build["views_per_s"] > 0
    assert set(entries) == {"dgkd_student_resnet26-20-14-8", "dgkd_student_prepared_guides",
                            "dgkd_student_tables", "teacher_resnet26_ce"}
    for e in entries.values():
        assert KEYS <= e.keys()
        assert e["batch_size"] == 128 and e["device"].startswith("CPU")
        assert e["baseline_img_s"] > 0 and e["project_img_s"] > 0
        assert e["cuda_graph_fallback"] is None  # no graph on a CPU, so nothing fell back
        # --repeat 2: each loop timed twice, the median (here the mean of two) reported
        assert [len(v) for v in e["repeats"].values()] == [2, 2, 2]
    assert result["repeat"] == 2
    # the printed table names the device and each workload
    assert result["device"] in res.stdout
    assert all(name in res.stdout for name in [*entries, "guide_table_build"])


def test_median_img_s_takes_the_median_and_the_last_extra():
    from dgkd_core.bench.step import _median_img_s

    values = iter([(30.0, "a"), (10.0, "b"), (20.0, "c")])
    assert _median_img_s(lambda: next(values), 3) == (20.0, [30.0, 10.0, 20.0], "c")
    plain = iter([5.0])
    assert _median_img_s(lambda: next(plain), 1) == (5.0, [5.0], None)


def test_stream_bench_measures_both_decoders(tmp_path):
    """bench --stream: images/s of PIL and decode_jpeg on generated JPEGs (GPU: None on CPU)."""
    from dgkd_core.bench.stream import format_stream_table, stream_bench, write_jpegs

    write_jpegs(tmp_path, 4, size=(60, 80))
    result = stream_bench(str(tmp_path), count=8)
    rates = result["images_per_s"]
    assert rates["pil"] > 0 and rates["decode_jpeg"] > 0
    import torch

    assert (rates["gpu_decode_jpeg"] is None) == (not torch.cuda.is_available())
    assert "decode_jpeg / PIL" in format_stream_table(result)
