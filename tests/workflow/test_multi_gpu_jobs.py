"""Training jobs of several GPUs in the workflow (resources.gpus_per_job, dgkd_core/training/launch.py)
and the ImageNet config (config/imagenet.yaml) against a tiny fake ImageNet-style folder."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from dgkd_core.experiment import paths
from dgkd_core.reporting.reference import paper_value
from dgkd_core.training.launch import gpus_per_job, rank_command, slurm_resources
from test_workflow import REPO, TINY, DryRun, dry_run, snakemake, tiny, write_config


def test_gpus_per_job_default_then_role_then_dataset():
    resources = {"gpus_per_job": {"default": 2, "per_role": {"teacher": 4},
                                  "per_dataset": {"imagenet": 8}}}
    assert gpus_per_job({}, "student", "cifar10") == 1
    assert gpus_per_job(resources, "student", "cifar10") == 2
    assert gpus_per_job(resources, "teacher", "cifar10") == 4
    assert gpus_per_job(resources, "teacher", "imagenet") == 8
    # one GPU: only --gpus=1, as before; several: N tasks, one per GPU, started by the job
    assert slurm_resources(1) == {"gpu": 1, "tasks": None, "tasks_per_gpu": None, "mpi": None}
    assert slurm_resources(0)["gpu"] is None
    assert slurm_resources(4) == {"gpu": 4, "tasks": 4, "tasks_per_gpu": 1, "mpi": "srun"}


def test_rank_command_is_srun_in_a_slurm_job_and_torchrun_elsewhere():
    srun = rank_command(2, "run.yaml", "job.log", env={"SLURM_JOB_ID": "5"})
    assert srun[:2] == ["srun", "--ntasks=2"]
    assert srun[-5:] == ["--log-file", "job.log", "train", "--config", "run.yaml"]
    local = rank_command(3, "run.yaml", None, env={})
    assert local[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]


def train_resources(text: str) -> list[dict]:
    blocks = re.findall(r"^rule train_model:$(.*?)^\s+resources: ([^\n]*)", text, re.M | re.S)
    return [dict(kv.split("=", 1) for kv in res.split(", ")) for _, res in blocks]


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    """train/ and test/ with two wnid class folders of JPEGs of different sizes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for wnid in ("n01440764", "n01443537"):
            (root / split / wnid).mkdir(parents=True)
            for i, size in enumerate([(64, 80), (90, 60)]):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG")
    return root


def test_imagenet_config_dry_run(fake_imagenet, tmp_path):
    overlay = write_config(tmp_path / "root.yaml",
                           {"datasets": {"imagenet": {"root": str(fake_imagenet)}}})
    run = dry_run(tmp_path, "results/table1.csv",
                  configfiles=(REPO / "config" / "imagenet.yaml", overlay))
    assert run.count("prepare_data") == 1
    assert run.runs() == {"seed0/nokd/resnet34", "seed0/nokd/resnet18", "seed0/kd/resnet34-resnet18",
                          "seed0/kd/resnet34-resnet24", "seed0/takd/resnet34-resnet24-resnet18",
                          "seed0/dgkd/resnet34-resnet24-resnet18"}
    for res in train_resources(run.text):  # 8 GPUs and 8 tasks per job, started by the job
        assert (res["gpu"], res["tasks"], res["tasks_per_gpu"], res["mpi"]) == \
            ("8", "8", "1", "srun"), res
    config = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    defaults = config["hyperparameters"]["defaults"]
    assert defaults["optimizer"]["lr"] == pytest.approx(0.1 * defaults["batch_size"] / 256)
    assert [round(m * defaults["epochs"]) for m in defaults["schedule"]["milestones"]] == \
        [30, 60, 80]
    assert config["datasets"]["imagenet"]["options"]["recipe"] == "imagenet"
    # the table's paper column for this chain: DGKD 71.73, TAKD about 71.37
    assert paper_value("imagenet", "dgkd", ["resnet34", "resnet24", "resnet18"]).top1 == 71.73
    assert paper_value("imagenet", "takd", ["resnet34", "resnet24", "resnet18"]).top1 == 71.37


def test_a_two_gpu_job_runs_two_ranks_through_torchrun_locally(tmp_path):
    config = tiny(seeds=[1], resources={**TINY["resources"], "gpus_per_job": {"default": 2}})
    run = paths.make_run("synthetic", 1, "nokd", ["plane2"])
    target = run.file("metrics.json")
    proc = snakemake(tmp_path, "--cores", "2", target, config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / target).read_text())
    assert metrics["world_size"] == 2 and metrics["model"] == "plane2"
    log = (tmp_path / paths.train_log("synthetic", "1", "nokd", "plane2")).read_text()
    assert "rank 0 of 2 (torchrun" in log
    assert not (tmp_path / run.dir / ".ranks-run.yaml").exists()
    # a one-GPU job of the same config is one process, as always
    (tmp_path / "one").mkdir()
    single = DryRun(snakemake(tmp_path / "one", "-n", target, config=tiny(seeds=[1])))
    assert all("tasks" not in res for res in train_resources(single.text))
