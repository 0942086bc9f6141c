"""Adapter: rule ablation_keep_prob -> dgkd_core.report.keep_prob_table and dgkd_core.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core import plots, report

out = snakemake.output
table = report.keep_prob_table(report.load_runs(snakemake.input.students))
report.write_table(table, out.table, out.table_md, "Ablation: stochastic DGKD's keep probability")
plots.keep_prob_figure(table, [out.figure_png, out.figure_pdf])
