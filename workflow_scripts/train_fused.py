"""Adapter: a fused group's rule (rules/train_fused.smk) -> dgkd_core.training.fused.train_fused (its
members trained together, each from its guides, each to its own outputs)."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

import torch

from dgkd_core.cli import setup_logging
from dgkd_core.experiment.jobs import training_job
from dgkd_core.runtime import workflow_ancestor_pid
from dgkd_core.training.fused import train_fused

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
# As train_model's: once Snakemake is gone, every member saves its resume state and stops.
train_fused(training_job(snakemake), progress=False, mechanism=snakemake.params.mechanism,
            watch_pid=workflow_ancestor_pid())
