# Tables and figures from the runs' metrics.json/history.csv (dgkd_core.reporting.tables, dgkd_core.reporting.plots).
# Cheap: they run where Snakemake runs.


localrules:
    summary,
    table1,
    ablation_num_tas,
    ablation_keep_prob,
    ablation_convention,
    ablation_grid,


# The one page to show, first in the report (its category sorts first).
rule summary:
    input:
        students=run_files(PLAN.table1_runs(), "metrics.json"),
        methods_png=paths.figure_file("methods", "png"),
        curves_png=paths.figure_file("learning_curves", "png"),
    output:
        page=report(
            paths.summary_file(),
            caption="../report/summary.rst",
            category="1. Summary",
        ),
    log:
        paths.log_file("summary"),
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/summary.py"


rule table1:
    input:
        students=run_files(PLAN.table1_runs(), "metrics.json"),
        student_histories=run_files(PLAN.table1_runs(), "history.csv"),
        guides=run_files(PLAN.table1_guide_runs(), "metrics.json"),
    output:
        table=report(
            paths.table_file("table1", "csv"),
            caption="../report/table1.rst",
            category="2. Table 1",
        ),
        table_md=paths.table_file("table1", "md"),
        table_html=report(
            paths.table_file("table1", "html"),
            caption="../report/table1_html.rst",
            category="2. Table 1",
        ),
        table_tex=paths.table_file("table1", "tex"),
        guides=report(
            paths.table_file("guides", "csv"),
            caption="../report/guides.rst",
            category="2. Table 1",
        ),
        guides_md=paths.table_file("guides", "md"),
        runs=report(
            paths.table_file("runs", "csv"),
            caption="../report/runs.rst",
            category="2. Table 1",
        ),
        config=report(
            paths.table_file("config", "yaml"),
            caption="../report/config.rst",
            category="5. Configuration",
        ),
        methods_png=report(
            paths.figure_file("methods", "png"),
            caption="../report/methods.rst",
            category="3. Figures",
        ),
        methods_pdf=paths.figure_file("methods", "pdf"),
        curves_png=report(
            paths.figure_file("learning_curves", "png"),
            caption="../report/learning_curves.rst",
            category="3. Figures",
        ),
        curves_pdf=paths.figure_file("learning_curves", "pdf"),
    log:
        paths.log_file("table1"),
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/table1.py"


rule ablation_num_tas:
    input:
        students=get_ablation_metrics("num_tas"),
    output:
        table=report(
            paths.table_file("ablations/num_tas", "csv"),
            caption="../report/ablation_num_tas.rst",
            category="4. Ablations",
        ),
        table_md=paths.table_file("ablations/num_tas", "md"),
        figure_png=report(
            paths.figure_file("ablation_num_tas", "png"),
            caption="../report/ablation_num_tas.rst",
            category="4. Ablations",
        ),
        figure_pdf=paths.figure_file("ablation_num_tas", "pdf"),
    log:
        paths.log_file("ablation_num_tas"),
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/ablation_num_tas.py"


rule ablation_keep_prob:
    input:
        students=get_ablation_metrics("keep_prob"),
    output:
        table=report(
            paths.table_file("ablations/keep_prob", "csv"),
            caption="../report/ablation_keep_prob.rst",
            category="4. Ablations",
        ),
        table_md=paths.table_file("ablations/keep_prob", "md"),
        figure_png=report(
            paths.figure_file("ablation_keep_prob", "png"),
            caption="../report/ablation_keep_prob.rst",
            category="4. Ablations",
        ),
        figure_pdf=paths.figure_file("ablation_keep_prob", "pdf"),
    log:
        paths.log_file("ablation_keep_prob"),
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/ablation_keep_prob.py"


rule ablation_convention:
    input:
        students=get_ablation_metrics("convention"),
    output:
        table=report(
            paths.table_file("ablations/convention", "csv"),
            caption="../report/ablation_convention.rst",
            category="4. Ablations",
        ),
        table_md=paths.table_file("ablations/convention", "md"),
        figure_png=report(
            paths.figure_file("ablation_convention", "png"),
            caption="../report/ablation_convention.rst",
            category="4. Ablations",
        ),
        figure_pdf=paths.figure_file("ablation_convention", "pdf"),
    log:
        paths.log_file("ablation_convention"),
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/ablation_convention.py"


rule ablation_grid:
    input:
        students=get_ablation_metrics("grid"),
    output:
        table=report(
            paths.table_file("ablations/grid", "csv"),
            caption="../report/ablation_grid.rst",
            category="4. Ablations",
        ),
        table_md=paths.table_file("ablations/grid", "md"),
        figure_png=report(
            paths.figure_file("ablation_grid", "png"),
            caption="../report/ablation_grid.rst",
            category="4. Ablations",
        ),
        figure_pdf=paths.figure_file("ablation_grid", "pdf"),
    log:
        paths.log_file("ablation_grid"),
    conda:
        "../environment.yml"
    script:
        "../workflow_scripts/ablation_grid.py"
