"""Adapter: rule ablation_convention -> dgkd_core.report.convention_table and dgkd_core.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core import plots, report

out = snakemake.output
table = report.convention_table(report.load_runs(snakemake.input.students))
report.write_table(table, out.table, out.table_md, "Ablation: the loss convention")
plots.convention_figure(table, [out.figure_png, out.figure_pdf])
