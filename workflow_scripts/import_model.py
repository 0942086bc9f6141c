"""Adapter: rule import_model -> dgkd_core.experiment.importing.import_planned_run (one model from a file)."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

import torch

from dgkd_core.cli import setup_logging
from dgkd_core.experiment.importing import ImportFailed, import_planned_run

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
try:
    import_planned_run(snakemake.config, snakemake.output.model, snakemake.input.data,
                       snakemake.params.source_sha256)
except ImportFailed as err:
    print(f"error: {err}")  # one line in the job log; the message names the file and why
    sys.exit(1)
