"""Adapter: rule ablation_grid -> dgkd_core.reporting.grid (table, heat map, choice on validation)."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core.reporting import grid

out = snakemake.output
table = grid.grid_table(grid.grid_runs(snakemake.input.students))
grid.write_grid(table, out.table, out.table_md)
grid.heatmap_figure(table, [out.figure_png, out.figure_pdf])
