"""Table 1 for a paper and a report (pandas Styler), every run's settings and numbers, and the
resolved workflow config.

    table1_html    Table 1 as a paper-style pivot (dataset · chain × method) and in full, HTML
    table1_latex   the pivot as a booktabs LaTeX table
    table1_marks   which pivot cells are bold: a best method only where its paired per-seed
                   interval against the runner-up excludes 0, both as a tie otherwise
    runs_table     one row per trained model: identity, metrics, every resolved setting

Accuracies are top-1 in percent at the last epoch, mean ± sample std over seeds, as in
dgkd_core.reporting.tables.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import yaml

from dgkd_core.experiment import paths
from dgkd_core.io import atomic_write_text
from dgkd_core.method import registry
from dgkd_core.method.models import model_family
from dgkd_core.reporting import reproduction, tables

# ------------------------------------------------------------------------ the pivot


def _lineage(row) -> tuple[str, ...]:
    """Teacher, TAs, student of a Table 1 row (empty cells are "" in memory, NaN from a CSV)."""
    teacher = row.teacher if isinstance(row.teacher, str) and row.teacher else None
    tas = [t for t in row.tas.split(", ") if t] if isinstance(row.tas, str) else []
    return (*([teacher] if teacher else []), *tas, row.student)


def _fits(lineage: tuple[str, ...], chain: tuple[str, ...]) -> bool:
    """Whether a row belongs to a chain's row of the pivot: it trains the chain's student along
    the whole chain (TAKD, DGKD), from its teacher (KD), or alone (NoKD)."""
    if lineage[-1] != chain[-1]:
        return False
    return len(lineage) == 1 or lineage == chain or (len(lineage) == 2 and lineage[0] == chain[0])


def _pivot_cells(table1: pd.DataFrame):
    """((dataset, chain), method label, sort key, Table 1 row) of each pivot cell. A NoKD or KD
    row goes to every chain with its student (and teacher), as in the paper."""
    for _, part in table1.groupby(["dataset", "family"], sort=False):
        lineages = [_lineage(row) for row in part.itertuples()]
        chains: list[tuple[str, ...]] = []
        for lineage in sorted(lineages, key=len, reverse=True):  # whole chains first
            if not any(_fits(lineage, chain) for chain in chains):
                chains.append(lineage)
        chains.sort(key=lineages.index)
        for chain in chains:
            for row, lineage in zip(part.itertuples(), lineages):
                if _fits(lineage, chain):
                    keep_prob, drop_num = _value(row.keep_prob), _value(row.drop_num)
                    yield ((row.dataset, tables.ARROW.join(chain)),
                           registry.label(row.method, keep_prob, drop_num),
                           (registry.METHODS.index(row.method), keep_prob or 0.0, drop_num or 0),
                           row)


def table1_pivot(table1: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Means and stds (percentage points) of top1_last: rows (dataset, chain as
    `teacher → TA → student`) in first-seen order, columns the method labels in the registry's
    order."""
    cells = list(_pivot_cells(table1))
    rows = list(dict.fromkeys(cell[0] for cell in cells))
    columns = list(dict.fromkeys(cell[1] for cell in sorted(cells, key=lambda c: c[2])))
    means = pd.DataFrame(math.nan, index=pd.MultiIndex.from_tuples(
        rows or [("", "")], names=["Dataset", "Chain"]), columns=columns, dtype=float)
    means = means.iloc[:len(rows)]
    means.columns.name = "Method"
    stds = means.copy()
    for key, column, _, row in cells:
        means.loc[key, column], stds.loc[key, column] = row.top1_last_mean, row.top1_last_std
    return means, stds


