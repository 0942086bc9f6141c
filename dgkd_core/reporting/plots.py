"""Figures (matplotlib, Agg) from the tables of dgkd_core.reporting.tables. Each is saved in every format
its output paths name (PNG and PDF in the workflow), and returned (closed) for inspection.

Every accuracy axis goes through `set_accuracy_ylim`: it spans at least MIN_SPAN_PP percentage
points and STD_FACTOR times the largest seed std, so that a difference smaller than the seeds'
spread is never drawn as a cliff."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dgkd_core.method.registry import METHODS, colour  # noqa: E402
from dgkd_core.reporting.tables import method_label, seed_values  # noqa: E402

PAPER_STYLE = {"marker": "x", "color": "black", "linestyle": "none", "markersize": 8,
               "markeredgewidth": 2}
_PUBLISHED_MARKERS = ("x", "+", "1", "*")  # one per published experiment in a panel
MIN_SPAN_PP = 2.0  # percentage points: the narrowest accuracy axis
STD_FACTOR = 4.0  # ... and at least this many of the largest seed std


def set_accuracy_ylim(ax, stds=(), min_span: float = MIN_SPAN_PP,
                      std_factor: float = STD_FACTOR) -> tuple[float, float]:
    """Widen `ax`'s y-axis (accuracy in %, after drawing) to at least `min_span` points and
    `std_factor` × the largest of `stds` (points; NaN ignored), centred on what is drawn, kept
    inside 0–100 where it fits. A wider axis is left as it is. Returns the limits."""
    lo, hi = ax.get_ylim()
    spread = pd.Series(list(np.ravel(np.asarray(stds, dtype=object))), dtype=float).abs()
    need = max(min_span, std_factor * (spread.max() if spread.notna().any() else 0.0))
    if hi - lo >= need:
        return lo, hi
    centre = (lo + hi) / 2
    lo, hi = centre - need / 2, centre + need / 2
    if need <= 100:  # an accuracy lies in [0, 100]: slide the window back rather than pass it
        shift = max(0.0 - lo, 0.0) - max(hi - 100.0, 0.0)
        lo, hi = lo + shift, hi + shift
    ax.set_ylim(lo, hi)
    return lo, hi


def seeds_text(n_seeds) -> str:
    """`n = 2 seeds` (`n = 1–2 seeds` where the plotted means rest on different numbers)."""
    counts = sorted({int(n) for n in pd.Series(list(n_seeds), dtype=float).dropna()})
    if not counts:
        return "n = 0 seeds"
    k = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"n = {k} seed{'' if counts == [1] else 's'}"


def title_seeds(fig, what: str, n_seeds) -> None:
    """The figure's title: what it shows and how many seeds are behind its means."""
    fig.suptitle(f"{what} ({seeds_text(n_seeds)})")


def _save(fig, out_paths):
    for path in out_paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return fig


def _panels(table: pd.DataFrame, width: float = 5.0, height: float = 3.6):
    """A grid of axes: one row per dataset, one column per model family (first-seen order)."""
    datasets = list(dict.fromkeys(table["dataset"]))
    families = list(dict.fromkeys(table["family"]))
    fig, axes = plt.subplots(len(datasets), len(families), squeeze=False,
                             figsize=(width * len(families), height * len(datasets)))
    for i, dataset in enumerate(datasets):
        for j, family in enumerate(families):
            ax = axes[i][j]
            part = table[(table["dataset"] == dataset) & (table["family"] == family)]
            if part.empty:
                ax.set_axis_off()
                continue
            ax.set_title(f"{dataset} · {family}")
            yield fig, ax, part


def _draw_panels(table, draw, out_paths, what: str, **size):
    """`draw(ax, part)` on each panel, the title `what` (n = k seeds), saved to `out_paths`;
    returns the (closed) Figure."""
    fig = None
    for fig, ax, part in (_panels(table, **size) if not table.empty else ()):
        draw(ax, part)
    if fig is None:
        fig = _no_runs()
    else:
        title_seeds(fig, what, table["n_seeds"])
    fig.tight_layout()
    return _save(fig, out_paths)


def _no_runs():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "no runs", ha="center", va="center")
    return fig


def _errors(std: pd.Series) -> np.ndarray:
    """Error bar half-heights; NaN (one seed: no std) draws no bar and no cap."""
    return pd.Series(std, dtype=float).to_numpy()


