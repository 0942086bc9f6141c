"""Adapter: rule guide_table -> dgkd_core.guides.logit_tables.make_guide_table (one guide's table)."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

import torch

from dgkd_core.cli import setup_logging
from dgkd_core.guides.logit_tables import make_guide_table

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
make_guide_table(snakemake.input.model, snakemake.input.data, snakemake.output.table,
                 snakemake.params.table_config)
