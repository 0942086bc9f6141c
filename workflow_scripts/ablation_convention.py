"""Adapter: rule ablation_convention -> dgkd_core.reporting.tables.convention_table and dgkd_core.reporting.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core.reporting import plots, tables

out = snakemake.output
table = tables.convention_table(tables.load_runs(snakemake.input.students))
tables.write_table(table, out.table, out.table_md, "Ablation: the loss convention")
plots.convention_figure(table, [out.figure_png, out.figure_pdf])
