"""What a workflow job trains, from its own params: no job builds a Plan.

    for member in training_job(snakemake):   # rules train_model (one member) and train_fused_*
        train(member["config"], member["data"], member["out_dir"], ...)

rules/common.smk gives each training rule, per output model.pt in order (member), its resolved
run config (`run_configs`), its guides' model.pt files, teacher first (`member_guides`), and per
guide its table or None where the guide runs inline (`member_guide_tables`).
"""

from __future__ import annotations

import copy
import os

from dgkd_core.experiment import paths
from dgkd_core.runtime import job_time_budget_s

__all__ = ["training_job"]


def training_job(snakemake) -> list[dict]:
    """The members of a training job (its Snakemake object): per output model.pt, a dict of
    `config` (the run config, with the run's TensorBoard folder and the job's time budget in
    seconds, None outside SLURM), `data`, `out_dir`, `guides` (files) and `guide_tables` (a file
    or None per guide)."""
    params = snakemake.params
    budget = job_time_budget_s(snakemake.resources.runtime)
    members = []
    # A named output of one file is that file, of several a list of them.
    model_files = snakemake.output.model
    model_files = [model_files] if isinstance(model_files, str) else list(model_files)
    for model_file, run_config, guides, tables in zip(
            model_files, params.run_configs, params.member_guides,
            params.member_guide_tables, strict=True):
        config = copy.deepcopy(run_config)
        # One tree of every run's events: `tensorboard --logdir results/tensorboard` compares them.
        config["logging"]["tensorboard_dir"] = paths.run_from_path(model_file).tensorboard_dir
        if budget is not None:
            config["time_budget_s"] = budget
        members.append({"config": config, "data": snakemake.input.data,
                        "out_dir": os.path.dirname(model_file), "guides": list(guides),
                        "guide_tables": list(tables)})
    return members