def table1_marks(table1: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per pivot cell (table1_pivot's shape): "best" where the row's highest mean beats the
    runner-up's by a paired per-seed 95 % interval that excludes 0 (reproduction's), "tie" on
    both where it does not or cannot (fewer than 2 paired seeds), "" elsewhere.
    `runs`: tables.load_runs of the students behind `table1`."""
    means, _ = table1_pivot(table1)
    marks = pd.DataFrame("", index=means.index, columns=means.columns)
    rows = {(key, column): row for key, column, _, row in _pivot_cells(table1)}
    for key, row_means in means.iterrows():
        ranked = row_means.dropna().sort_values(ascending=False, kind="stable").index
        if len(ranked) < 2:
            continue
        best, runner_up = ranked[0], ranked[1]
        difference = reproduction.seed_paired_difference(
            tables.seed_values(runs, rows[key, best]), tables.seed_values(runs, rows[key, runner_up]))
        if reproduction.excludes_zero(difference):
            marks.loc[key, best] = "best"
        else:
            marks.loc[key, [best, runner_up]] = "tie"
    return marks


TIE_MARK = "†"
MARKS_NOTE = ("Bold: the best method of a row, where its paired per-seed difference to the "
              "runner-up (same seeds) has a 95 % t interval that excludes 0. † A tie: the "
              "interval includes 0, or fewer than 2 seeds are paired; both are bold.")


def _value(x):
    """None for a missing keep_prob/drop_num (NaN in a DataFrame)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _pivot_frame(table1: pd.DataFrame, runs: pd.DataFrame, pm: str, missing: str, tie: str,
                 label=str) -> tuple[pd.DataFrame, np.ndarray]:
    """The pivot as text (Dataset and Chain as the first columns, then `mean{pm}std` per
    method, `tie` after a tied one) and where it is bold (table1_marks)."""
    means, stds = table1_pivot(table1)
    marks = table1_marks(table1, runs).to_numpy()
    frame = pd.DataFrame(
        [[label(d), label(c), *(tables.mean_std(m, s, pm, missing) + (tie if k == "tie" else "")
                                for m, s, k in zip(mrow, srow, krow))]
         for (d, c), mrow, srow, krow in zip(means.index, means.to_numpy(), stds.to_numpy(),
                                             marks)],
        columns=["Dataset", "Chain", *(label(c) for c in means.columns)])
    bold = np.hstack([np.zeros((len(frame), 2), dtype=bool), marks != ""])
    return frame, bold


def _styled_pivot(table1, runs, pm: str, missing: str, bold_css: str, tie: str, label=str):
    """The pivot as a Styler, `bold_css` on its bold cells (_pivot_frame). `label` turns a
    dataset, chain or method name into the target's text."""
    frame, bold = _pivot_frame(table1, runs, pm, missing, tie, label)
    css = pd.DataFrame(np.where(bold, bold_css, ""), index=frame.index, columns=frame.columns)
    return frame.style.hide(axis="index").apply(lambda _: css, axis=None)


def table1_pivot_markdown(table1: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The pivot as a Markdown table, bold and ties marked, with MARKS_NOTE below it."""
    frame, bold = _pivot_frame(table1, runs, " ± ", "–", " " + TIE_MARK)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for cells, bolds in zip(frame.to_numpy(), bold):
        cells = [str(c).replace("|", "\\|") for c in cells]
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(cells, bolds))
                     + " |")
    return "\n".join(lines) + "\n\n" + MARKS_NOTE


# --------------------------------------------------------------------------- HTML

_CAPTION = ("Student top-1 accuracy (%, last epoch, mean ± std over seeds) per dataset and "
            "chain (teacher → TAs → student). " + MARKS_NOTE)
_HTML_STYLE = [
    {"selector": "", "props": "border-collapse: collapse; font-family: sans-serif; "
                              "font-size: 14px; margin-bottom: 2em;"},
    {"selector": "caption", "props": "caption-side: top; text-align: left; padding: 6px 0;"},
    {"selector": "th, td", "props": "border-bottom: 1px solid #ccc; padding: 4px 10px;"},
    {"selector": "td", "props": "text-align: right; white-space: nowrap;"},
]


_TEXT_COLUMNS = ["Dataset", "Family", "Method", "Teacher", "TAs", "Student"]


def _details(table1: pd.DataFrame) -> pd.DataFrame:
    """Table 1's rows, readable: who taught whom, seeds, last and best epoch, the paper's."""
    paper = [tables.paper_text(row) for row in table1.itertuples()]
    return pd.DataFrame({
        "Dataset": table1["dataset"], "Family": table1["family"],
        "Method": [registry.label(r.method, _value(r.keep_prob), _value(r.drop_num))
                   for r in table1.itertuples()],
        "Teacher": table1["teacher"], "TAs": table1["tas"], "Student": table1["student"],
        "Seeds": table1["n_seeds"], "Epochs": table1["epochs"],
        "Top-1 % (last epoch, mean ± std)": [tables.mean_std(m, s) for m, s in zip(
            table1["top1_last_mean"], table1["top1_last_std"])],
        "Top-1 % (best epoch, mean; reference only)": table1["top1_best_epoch_mean"],
        "Paper": paper, "Δ vs paper (last epoch)": table1["diff_vs_paper"],
        "Paper's experiment": table1["paper_source"],
    })


def table1_html(table1: pd.DataFrame, runs: pd.DataFrame) -> str:
    """A standalone HTML page (UTF-8): the pivot, then every row of Table 1 in full.
    `runs`: tables.load_runs of the students (the paired intervals behind the bold)."""
    body = table1_html_tables(table1, runs)
    return ('<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>Table 1</title>\n'
            f'</head>\n<body>\n{body}\n</body>\n</html>\n')


def table1_html_tables(table1: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The pivot and Table 1 in full as two HTML tables (for a page of one's own)."""
    pivot_html = (_styled_pivot(table1, runs, " ± ", "–", "font-weight: bold;", " " + TIE_MARK)
                  .format(escape="html").format_index(escape="html", axis=1)
                  .set_properties(subset=["Dataset", "Chain"], **{"text-align": "left"})
                  .set_caption(_CAPTION).set_table_styles(_HTML_STYLE).to_html())
    details_html = (_details(table1).style.hide(axis="index")
                    .format(precision=2, na_rep="", escape="html")
                    .format("{:+.2f}", subset=["Δ vs paper (last epoch)"], na_rep="")
                    .set_properties(subset=_TEXT_COLUMNS, **{"text-align": "left"})
                    .set_caption("Table 1 in full: one row per (dataset, family, method, "
                                 "student); the best epoch is for reference only (the test set "
                                 "never picks a model).")
                    .set_table_styles(_HTML_STYLE).to_html())
    return f"{pivot_html}\n{details_html}"


# -------------------------------------------------------------------------- LaTeX

_LATEX_SPECIAL = str.maketrans({c: "\\" + c for c in "_&%#$"} | {
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}"})


def _tex(text: str) -> str:
    return str(text).translate(_LATEX_SPECIAL)


def table1_latex(table1: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The pivot as a LaTeX table (needs \\usepackage{booktabs}); bold and ties as in
    table1_marks."""
    def label(text: str) -> str:
        return r" $\rightarrow$ ".join(_tex(part) for part in text.split(tables.ARROW))

    styler = _styled_pivot(table1, runs, r" $\pm$ ", "--", "textbf: --rwrap;", r"$^\dagger$",
                           label)
    caption = (_tex(_CAPTION).replace("±", r"$\pm$").replace("→", r"$\rightarrow$")
               .replace(TIE_MARK, r"$^\dagger$"))
    return styler.to_latex(hrules=True, column_format="l" * 2 + "c" * (len(styler.columns) - 2),
                           caption=caption, label="tab:table1", position_float="centering")


# -------------------------------------------------------------------- every run


def _flatten(mapping: dict, prefix: str = "") -> dict:
    """Nested dicts to dotted keys (`optimizer.lr`); lists as JSON text, for one CSV cell."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def runs_table(student_paths, guide_paths) -> pd.DataFrame:
    """One row per trained model (metrics.json paths): role (student, ta, teacher), identity
    from the path, every metric (accuracies in %, times in s, img_per_s), then every resolved
    setting of its run config as a dotted column under one prefix, `config.` (`config.optimizer.lr`,
    `config.batch_size`; `config.device`: asked for, `device`: what ran)."""
    rows = []
    for is_student, metrics_paths in ((True, student_paths), (False, guide_paths)):
        for path in metrics_paths:
            run = paths.run_from_path(path)
            metrics = tables.read_metrics(path)
            row = {"role": "student" if is_student else
                   ("teacher" if len(run.lineage) == 1 else "ta"),
                   "dataset": run.dataset, "family": model_family(run.model),
                   "method": run.method, "keep_prob": run.keep_prob, "drop_num": run.drop_num,
                   "lineage": run.lineage_str, "model": run.model, "seed": run.seed,
                   "metrics_file": str(path)}
            settings = metrics.get("config", {})
            # `reported` is the same sentence in every file: what top1_last means
            for key, value in _flatten({k: v for k, v in metrics.items()
                                        if k not in ("config", "reported")}).items():
                row.setdefault(key, value)  # dataset/model/seed/method: the path's, the same
            for key, value in _flatten(settings).items():
                row[f"config.{key}"] = value
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ writing


def write_table1_html(table1: pd.DataFrame, runs: pd.DataFrame, path) -> None:
    atomic_write_text(table1_html(table1, runs), path)


def write_table1_latex(table1: pd.DataFrame, runs: pd.DataFrame, path) -> None:
    atomic_write_text(table1_latex(table1, runs), path)


def write_runs(student_paths, guide_paths, path) -> None:
    atomic_write_text(runs_table(student_paths, guide_paths).to_csv(index=False), path)


def config_yaml(config: dict) -> str:
    """The workflow config as Snakemake resolved it (`snakemake.config`), as YAML text."""
    return yaml.safe_dump(_plain(config), sort_keys=False)


def write_config(config: dict, path) -> None:
    header = ("# The workflow config as Snakemake resolved it (every --configfile merged in "
              "order,\n# then --config), when Table 1 was last written; config/schema.yaml's "
              "defaults\n# apply to the keys it leaves out.\n")
    atomic_write_text(header + config_yaml(config), path)


def _plain(value):
    """Snakemake's config objects as plain dicts and lists, for yaml.safe_dump."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
