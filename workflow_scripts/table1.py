"""Adapter: rule table1 -> dgkd_core.reporting.tables (Table 1, the guides' table), dgkd_core.reporting.publish
(HTML, LaTeX, every run, the resolved config) and dgkd_core.reporting.plots."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from dgkd_core.reporting import plots, publish, tables

inp, out = snakemake.input, snakemake.output
students = tables.load_runs(inp.students)
table1 = tables.table1(students)
tables.write_table(table1, out.table, out.table_md, "Table 1: student top-1 accuracy",
                   note=publish.table1_pivot_markdown(table1, students))
publish.write_table1_html(table1, students, out.table_html)
publish.write_table1_latex(table1, students, out.table_tex)
tables.write_table(tables.guides_table(tables.load_runs(inp.guides)), out.guides,
                   out.guides_md, "Teachers and teacher assistants: top-1 accuracy")
publish.write_runs(inp.students, inp.guides, out.runs)
publish.write_config(snakemake.config, out.config)
plots.methods_figure(table1, [out.methods_png, out.methods_pdf], runs=students)
plots.learning_curves_figure(tables.learning_curves(students), [out.curves_png, out.curves_pdf])
