"""Data-parallel training (dgkd_core.training.distributed) on the CPU with gloo: 2 ranks against 1
process, a signal to one rank, the environment that names the ranks, and the shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dgkd_core.data import make_loaders, prepare_dataset
from dgkd_core.data.shards import shard_slice
from dgkd_core.schema import ConfigError
from dgkd_core.training.distributed import Distributed
from dgkd_core.training.trainer import EXIT_RESUMABLE
from helpers import (assert_same_weights, free_port, history_without_timing, one_process,
                     torchrun, train_args)


def start_ranks(data: Path, out: Path, log_dir: Path, *extra: str) -> list[subprocess.Popen]:
    """Two ranks started as torchrun starts them: the same command, RANK/WORLD_SIZE/... set."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        log = log_dir / f"rank{rank}.log"
        procs.append(subprocess.Popen([sys.executable, *train_args(data, out, *extra),
                                       "--log-file", str(log)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """192 training images: 3 global batches of 64 per epoch."""
    path = tmp_path_factory.mktemp("ddp") / "small.pt"
    prepare_dataset("synthetic", path, seed=0, synthetic_train=192, synthetic_test=100)
    return path


def test_two_ranks_with_sync_bn_train_the_one_process_weights(small_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one_process(small_data, one, "--set", "epochs=1", "--set", "sync_bn=true")
    done = torchrun(small_data, two, "--set", "epochs=1", "--set", "sync_bn=true")
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(one / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        diff = (a[key].double() - b[key].double()).abs().max().item()
        assert diff <= 1e-5, f"{key} differs by {diff:.3g}"
    # sharded evaluation, all-reduced: the whole test set, the same counts
    h1, h2 = history_without_timing(one), history_without_timing(two)
    assert [r["test_top1"] for r in h1] == [r["test_top1"] for r in h2]
    for r1, r2 in zip(h1, h2):  # train terms: every rank's shard of the sums
        assert r1["train_top1"] == r2["train_top1"]
        for key in ("train_ce", "test_loss"):
            assert abs(float(r1[key]) - float(r2[key])) < 1e-5, key
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and "world_size" not in json.loads(
        (one / "metrics.json").read_text())
    # rank 0 wrote the outputs once; no rank left a resume state
    assert not (two / "resume.pt").exists()


def test_per_rank_batchnorm_differs_from_one_process(small_data, tmp_path):
    """Without sync_bn each rank normalises with its own half batch's statistics: not the
    one-process run (what the README says), so the equivalence above is sync_bn's doing."""
    one, two = tmp_path / "one", tmp_path / "two"
    one_process(small_data, one, "--set", "epochs=1")
    done = torchrun(small_data, two, "--set", "epochs=1")
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(one / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) > 1e-4


def wait_for(path: Path, text: str, procs, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return
        assert all(p.poll() is None for p in procs), "a rank ended before the signal"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigterm_to_one_rank_stops_every_rank_and_the_restart_matches(tiny_data, tmp_path):
    epochs = ["--set", "epochs=6"]
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    procs = start_ranks(tiny_data, stopped, tmp_path, *epochs)
    try:
        # after epoch 1 both ranks are in the loop with their signal handlers set
        wait_for(tmp_path / "rank0.log", "epoch   1/6", procs)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [EXIT_RESUMABLE, EXIT_RESUMABLE]
    assert (stopped / "resume.pt").exists() and not (stopped / "model.pt").exists()
    log0, log1 = ((tmp_path / f"rank{r}.log").read_text() for r in range(2))
    assert "another rank stopped" in log0 and "signal SIGTERM" in log1
    restart = torchrun(tiny_data, stopped, *epochs)
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert "resumed from" in restart.stderr
    whole_run = torchrun(tiny_data, whole, *epochs)
    assert whole_run.returncode == 0, whole_run.stderr[-3000:]
    assert_same_weights(stopped / "model.pt", whole / "model.pt")
    assert history_without_timing(stopped) == history_without_timing(whole)


# --------------------------------------------------------------------------- in-process checks


def test_environment_names_the_ranks():
    assert not Distributed.from_environment({}).active
    single = Distributed.from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})
    assert not single.active  # a batch script of a 4-task job is one process, not rank 0 of 4
    run = Distributed.from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                        "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (run.rank, run.world_size, run.local_rank, run.master) == (1, 4, 1, ("h", 1234))
    assert not run.is_main and run.shard == (1, 4)
    srun = Distributed.from_environment({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3",
                                         "SLURM_LOCALID": "0", "SLURM_JOB_ID": "77",
                                         "SLURM_STEP_NODELIST": "gpu[03-04],cpu1"})
    assert (srun.rank, srun.world_size, srun.master, srun.launcher) == (2, 3, ("gpu03", 20077),
                                                                          "srun")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        Distributed.from_environment({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="multiple of 4"):
        run.check_batch_size(66)


def test_shards_cover_every_batch_once(tiny_data):
    for lo, hi, world in ((0, 64, 2), (10, 17, 3), (5, 6, 4)):
        parts = [shard_slice(lo, hi, r, world) for r in range(world)]
        assert parts[0][0] == lo and parts[-1][1] == hi
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    common = dict(batch_size=64, eval_batch_size=100, device="cpu", seed=5)
    whole = make_loaders(tiny_data, **common)
    shards = [make_loaders(tiny_data, shard=(r, 2), **common) for r in range(2)]
    for which in (0, 1):  # train: each global batch in halves; test: every image once
        for (x, y), (x0, y0), (x1, y1) in zip(whole[which], shards[0][which], shards[1][which]):
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
