"""`bench --fused` (dgkd_core.bench.fused): what it writes and prints. Its figures are in
docs/performance.md, never asserted on: speed targets are not timed tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dgkd_core.bench.fused import workloads

REPO = Path(__file__).resolve().parents[3]


def test_workloads_are_table_1s_students_then_the_teachers():
    found = workloads([1, 5, 15], 3)
    assert list(found) == ["students_resnet8_k1", "students_resnet8_k5", "students_resnet8_k15",
                           "teachers_resnet26_k3"]
    fifteen = found["students_resnet8_k15"]
    assert {m[0] for m in fifteen} == {"resnet8"}
    # five methods for each of three seeds, each (method, seed) once
    assert len({(m[1], m[2]) for m in fifteen}) == 15 and {m[2] for m in fifteen} == {20, 31, 55}
    assert found["students_resnet8_k5"] == fifteen[:5]
    assert found["students_resnet8_k1"][0][3] == ["resnet26", "resnet20", "resnet14"]
    assert [m[2] for m in found["teachers_resnet26_k3"]] == [20, 31, 55]
    assert "teachers_resnet26_k0" not in workloads([1], 0)


@pytest.mark.slow
def test_bench_fused_times_each_mechanism_and_writes_fused_json(tmp_path):
    """A CPU smoke run: K = 1 and 2 students, one timed round, every mechanism but compile
    (cuda_streams is skipped on a CPU, with its reason)."""
    out = tmp_path / "benchmarks" / "step.json"
    res = subprocess.run(
        [sys.executable, "-m", "dgkd_core", "bench", "--fused", "--device", "cpu", "--k", "1,2",
         "--teachers", "0", "--steps", "1", "--repeat", "2",
         "--mechanisms", "solo,sequential,cuda_streams,horizontal", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out.parent / "fused.json").read_text())
    assert result["repeat"] == 2 and result["timed_steps"] == 1
    entries = result["workloads"]
    # mechanism by mechanism, in the order given, each for every workload
    assert [(e["workload"], e["mechanism"]) for e in entries] == [
        (w, m) for m in ("solo", "sequential", "cuda_streams", "horizontal")
        for w in ("students_resnet8_k1", "students_resnet8_k2")]
    for e in entries:
        if e["mechanism"] == "cuda_streams":
            assert "needs CUDA" in e["skipped"]
            continue
        assert len(e["repeats_s"]) == 2 and e["aggregate_img_s"] > 0
        # each figure is rounded on its own: compared to 2 %
        assert e["per_model_img_s"] == pytest.approx(e["aggregate_img_s"] / e["members"],
                                                      rel=0.02)
        assert (e["ratio_to_solo"] is None) == (e["mechanism"] == "solo")
    ops = {(e["workload"][-2:], e["mechanism"]): e.get("ops_per_round") for e in entries}
    # counts, not timings: solo steps the same members one by one, so it runs sequential's ops;
    # two stacked members run fewer ops than two steps one after another
    assert ops["k2", "solo"] == ops["k2", "sequential"] > 2 * 50
    assert ops["k2", "horizontal"] < ops["k2", "sequential"]
    assert "students_resnet8_k2" in res.stdout and "ops/round" in res.stdout


def test_a_mechanism_that_raises_is_recorded_and_the_bench_goes_on(monkeypatch, capsys):
    import types

    import torch

    import dgkd_core.bench.fused as bench

    def measure(fused, mechanism, *args):
        raise RuntimeError("no deterministic kernel for this op\nmore detail")

    monkeypatch.setattr(bench, "_measure", measure)
    fused = types.SimpleNamespace(members=[types.SimpleNamespace(device=torch.device("cpu"))])
    members = [("resnet8", "nokd", 20, [], None)]
    entry = bench._one(fused, "students_resnet8_k1", members, "horizontal", 1, 1, 1)
    assert entry["failed"] == "RuntimeError: no deterministic kernel for this op"
    assert "Traceback" in capsys.readouterr().err
    skipped = bench._one(fused, "students_resnet8_k1", members, "cuda_streams", 1, 1, 1)
    assert "needs CUDA" in skipped["skipped"]
    table = bench.format_table({"device": "cpu", "torch": "x", "timed_steps": 1, "warmup": 1,
                                "repeat": 1, "workloads": [entry, skipped]})
    assert "FAILED: RuntimeError" in table and "skipped: cuda_streams needs CUDA" in table
