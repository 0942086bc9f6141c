"""Figures (dgkd_core.reporting.plots): accuracy axes never magnify a difference smaller than the spread,
the methods figure shows each seed, the learning curves get one panel per method."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection

from dgkd_core.reporting import plots

METHODS = [("nokd", None), ("kd", None), ("takd", None), ("dgkd", None), ("sdgkd", 0.75)]


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def span(ax) -> float:
    lo, hi = ax.get_ylim()
    return hi - lo


# ------------------------------------------------------------------------ the helper


def test_helper_widens_a_narrow_axis_around_the_data():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [39.30, 39.40])
    lo, hi = plots.set_accuracy_ylim(ax, stds=[0.02, float("nan")])
    assert hi - lo == pytest.approx(plots.MIN_SPAN_PP)
    assert (lo + hi) / 2 == pytest.approx(39.35, abs=1e-6)  # centred on the data
    plt.close(fig)


def test_helper_uses_four_times_the_largest_std_and_leaves_wide_axes_alone():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [50.0, 50.1])
    assert span(ax) < 1
    plots.set_accuracy_ylim(ax, stds=[0.1, 1.5, None])
    assert span(ax) == pytest.approx(plots.STD_FACTOR * 1.5)
    ax.set_ylim(10, 90)
    assert plots.set_accuracy_ylim(ax, stds=[1.0]) == (10, 90)
    plt.close(fig)


def test_helper_keeps_the_axis_inside_0_to_100():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [99.9, 100.0])
    lo, hi = plots.set_accuracy_ylim(ax)
    assert hi == pytest.approx(100.0) and hi - lo == pytest.approx(plots.MIN_SPAN_PP)
    plt.close(fig)


# ----------------------------------------------------------------------- the figures


def keep_prob_table(values=(39.30, 39.40), std=0.01) -> pd.DataFrame:
    """The keep-probability ablation of the issue: 39.30 at p = 0.5, DGKD 39.40."""
    rows = [{"method": "sdgkd", "keep_prob": 0.5, "top1_last_mean": values[0]},
            {"method": "dgkd", "keep_prob": 1.0, "top1_last_mean": values[1]}]
    for row in rows:
        row.update(dataset="cifar100", family="plane", teacher="plane10", student="plane2",
                   top1_last_std=std, paper_top1=np.nan, n_seeds=2)
    return pd.DataFrame(rows)


def test_keep_prob_figure_does_not_turn_a_tenth_of_a_point_into_a_cliff(tmp_path):
    fig = plots.keep_prob_figure(keep_prob_table(), [tmp_path / "k.png"])
    (ax,) = visible_axes(fig)
    assert span(ax) >= plots.MIN_SPAN_PP
    lo, hi = ax.get_ylim()
    assert lo < 39.30 and hi > 39.40


def test_keep_prob_figure_draws_a_panel_without_sdgkd_and_an_empty_table(tmp_path):
    table = keep_prob_table()
    fig = plots.keep_prob_figure(table[table["method"] == "dgkd"], [tmp_path / "d.png"])
    (ax,) = visible_axes(fig)
    assert ax.get_xlim()[0] == pytest.approx(0.95)
    empty = plots.keep_prob_figure(table.iloc[0:0], [tmp_path / "e.png"])
    assert [t.get_text() for t in empty.axes[0].texts] == ["no runs"]
    assert (tmp_path / "d.png").stat().st_size > 0 and (tmp_path / "e.png").stat().st_size > 0


def test_every_accuracy_figure_spans_at_least_the_minimum(tmp_path):
    base = {"dataset": "c", "family": "plane", "teacher": "plane10", "student": "plane2",
            "top1_last_std": 0.05, "paper_top1": np.nan, "n_seeds": 2}
    num_tas = pd.DataFrame([{**base, "method": m, "n_tas": n, "top1_last_mean": 40 + n / 20}
                            for m in ("takd", "dgkd") for n in (0, 2)])
    convention = pd.DataFrame([{**base, "method": m, "convention": c, "top1_last_mean": 40.0}
                               for m in ("kd", "dgkd") for c in ("paper", "released_code")])
    for fig in (plots.num_tas_figure(num_tas, []), plots.convention_figure(convention, []),
                plots.methods_figure(table1_like(), [])):
        for ax in visible_axes(fig):
            assert span(ax) >= plots.MIN_SPAN_PP


def table1_like() -> pd.DataFrame:
    rows = []
    for i, (method, p) in enumerate(METHODS):
        rows.append({"dataset": "c", "family": "plane", "method": method, "keep_prob": p,
                     "drop_num": None, "teacher": "" if method == "nokd" else "plane10",
                     "tas": "plane6" if method not in ("nokd", "kd") else "",
                     "student": "plane2", "top1_last_mean": 40.0 + i * 0.05,
                     "top1_last_std": 0.05, "paper_top1": np.nan, "n_seeds": 2})
    return pd.DataFrame(rows)


def seed_runs(table: pd.DataFrame, seeds=(20, 31, 55)) -> pd.DataFrame:
    """report.load_runs-like rows: one per seed of each Table 1 row."""
    runs = table.rename(columns={"student": "model"}).drop(
        columns=["top1_last_mean", "top1_last_std", "paper_top1", "n_seeds"])
    return pd.concat([runs.assign(seed=s, top1_last=40.0 + k) for k, s in enumerate(seeds)],
                     ignore_index=True)


def test_methods_figure_shows_every_seed_as_a_dot(tmp_path):
    table = table1_like()
    fig = plots.methods_figure(table, [tmp_path / "m.png"], runs=seed_runs(table))
    (ax,) = visible_axes(fig)
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(dots) == len(METHODS)  # one scatter per method ...
    assert sum(len(c.get_offsets()) for c in dots) == 3 * len(METHODS)  # ... a dot per seed
    assert sorted(dots[0].get_offsets()[:, 1]) == [40.0, 41.0, 42.0]
    assert (tmp_path / "m.png").stat().st_size > 0
    # without the runs: mean ± std only
    fig = plots.methods_figure(table, [])
    assert not [c for c in visible_axes(fig)[0].collections if isinstance(c, PathCollection)]


def curves(datasets=("c",), epochs=20) -> pd.DataFrame:
    rows = []
    for dataset in datasets:
        for k, (method, p) in enumerate(METHODS):
            for epoch in range(1, epochs + 1):
                rows.append({"dataset": dataset, "family": "plane", "method": method,
                             "keep_prob": np.nan if p is None else p,
                             "lineage": "plane10-plane2", "epoch": epoch,
                             "top1_mean": 30 + epoch + k, "top1_std": 0.5, "n_seeds": 2})
    return pd.DataFrame(rows)


def test_learning_curves_have_one_panel_per_method_with_a_light_band(tmp_path):
    fig = plots.learning_curves_figure(curves(datasets=("c", "d")), [tmp_path / "lc.png"])
    axes = visible_axes(fig)
    assert len(axes) == 2 * len(METHODS)  # a row per dataset, a column per method
    assert [ax.get_title() for ax in axes[:5]] == [
        "NoKD", "KD", "TAKD", "DGKD", "Stochastic DGKD (p=0.75)"]
    for ax in axes:
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 1 and bands[0].get_alpha() <= 0.3  # its own ± std, light
        assert len(ax.get_lines()) == len(METHODS)  # its mean, the others' thin and grey
    assert (tmp_path / "lc.png").stat().st_size > 0


def test_flat_learning_curves_get_the_minimum_span():
    flat = curves(epochs=3).assign(top1_mean=50.0, top1_std=0.01)
    fig = plots.learning_curves_figure(flat, [])
    assert all(span(ax) >= plots.MIN_SPAN_PP for ax in visible_axes(fig))


def test_learning_curves_lay_out_at_most_three_panels_per_row(tmp_path):
    fig = plots.learning_curves_figure(curves(datasets=("c", "d")), [])
    columns = {round(ax.get_position().x0, 3) for ax in visible_axes(fig)}
    assert len(columns) == 3  # five methods: rows of 3, then 2
    assert [plots.curve_columns_per_row(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 3, 2, 3, 3]


def test_every_figure_title_says_how_many_seeds(tmp_path):
    base = {"dataset": "c", "family": "plane", "teacher": "plane10", "student": "plane2",
            "top1_last_std": np.nan, "paper_top1": np.nan, "n_seeds": 1}
    num_tas = pd.DataFrame([{**base, "method": m, "n_tas": n, "top1_last_mean": 40 + n}
                            for m in ("takd", "dgkd") for n in (0, 2)])
    convention = pd.DataFrame([{**base, "method": m, "convention": c, "top1_last_mean": 40.0}
                               for m in ("kd", "dgkd") for c in ("paper", "released_code")])
    one_seed = table1_like().assign(n_seeds=1, top1_last_std=np.nan)
    figures = {"n = 1 seed": [plots.num_tas_figure(num_tas, []),
                              plots.convention_figure(convention, []),
                              plots.keep_prob_figure(keep_prob_table(std=np.nan).assign(
                                  n_seeds=1), []),
                              plots.methods_figure(one_seed, [])],
               "n = 2 seeds": [plots.learning_curves_figure(curves(), [])],
               "n = 1–3 seeds": [plots.methods_figure(table1_like().assign(
                   n_seeds=[1, 3, 3, 3, 3]), [])]}
    for text, made in figures.items():
        for fig in made:
            assert f"({text})" in fig._suptitle.get_text()


def test_one_seed_draws_no_zero_width_error_caps():
    one_seed = table1_like().assign(n_seeds=1, top1_last_std=np.nan)
    fig = plots.methods_figure(one_seed, [])
    (ax,) = visible_axes(fig)
    caps = [line for container in ax.containers for line in container.lines[1]]
    assert caps and all(np.isnan(np.asarray(line.get_ydata(), dtype=float)).all()
                        for line in caps)
