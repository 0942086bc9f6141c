"""The summary page, `results/summary.html`: what a researcher shows an advisor, on one page.

Table 1 (dgkd_core.reporting.publish: bold only where a paired interval says so), the paired
per-seed differences with 95 % intervals and the provenance (dgkd_core.reporting.reproduction),
the figures (dgkd_core.reporting.plots' PNGs, embedded) and the recipe (the resolved config).
One self-contained HTML file: no script, no file beside it, so it opens anywhere and inside
Snakemake's report.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from dgkd_core.io import atomic_write_text
from dgkd_core.reporting import plots, publish, reproduction, tables

_STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1.5em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 2px; }
table { border-collapse: collapse; font-size: 14px; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ccc; padding: 4px 10px; text-align: left; }
td.number { text-align: right; white-space: nowrap; }
figure { margin: 0 0 2em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 14px; color: #444; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 13px; }
.lede { color: #444; }
"""


def _differences_html(runs) -> str:
    """Each chain's paired differences (reproduction.chain_differences) as one HTML table."""
    rows = []
    for (dataset, teacher, student), differences in reproduction.chain_differences(runs):
        chain = f"{dataset}: {teacher or '–'} → … → {student}"
        for d in differences:
            per_seed = ", ".join(f"seed {s}: {v:+.2f}" for s, v in zip(d["seeds"], d["values"]))
            cells = [(chain, ""),  # (text, CSS class)
                     (f"{tables.method_label(d['first'])} − {tables.method_label(d['second'])}",
                      ""), (str(len(d["seeds"])), "number"), (per_seed, ""),
                     (f"{d['mean']:+.2f}", "number"), (reproduction.interval_text(d), "number"),
                     ("yes" if reproduction.excludes_zero(d) else "no", "")]
            rows.append("<tr>" + "".join(f'<td{f" class={c!r}" if c else ""}>'
                                         f"{html.escape(t)}</td>" for t, c in cells) + "</tr>")
    if not rows:
        return "<p>No two methods share a seed: no paired difference to show.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("Chain", "Difference", "Seeds", "Per seed",
                                             "Mean", "95 % t interval", "Excludes 0"))
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _figure_html(png_path, caption: str) -> str:
    data = base64.b64encode(Path(png_path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _provenance_html(metrics_paths, commit: str | None) -> str:
    items = reproduction.provenance(metrics_paths, commit)
    return "<table>\n" + "\n".join(f"<tr><th>{html.escape(what)}</th><td>{html.escape(value)}"
                                   "</td></tr>" for what, value in items) + "\n</table>"


def summary_html(metrics_paths, methods_png, curves_png, config: dict,
                 commit: str | None = None) -> str:
    """The page, from Table 1 students' metrics.json paths, the methods figure and learning
    curves (PNG files) and the resolved workflow config. commit: as reproduction.provenance."""
    metrics_paths = [str(p) for p in metrics_paths]
    runs = tables.load_runs(metrics_paths)
    table1 = tables.table1(runs)
    seeds = plots.seeds_text(table1["n_seeds"])
    sections = [
        ("Table 1", publish.table1_html_tables(table1, runs)),
        ("Paired differences", "<p>Top-1 % points, paired by seed (same dataset, chain and "
         "seed); 95 % interval: mean ± t(0.975, n−1)·sd/√n. An interval that excludes 0 is a "
         "difference larger than the seeds' noise.</p>\n" + _differences_html(runs)),
        ("Figures", _figure_html(methods_png, f"Student top-1 per method, mean ± std ({seeds})")
         + "\n" + _figure_html(curves_png, f"Test top-1 per epoch, mean ± std ({seeds})")),
        ("Provenance", _provenance_html(metrics_paths, commit)),
        ("Recipe", "<p>The workflow config as Snakemake resolved it; config/schema.yaml's "
         "defaults apply to the keys it leaves out.</p>\n<pre>"
         + html.escape(publish.config_yaml(config)) + "</pre>"),
    ]
    body = "\n".join(f"<h2>{title}</h2>\n{content}" for title, content in sections)
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            "<title>DGKD: summary</title>\n"
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>DGKD: summary of the runs</h1>\n"
            '<p class="lede">Student top-1 accuracy (%) on the test set at the last epoch, '
            f"mean ± sample std over seeds ({seeds}). The test set never picks a model.</p>\n"
            f"{body}\n</body>\n</html>\n")


def write_summary(metrics_paths, methods_png, curves_png, config: dict, out,
                  commit: str | None = None) -> Path:
    return atomic_write_text(summary_html(metrics_paths, methods_png, curves_png, config,
                                          commit), out)
