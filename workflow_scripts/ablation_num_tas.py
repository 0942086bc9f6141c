"""Adapter: rule ablation_num_tas -> dgkd_core.reporting.tables.num_tas_table and dgkd_core.reporting.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core.reporting import plots, tables

out = snakemake.output
table = tables.num_tas_table(tables.load_runs(snakemake.input.students))
tables.write_table(table, out.table, out.table_md, "Ablation: number of TAs (TAKD vs DGKD)")
plots.num_tas_figure(table, [out.figure_png, out.figure_pdf])