def _published_marks(ax, xs, part) -> None:
    """The published values of the rows at xs, one marker and legend entry per experiment
    (its protocol's name, `paper_source`), so that two experiments are never one series."""
    xs = np.asarray(xs)
    has = part["paper_top1"].notna().to_numpy()
    names = (part["paper_source"] if "paper_source" in part else pd.Series("", index=part.index))
    for i, name in enumerate(dict.fromkeys(names[has])):
        mine = has & (names == name).to_numpy()
        style = {**PAPER_STYLE, "marker": _PUBLISHED_MARKERS[i % len(_PUBLISHED_MARKERS)]}
        ax.plot(xs[mine], part["paper_top1"].to_numpy()[mine],
                label=f"published: {name}" if name else "published", **style)


def methods_figure(table1: pd.DataFrame, out_paths, runs: pd.DataFrame | None = None):
    """Student top-1 (%, last epoch) per method: mean ± std over seeds, each seed a dot beside
    it (from `runs`, report.load_runs of the students), x the paper's. Returns the Figure."""

    def draw(ax, part):
        x = np.arange(len(part))
        labels = [method_label(m, p) for m, p in zip(part["method"], part["keep_prob"])]
        for xi, row in zip(x, part.itertuples()):
            ax.errorbar(xi, row.top1_last_mean, yerr=_errors([row.top1_last_std]),
                        marker="o", markersize=7, capsize=5, color=colour(row.method))
            seeds = seed_values(runs, row).to_numpy()
            if len(seeds):
                ax.scatter(np.full(len(seeds), xi + 0.22), seeds, s=16, alpha=0.7,
                           color=colour(row.method), edgecolors="none", zorder=3)
        if part["paper_top1"].notna().any():
            _published_marks(ax, x, part)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(part) - 0.4)
        ax.set_ylabel("student top-1 % (last epoch)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{ax.get_title()}: {part['student'].iloc[0]}")
        set_accuracy_ylim(ax, part["top1_last_std"])

    return _draw_panels(table1, draw, out_paths, "Student top-1 per method, mean ± std")


def _curve_columns(curves: pd.DataFrame) -> list[tuple[str, float | None]]:
    """(method, keep_prob) of each learning-curve panel column, in the registry's order."""
    # None for no keep_prob: NaN != NaN would make every row a column of its own
    keys = dict.fromkeys((m, None if pd.isna(p) else float(p))
                         for m, p in zip(curves["method"], curves["keep_prob"]))
    return sorted(keys, key=lambda k: (METHODS.index(k[0]), k[1] or 0.0))


def curve_columns_per_row(n_panels: int) -> int:
    """Panels per row of a learning-curves block: 2 or 3, so the figure stays readable at a
    report's width (4 as 2 × 2, 5 or 6 as rows of 3)."""
    return n_panels if n_panels < 2 else 2 if n_panels in (2, 4) else 3


