"""Wiring only: check the config and build the plan (dgkd_core.experiment.plan), wildcard constraints, and
the rules' input functions. Which runs exist and who guides whom is dgkd_core's business.

A run is one training job (dgkd_core.experiment.paths.Run): dataset, seed, method and lineage. Its output
paths come only from dgkd_core.experiment.paths; its settings only from PLAN.run_config.
"""

import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from dgkd_core.config import TRAINING_CODE_VERSION, semantic_settings
from dgkd_core.experiment import paths
from dgkd_core.experiment.data_inputs import (
    missing_data_input,
    prepared_elsewhere,
    unknown_dataset,
    unknown_target_dataset,
)
from dgkd_core.experiment.fused_groups import fused_groups
from dgkd_core.experiment.plan import Plan
from dgkd_core.schema import ConfigError
from dgkd_core.training import launch

try:
    PLAN = Plan(config, os.path.join(workflow.basedir, "config", "schema.yaml")).check()
except ConfigError as err:
    raise WorkflowError(f"Invalid config: {err}") from None
for warning in PLAN.warnings:
    logger.warning(warning)


wildcard_constraints:
    **paths.WILDCARD_CONSTRAINTS,


# A training job's outputs, log and benchmark as wildcard patterns (dgkd_core.experiment.paths builds them).
RUN_WILDCARDS = ("{dataset}", "{seed}", "{method}", "{lineage}")
SETTINGS = PLAN.config  # the config with the schema's defaults filled in
# A dry run (its flag read from the command line, as the targets below) changes no file.
DRY_RUN = any(
    word in ("--dry-run", "--dryrun")
    or (word[:1] == "-" and word[1:2] != "-" and word[1:].isalpha() and "n" in word[1:])
    for word in sys.argv[1:]
)
if workflow.is_main_process:  # not again in each job's own Snakemake
    for _name in SETTINGS["datasets"]:
        if _stale := prepared_elsewhere(_name, PLAN.dataset_identity(_name)):
            logger.warning(f"Warning: {_stale}")
            if not DRY_RUN:
                os.remove(paths.data_file(_name))
if missing := missing_data_input(SETTINGS["datasets"]):
    raise WorkflowError(f"Missing input: {missing}")
# Snakemake tells a Snakefile its targets only after reading it, so the command line's words are
# looked at here; a target found otherwise gets the same line from dataset_spec.
if workflow.is_main_process and (
    unknown := unknown_target_dataset(sys.argv[1:], SETTINGS["datasets"])
):
    raise WorkflowError(unknown)
# The lineages of imported runs go to import_model, every other one to train_model.
IMPORTED_LINEAGE = paths.lineage_constraint(PLAN.imported_lineages(), matching=True)
TRAINED_LINEAGE = paths.lineage_constraint(PLAN.imported_lineages(), matching=False)
# Runs trained together, one job per group (rules/train_fused.smk); [] with fuse: false.
FUSED_GROUPS = fused_groups(PLAN)


def dataset_spec(name):
    """The config's entry for dataset `name`; one line for a target of a dataset it lacks."""
    if unknown := unknown_dataset(name, SETTINGS["datasets"]):
        raise WorkflowError(unknown)
    return SETTINGS["datasets"][name]


def run_of(wildcards):
    """The run a job's wildcards name; refuses a non-canonical path."""
    dataset_spec(wildcards.dataset)
    run = paths.run_from_wildcards(
        wildcards.dataset, wildcards.seed, wildcards.method, wildcards.lineage
    )
    if run.method_dir != wildcards.method:
        raise WorkflowError(
            f"{wildcards.method}/{wildcards.lineage} is the run "
            f"{run.method_dir}/{run.lineage_str}; ask for that path"
        )
    return run


def run_files(runs, name):
    return [run.file(name) for run in runs]


def all_targets():
    return PLAN.targets()


def get_guide_checkpoints(wildcards):
    return run_files(PLAN.guides(run_of(wildcards)), "model.pt")


def aligned_guide_tables(run):
    """Per guide of `run` (teacher first): the table it looks up, or None where the guide
    runs inline (Plan.guide_tables)."""
    return [
        None if guide is None else guide.file(paths.GUIDE_TABLE_FILE)
        for guide in PLAN.guide_tables(run)
    ]


def get_guide_tables(wildcards):
    """The tables of the guides this run looks up instead of running: the DAG's inputs."""
    return [f for f in aligned_guide_tables(run_of(wildcards)) if f is not None]


