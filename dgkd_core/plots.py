"""Figures (matplotlib, Agg) from the tables of dgkd_core.report. Each is saved in every format
its output paths name (PNG and PDF in the workflow)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dgkd_core.methods import colour  # noqa: E402
from dgkd_core.report import method_label  # noqa: E402

PAPER_STYLE = {"marker": "x", "color": "black", "linestyle": "none", "markersize": 8,
               "markeredgewidth": 2}


def _save(fig, out_paths) -> None:
    for path in out_paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


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


def _draw_panels(table, draw, out_paths, **size) -> None:
    fig = None
    for fig, ax, part in _panels(table, **size):
        draw(ax, part)
    if fig is None:
        fig, ax = plt.subplots()
        ax.text(0.5, 0.5, "no runs", ha="center", va="center")
    fig.tight_layout()
    _save(fig, out_paths)


def _errors(std: pd.Series) -> np.ndarray:
    return std.fillna(0.0).to_numpy()


def methods_figure(table1: pd.DataFrame, out_paths) -> None:
    """Student top-1 (last epoch, mean ± std over seeds) per method; x marks the paper's."""

    def draw(ax, part):
        x = np.arange(len(part))
        labels = [method_label(m, p) for m, p in zip(part["method"], part["keep_prob"])]
        for xi, row in zip(x, part.itertuples()):
            ax.errorbar(xi, row.top1_last_mean, yerr=0.0 if pd.isna(row.top1_last_std)
                        else row.top1_last_std, marker="o", markersize=7, capsize=5,
                        color=colour(row.method))
        if part["paper_top1"].notna().any():
            ax.plot(x, part["paper_top1"], label="paper", **PAPER_STYLE)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(part) - 0.4)
        ax.set_ylabel("student top-1 % (last epoch)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{ax.get_title()}: {part['student'].iloc[0]}")

    _draw_panels(table1, draw, out_paths)


def learning_curves_figure(curves: pd.DataFrame, out_paths) -> None:
    """Test top-1 per epoch for each method's student (mean over seeds, ± std shaded)."""

    def draw(ax, part):
        for (method, keep_prob, _), line in part.groupby(["method", "keep_prob", "lineage"],
                                                         sort=False, dropna=False):
            color = colour(method)
            ax.plot(line["epoch"], line["top1_mean"], label=method_label(method, keep_prob),
                    color=color)
            std = _errors(line["top1_std"])
            ax.fill_between(line["epoch"], line["top1_mean"] - std, line["top1_mean"] + std,
                            color=color, alpha=0.15, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 %")
        ax.legend(fontsize=8)

    _draw_panels(curves, draw, out_paths)


def _label_ablation_panel(ax, part: pd.DataFrame, xlabel: str) -> None:
    """Axis labels, the chain's ends in the title, and the legend of one ablation panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("student top-1 % (last epoch)")
    ax.set_title(f"{ax.get_title()}: {part['teacher'].iloc[0]} → {part['student'].iloc[0]}")
    ax.legend(fontsize=8)


def num_tas_figure(table: pd.DataFrame, out_paths) -> None:
    """Student top-1 against the number of TAs, one line per method; x marks the paper's."""

    def draw(ax, part):
        for method, line in part.groupby("method", sort=False):
            ax.errorbar(line["n_tas"], line["top1_last_mean"], yerr=_errors(line["top1_last_std"]),
                        marker="o", capsize=4, label=method_label(method),
                        color=colour(method))
        paper = part.dropna(subset=["paper_top1"])
        if not paper.empty:
            ax.plot(paper["n_tas"], paper["paper_top1"], label="paper", **PAPER_STYLE)
        ax.set_xticks(sorted(part["n_tas"].unique()))
        _label_ablation_panel(ax, part, "number of TAs")

    _draw_panels(table, draw, out_paths)


def keep_prob_figure(table: pd.DataFrame, out_paths) -> None:
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
        paper = sweep.dropna(subset=["paper_top1"])
        if not paper.empty:
            ax.plot(paper["keep_prob"], paper["paper_top1"], label="paper", **PAPER_STYLE)
        ax.set_xlim(min(sweep["keep_prob"].min(), 1.0) - 0.05, 1.02)
        _label_ablation_panel(ax, part, "keep probability p")

    _draw_panels(table, draw, out_paths)


def convention_figure(table: pd.DataFrame, out_paths) -> None:
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

    _draw_panels(table, draw, out_paths)
