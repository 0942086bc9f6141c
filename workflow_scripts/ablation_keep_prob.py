"""Adapter: rule ablation_keep_prob -> dgkd_core.reporting.tables.keep_prob_table and dgkd_core.reporting.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core.reporting import plots, tables

out = snakemake.output
table = tables.keep_prob_table(tables.load_runs(snakemake.input.students))
tables.write_table(table, out.table, out.table_md, "Ablation: stochastic DGKD's keep probability")
plots.keep_prob_figure(table, [out.figure_png, out.figure_pdf])
