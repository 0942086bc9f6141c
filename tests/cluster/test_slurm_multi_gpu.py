"""A training job of 2 GPUs on the one-node SLURM test cluster, started with 2 fake GPUs
(`DGKD_SLURM_GPUS=2 ci/slurm_cluster.sh up`): it runs as 2 tasks, one rank each (srun), and its
metrics equal those of the same job run locally through torchrun. Marked slurm, like
tests/cluster/test_slurm.py, whose helpers it uses; the cluster goes back to its 1-GPU state (or down,
where it was not running) at the end."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import yaml

from test_slurm import (DEMO, OVERLAY, SCRIPT, TEST_OVERLAY, _cannot_have_cluster, _skip,
                        comparable_metrics, copy_repo, finish, start, submitted_jobs)


@pytest.fixture(scope="module")
def two_gpu_cluster():
    reason = _cannot_have_cluster()
    if reason:
        _skip(reason)
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=900,
                        env={**os.environ, "DGKD_SLURM_GPUS": "2"})
    if up.returncode == 3:
        _skip(f"ci/slurm_cluster.sh cannot bring a cluster up here:\n{up.stderr[-3000:]}")
    assert up.returncode == 0, f"ci/slurm_cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
    yield
    # back to the state the other tests expect: the 1-GPU configuration (up regenerates it and
    # removes the second fake GPU), stopped again where no cluster ran before
    one_gpu = {k: v for k, v in os.environ.items() if k != "DGKD_SLURM_GPUS"}
    subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, timeout=900, env=one_gpu)
    if not was_up:
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, timeout=300,
                       env=one_gpu)


@pytest.mark.slurm
def test_a_two_gpu_training_job_runs_as_two_tasks(two_gpu_cluster, tmp_path):
    from dgkd_core.experiment import paths

    cfg = yaml.safe_load(open(DEMO))
    dataset, chain = next(iter(cfg["datasets"])), next(iter(cfg["chains"].values()))
    run = paths.make_run(dataset, yaml.safe_load(open(OVERLAY))["seeds"][0], "nokd",
                         [chain["student"]])
    target = run.file("metrics.json")
    gpus = {"resources": {"gpus_per_job": {"default": 2}}}
    slurm_dir, local_dir = copy_repo(tmp_path / "slurm"), copy_repo(tmp_path / "local")
    for d in (slurm_dir, local_dir):
        (d / "two_gpus.yaml").write_text(yaml.safe_dump(gpus))
    configs = ["--configfile", DEMO, OVERLAY, "two_gpus.yaml"]
    overlay = [*configs, *TEST_OVERLAY[TEST_OVERLAY.index(OVERLAY) + 1:]]
    log = tmp_path / "slurm.log"
    text = finish(start(["snakemake", "--profile", "slurm", target, *overlay], slurm_dir, log),
                  log, timeout=600)
    local_log = tmp_path / "local.log"
    finish(start(["snakemake", "--profile", "profiles/local", "--cores", "2", target, *configs],
                 local_dir, local_log), local_log, timeout=600)

    jobs = submitted_jobs(text)  # prepare_data is a local rule: the training job alone
    assert len(jobs) == 1, jobs
    steps = _steps(next(iter(jobs)))
    # the batch step runs Snakemake's job; the srun step holds the 2 ranks, one per task
    srun_steps = [s for s in steps if "." in s["JobID"] and s["JobID"].split(".")[1].isdigit()]
    assert [s["NTasks"] for s in srun_steps] == ["2"], steps
    assert all(s["State"] == "COMPLETED" for s in steps), steps
    assert "gres/gpu=2" in steps[0]["AllocTRES"].split(","), steps
    slurm_metrics = comparable_metrics(slurm_dir / target)
    assert slurm_metrics["world_size"] == 2
    assert slurm_metrics == comparable_metrics(local_dir / target)


def _steps(job_id: str) -> list[dict]:
    fields = ["JobID", "State", "NTasks", "AllocTRES"]
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "-o", ",".join(fields)],
                             capture_output=True, text=True)
        rows = [dict(zip(fields, line.split("|"))) for line in out.stdout.splitlines() if line]
        if rows and all(r["State"].split()[0] not in ("PENDING", "RUNNING") for r in rows):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(2)
