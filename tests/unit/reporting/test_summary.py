"""The summary page (dgkd_core.reporting.summary) from a tiny fake results folder: every section
there, every figure embedded, nothing it needs from outside the file."""

from __future__ import annotations

import base64
import re

from test_reproduction import write_table1_runs  # the same hand-made runs, worked by hand

from dgkd_core.reporting import plots, reproduction, summary, tables


def test_summary_page_has_every_section_and_needs_nothing_beside_it(tmp_path):
    metrics = write_table1_runs(tmp_path)
    runs = tables.load_runs(metrics)
    table1 = tables.table1(runs)
    methods, curves = tmp_path / "methods.png", tmp_path / "curves.png"
    plots.methods_figure(table1, [methods], runs=runs)
    plots.methods_figure(table1, [curves])  # any PNG will do
    config = {"seeds": [20, 31, 55], "hyperparameters": {"defaults": {"epochs": 160}}}
    out = summary.write_summary(metrics, methods, curves, config, tmp_path / "summary.html",
                                commit="abc123def, clean tree")
    page = out.read_text(encoding="utf-8")

    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    for title in ("Table 1", "Paired differences", "Figures", "Provenance", "Recipe"):
        assert f"<h2>{title}</h2>" in page, title
    assert page.index("<h2>Table 1</h2>") < page.index("<h2>Paired differences</h2>")
    assert "(n = 3 seeds)" in page
    # Table 1's pivot, bold as publish marks it: DGKD and stochastic DGKD tie here
    assert ">Stochastic DGKD (p=0.75)</th>" in page and "† A tie" in page
    # reproduction's differences: DGKD − TAKD is +1.1, +0.8, +1.2 by seed
    dgkd_takd = reproduction.paired_difference(runs, "dgkd", "takd")
    assert "<td>DGKD − TAKD</td>" in page
    assert reproduction.interval_text(dgkd_takd) in page
    assert "seed 20: +1.10, seed 31: +0.80, seed 55: +1.20" in page
    # the figures inside the page, as PNGs
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert base64.b64decode(images[0]) == methods.read_bytes()
    # provenance and recipe
    for needle in ("abc123def, clean tree", "NVIDIA H200", "torch 2.11.0", "abc123",
                   "Runs finished", "epochs: 160", "- 55"):
        assert needle in page, needle
    # self-contained: no script, nothing fetched from elsewhere
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert not re.search(r'(?:src|href)="(?!data:)', page)