def learning_curves_figure(curves: pd.DataFrame, out_paths):
    """Test top-1 (%) per epoch, one block of panels per dataset and family, one panel per
    method (2–3 per row): its mean over seeds with a light ± std band, the other methods'
    means as thin grey lines for comparison. Returns the Figure."""
    blocks = list(dict.fromkeys(zip(curves["dataset"], curves["family"])))
    methods = _curve_columns(curves)
    if not blocks:
        return _save(_no_runs(), out_paths)
    per_row = curve_columns_per_row(len(methods))
    block_rows = -(-len(methods) // per_row)
    fig, axes = plt.subplots(len(blocks) * block_rows, per_row, squeeze=False,
                             figsize=(3.4 * per_row, 2.8 * len(blocks) * block_rows))
    for b, (dataset, family) in enumerate(blocks):
        part = curves[(curves["dataset"] == dataset) & (curves["family"] == family)]
        panels = [axes[b * block_rows + k // per_row][k % per_row] for k in range(len(methods))]
        for k, (ax, (method, keep_prob)) in enumerate(zip(panels, methods)):
            _draw_curve_panel(ax, part, method, keep_prob)
            ax.set_title(method_label(method, keep_prob), fontsize=9)
            if k % per_row == 0:
                ax.set_ylabel(f"{dataset} · {family}\ntest top-1 %")
            if k + per_row >= len(methods):  # nothing below it in its block
                ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        _share_accuracy_axis(panels, part["top1_std"])
        for k in range(len(methods), block_rows * per_row):
            axes[b * block_rows + k // per_row][k % per_row].set_axis_off()
    title_seeds(fig, "Test top-1 per epoch, mean ± std", curves["n_seeds"])
    fig.tight_layout()
    return _save(fig, out_paths)


def _share_accuracy_axis(panels, stds) -> None:
    """One accuracy axis for a block's panels: the union of their ranges, then widened."""
    lows, highs = zip(*(ax.get_ylim() for ax in panels))
    for ax in panels:
        ax.set_ylim(min(lows), max(highs))
        set_accuracy_ylim(ax, stds)


def _draw_curve_panel(ax, part: pd.DataFrame, method: str, keep_prob) -> None:
    same = (part["method"] == method) & (
        part["keep_prob"].isna() if pd.isna(keep_prob) else part["keep_prob"] == keep_prob)
    for _, line in part[~same].groupby(["method", "keep_prob", "lineage"], sort=False,
                                       dropna=False):
        ax.plot(line["epoch"], line["top1_mean"], color="0.6", linewidth=0.8, alpha=0.6)
    for _, line in part[same].groupby("lineage", sort=False):
        color, std = colour(method), _errors(line["top1_std"])
        ax.fill_between(line["epoch"], line["top1_mean"] - std, line["top1_mean"] + std,
                        color=color, alpha=0.2, linewidth=0)
        # markers where a curve has too few epochs to show as a line (a one-epoch run: a point)
        ax.plot(line["epoch"], line["top1_mean"], color=color, linewidth=1.8,
                marker="o" if len(line) <= 10 else None, markersize=3)
    ax.grid(alpha=0.3)


def _label_ablation_panel(ax, part: pd.DataFrame, xlabel: str) -> None:
    """Axis labels, the chain's ends in the title, the legend, and the accuracy axis's span of
    one ablation panel."""
    set_accuracy_ylim(ax, part["top1_last_std"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("student top-1 % (last epoch)")
    ax.set_title(f"{ax.get_title()}: {part['teacher'].iloc[0]} → {part['student'].iloc[0]}")
    ax.legend(fontsize=8)


def num_tas_figure(table: pd.DataFrame, out_paths):
    """Student top-1 against the number of TAs, one line per method; x marks the paper's.
    Returns the Figure (as every figure function here)."""

    def draw(ax, part):
        for method, line in part.groupby("method", sort=False):
            ax.errorbar(line["n_tas"], line["top1_last_mean"], yerr=_errors(line["top1_last_std"]),
                        marker="o", capsize=4, label=method_label(method),
                        color=colour(method))
        _published_marks(ax, part["n_tas"], part)
        ax.set_xticks(sorted(part["n_tas"].unique()))
        _label_ablation_panel(ax, part, "number of TAs")

    return _draw_panels(table, draw, out_paths, "Ablation: number of TAs")


def keep_prob_figure(table: pd.DataFrame, out_paths):
    """Stochastic DGKD's student top-1 against the keep probability; DGKD as a reference."""

    def draw(ax, part):
        sweep = part[part["method"] == "sdgkd"]
        ax.errorbar(sweep["keep_prob"], sweep["top1_last_mean"],
                    yerr=_errors(sweep["top1_last_std"]), marker="o", capsize=4,
                    label=method_label("sdgkd"), color=colour("sdgkd"))
        for row in part[part["method"] == "dgkd"].itertuples():
            ax.axhline(row.top1_last_mean, color=colour("dgkd"), linestyle="--",
                       label=f"{method_label('dgkd')} (nothing dropped)")
            if not pd.isna(row.top1_last_std):
                ax.axhspan(row.top1_last_mean - row.top1_last_std,
                           row.top1_last_mean + row.top1_last_std,
                           color=colour("dgkd"), alpha=0.1)
        _published_marks(ax, sweep["keep_prob"], sweep)
        # min(): 1.0 where the panel has DGKD only (no stochastic run finished yet)
        ax.set_xlim(min([*sweep["keep_prob"], 1.0]) - 0.05, 1.02)
        _label_ablation_panel(ax, part, "keep probability p")

    return _draw_panels(table, draw, out_paths, "Ablation: keep probability")


def convention_figure(table: pd.DataFrame, out_paths):
    """Student top-1 of each method under each loss convention: grouped bars, one group per
    method, one bar per convention, seed std as error bars."""

    def draw(ax, part):
        conventions = list(dict.fromkeys(part["convention"]))
        names = list(dict.fromkeys(part["method"]))
        width = 0.8 / max(len(conventions), 1)
        for i, convention in enumerate(conventions):
            rows = part[part["convention"] == convention].set_index("method").reindex(names)
            x = np.arange(len(names)) + (i - (len(conventions) - 1) / 2) * width
            ax.bar(x, rows["top1_last_mean"], width, yerr=_errors(rows["top1_last_std"]),
                   capsize=3, label=convention)
        ax.set_xticks(np.arange(len(names)), [method_label(m) for m in names])
        _label_ablation_panel(ax, part, "method")

    return _draw_panels(table, draw, out_paths, "Ablation: loss convention")
