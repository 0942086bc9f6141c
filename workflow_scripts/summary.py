"""Adapter: rule summary -> dgkd_core.reporting.summary (results/summary.html)."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core.reporting import summary

inp = snakemake.input
summary.write_summary(inp.students, inp.methods_png, inp.curves_png, snakemake.config,
                      snakemake.output.page)