def get_table_settings(wildcards):
    """What a guide's table computes with (the rerun params of rule guide_table)."""
    cfg = PLAN.table_config(run_of(wildcards))
    return {key: cfg[key] for key in ("normalize", "fast")}


# A job's untracked params: Snakemake reruns a job when a param changes, except a param derived
# from the job's input or output (a function taking `output`). What a job needs but must not
# rerun it (eval_batch_size, device, an imported file's path), or what its inputs already
# track (the guide tables), goes there, so that no job rebuilds the plan to find it.


def untracked(value):
    """A param that is `value` and no rerun trigger."""

    def param(wildcards, output):
        return value

    return param


def get_table_config(wildcards, output):
    """The run config the guide's table is built with (Plan.table_config)."""
    return PLAN.table_config(run_of(wildcards))


def get_run_configs(wildcards, output):
    """train_model's one member's resolved run config (dgkd_core.experiment.jobs)."""
    return [PLAN.run_config(run_of(wildcards))]


def get_member_guides(wildcards, output):
    return [run_files(PLAN.guides(run_of(wildcards)), "model.pt")]


def get_member_guide_tables(wildcards, output):
    return [aligned_guide_tables(run_of(wildcards))]


def get_import_run_config(wildcards, output):
    return PLAN.run_config(run_of(wildcards))


def get_import_source(wildcards, output):
    """The imported file (its path is no rerun trigger: moving it reruns nothing)."""
    return PLAN.import_source(run_of(wildcards))


def get_import_key(wildcards, output):
    return PLAN.import_key(run_of(wildcards))


def guide_table_output(path):
    """A guide table is temporary (removed after its last user) unless keep_guide_tables."""
    return path if SETTINGS["keep_guide_tables"] else temp(path)


def fused_guide_checkpoints(group):
    """Every guide of a fused group's members, each once."""
    files = [f for run in group.runs for f in run_files(PLAN.guides(run), "model.pt")]
    return list(dict.fromkeys(files))


def fused_guide_tables(group):
    """Every guide table a fused group's members look up, each once."""
    files = [
        f for run in group.runs for f in aligned_guide_tables(run) if f is not None
    ]
    return list(dict.fromkeys(files))


def get_run_settings(wildcards):
    """What the job computes, as its rerun params; the job's adapter adds the settings that
    cannot change a result (eval_batch_size, device), so changing those reruns nothing.
    """
    return semantic_settings(PLAN.run_config(run_of(wildcards)))


def get_import_sha256(wildcards):
    """The imported file's content, the import job's rerun param (not its path)."""
    return PLAN.import_sha256(run_of(wildcards))


def get_runtime_minutes(wildcards):
    return SETTINGS["resources"]["runtime_minutes"][PLAN.role(run_of(wildcards))]


def get_job_resource(name):
    """A training job's `name` resource (gpu, tasks, tasks_per_gpu, mpi) from its GPUs,
    `resources.gpus_per_job` (dgkd_core.training.launch)."""

    def get(wildcards):
        run = run_of(wildcards)
        gpus = launch.gpus_per_job(
            SETTINGS["resources"], PLAN.role(run), wildcards.dataset
        )
        return launch.slurm_resources(gpus)[name]

    return get


def one_gpu(run):
    """The `gpu` resource of a one-GPU job for `run` (a guide table, a fused group): 1, or
    none where `resources.gpus_per_job` is 0 there (GPUs given by the profile's gres).
    """
    gpus = launch.gpus_per_job(SETTINGS["resources"], PLAN.role(run), run.dataset)
    return launch.slurm_resources(min(gpus, 1))["gpu"]


def get_one_gpu(wildcards):
    return one_gpu(run_of(wildcards))


def get_dataset_archive(wildcards):
    return dataset_spec(wildcards.dataset)["archive"]


def get_prepare_input(wildcards):
    """The unpacked archive, for a dataset given as one; nothing otherwise."""
    if dataset_spec(wildcards.dataset).get("archive"):
        return paths.extracted_dir(wildcards.dataset)
    return []


def get_dataset_identity(wildcards):
    dataset_spec(wildcards.dataset)
    return PLAN.dataset_identity(wildcards.dataset)


def get_ablation_metrics(name):
    """Input function: the ablation's runs' metrics.json (an error if it is not configured)."""

    def metrics(wildcards):
        try:
            return run_files(PLAN.ablation_runs(name), "metrics.json")
        except ConfigError as err:
            raise WorkflowError(str(err)) from None

    return metrics
