"""Adapter: rule train_model -> dgkd_core.training.trainer.train (one model, from its guides)."""

import os
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

import torch

from dgkd_core.cli import setup_logging
from dgkd_core.experiment import paths
from dgkd_core.experiment.plan import job_run_config
from dgkd_core.runtime import job_time_budget_s, workflow_ancestor_pid
from dgkd_core.training.launch import run_ranks
from dgkd_core.training.trainer import train

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_config = job_run_config(snakemake.config, snakemake.output.model, snakemake.params.run_settings)
# One tree of every run's events, so that `tensorboard --logdir results/tensorboard` compares them.
run = paths.run_from_path(snakemake.output.model)
run_config["logging"]["tensorboard_dir"] = run.tensorboard_dir
budget = job_time_budget_s(snakemake.resources.runtime)  # None outside a SLURM job
if budget is not None:
    run_config["time_budget_s"] = budget
out_dir = os.path.dirname(snakemake.output.model)
guide_tables = paths.guide_tables_for(snakemake.input.guides, snakemake.input.guide_tables)
# tasks: set only for a job of several GPUs (resources.gpus_per_job; dgkd_core/training/launch.py)
ranks = getattr(snakemake.resources, "tasks", None) or 1
if ranks > 1:  # data-parallel: srun in a SLURM job, else torchrun, starts the ranks
    sys.exit(run_ranks(ranks, run_config, snakemake.input.data, out_dir,
                       list(snakemake.input.guides), log_file=snakemake.log[0],
                       guide_tables=guide_tables))
train(
    run_config,
    snakemake.input.data,
    out_dir,
    guide_checkpoints=snakemake.input.guides,
    guide_tables=guide_tables,
    progress=False,
    # Killed with SIGKILL, Snakemake cannot stop its trainers: each stops once it sees Snakemake
    # gone and leaves its resume state, so that the rerun resumes instead of retraining.
    watch_pid=workflow_ancestor_pid(),
)
