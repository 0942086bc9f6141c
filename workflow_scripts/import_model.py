"""Adapter: rule import_model -> dgkd_core.experiment.importing.import_model (one model from a file)."""

import os
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

import torch

from dgkd_core.cli import setup_logging
from dgkd_core.experiment.importing import ImportFailed, import_model

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
try:
    import_model(snakemake.params.source, snakemake.input.data,
                 os.path.dirname(snakemake.output.model), cfg=snakemake.params.run_config,
                 key=snakemake.params.source_key, expected_sha256=snakemake.params.source_sha256)
except ImportFailed as err:
    print(f"error: {err}")  # one line in the job log; the message names the file and why
    sys.exit(1)
