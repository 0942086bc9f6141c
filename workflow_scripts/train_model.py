"""Adapter: rule train_model -> dgkd_core.training.trainer.train (one model, from its guides)."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

import torch

from dgkd_core.cli import setup_logging
from dgkd_core.experiment.jobs import training_job
from dgkd_core.runtime import workflow_ancestor_pid
from dgkd_core.training.launch import run_ranks
from dgkd_core.training.trainer import train

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
(member,) = training_job(snakemake)
# tasks: set only for a job of several GPUs (resources.gpus_per_job; dgkd_core/training/launch.py)
ranks = getattr(snakemake.resources, "tasks", None) or 1
if ranks > 1:  # data-parallel: srun in a SLURM job, else torchrun, starts the ranks
    sys.exit(run_ranks(ranks, member["config"], member["data"], member["out_dir"],
                       member["guides"], log_file=snakemake.log[0],
                       guide_tables=member["guide_tables"]))
train(
    member["config"],
    member["data"],
    member["out_dir"],
    guide_checkpoints=member["guides"],
    guide_tables=member["guide_tables"],
    progress=False,
    # Killed with SIGKILL, Snakemake cannot stop its trainers: each stops once it sees Snakemake
    # gone and leaves its resume state, so that the rerun resumes instead of retraining.
    watch_pid=workflow_ancestor_pid(),
)
