"""Adapter: a fused group's rule (rules/train_fused.smk) -> dgkd_core.training.fused.train_fused (its
members trained together, each from its guides, each to its own outputs)."""

import os
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

import torch

from dgkd_core.cli import setup_logging
from dgkd_core.experiment import paths
from dgkd_core.experiment.plan import job_run_config
from dgkd_core.runtime import job_time_budget_s, workflow_ancestor_pid
from dgkd_core.training.fused import train_fused

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
budget = job_time_budget_s(snakemake.resources.runtime)  # None outside a SLURM job
members = []
for model_file, settings, guides in zip(
    snakemake.output.model,
    snakemake.params.run_settings,
    snakemake.params.member_guides,
):
    run_config = job_run_config(snakemake.config, model_file, settings)
    run_config["logging"]["tensorboard_dir"] = paths.run_from_path(
        model_file
    ).tensorboard_dir
    if budget is not None:
        run_config["time_budget_s"] = budget
    members.append(
        {
            "config": run_config,
            "data": snakemake.input.data,
            "out_dir": os.path.dirname(model_file),
            "guides": guides,
            "guide_tables": paths.guide_tables_for(guides, snakemake.input.guide_tables),
        }
    )
# As train_model's: once Snakemake is gone, every member saves its resume state and stops.
train_fused(members, progress=False, watch_pid=workflow_ancestor_pid())
