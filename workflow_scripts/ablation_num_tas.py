"""Adapter: rule ablation_num_tas -> dgkd_core.report.num_tas_table and dgkd_core.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core import plots, report

out = snakemake.output
table = report.num_tas_table(report.load_runs(snakemake.input.students))
report.write_table(table, out.table, out.table_md, "Ablation: number of TAs (TAKD vs DGKD)")
plots.num_tas_figure(table, [out.figure_png, out.figure_pdf])
