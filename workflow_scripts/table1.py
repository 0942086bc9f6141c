"""Adapter: rule table1 -> dgkd_core.report (Table 1, the guides' table), dgkd_core.publish
(HTML, LaTeX, every run, the resolved config) and dgkd_core.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core import plots, publish, report

inp, out = snakemake.input, snakemake.output
students = report.load_runs(inp.students)
table1 = report.table1(students)
report.write_table(table1, out.table, out.table_md, "Table 1: student top-1 accuracy")
publish.write_table1_html(table1, out.table_html)
publish.write_table1_latex(table1, out.table_tex)
report.write_table(report.guides_table(report.load_runs(inp.guides)), out.guides,
                   out.guides_md, "Teachers and teacher assistants: top-1 accuracy")
publish.write_runs(inp.students, inp.guides, out.runs)
publish.write_config(snakemake.config, out.config)
plots.methods_figure(table1, [out.methods_png, out.methods_pdf], runs=students)
plots.learning_curves_figure(report.learning_curves(students), [out.curves_png, out.curves_pdf])
