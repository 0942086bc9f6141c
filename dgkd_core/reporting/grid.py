"""The λ × T grid's report: a table and a heat map of the validation top-1, the setting chosen on
validation only, and that one setting's test top-1.

TAKD chose λ, T and the seed by test accuracy (docs/paper.md). Here each grid run holds out a
validation split (`validation_images`), the setting with the best mean validation top-1 over
seeds (at the last epoch, the model that is reported) is chosen, and the test top-1 is shown
for that setting alone, once: the test set plays no part in the choice. Planning the grid's
runs: `ablations.grid` (dgkd_core.experiment.plan), rule ablation_grid.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dgkd_core.reporting import plots  # noqa: E402
from dgkd_core.reporting.tables import ReportError, read_metrics  # noqa: E402

__all__ = ["grid_runs", "grid_table", "heatmap_figure", "select_on_validation", "write_grid"]

KEYS = ["lam", "temperature"]


def grid_runs(metrics_paths) -> pd.DataFrame:
    """One row per run: lam, temperature, seed, val_top1_last (validation), top1_last (test)."""
    rows = []
    for path in metrics_paths:
        metrics = read_metrics(path)
        if "val_top1_last" not in metrics:
            raise ReportError(f"{path} has no validation top-1: the grid chooses on validation, "
                              "so train its runs with validation_images > 0")
        loss = metrics.get("config", {}).get("loss", {})
        rows.append({"lam": loss.get("lam"), "temperature": loss.get("temperature"),
                     "seed": metrics.get("seed"), "val_top1_last": metrics["val_top1_last"],
                     "top1_last": metrics["top1_last"]})
    return pd.DataFrame(rows, columns=[*KEYS, "seed", "val_top1_last", "top1_last"])


def select_on_validation(runs: pd.DataFrame) -> tuple[float, float]:
    """(λ, T) with the highest mean validation top-1 over seeds; ties go to the smaller λ, then
    the smaller T. Reads `val_top1_last` only, never the test top-1."""
    if runs.empty:
        raise ReportError("the grid has no runs to choose from")
    means = runs.groupby(KEYS)["val_top1_last"].mean().reset_index()
    best = means.sort_values(["val_top1_last", *KEYS], ascending=[False, True, True]).iloc[0]
    return float(best["lam"]), float(best["temperature"])


def grid_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (λ, T): seeds, validation top-1 mean ± std, `selected`; the test top-1
    (mean ± std over seeds) on the selected row only."""
    chosen = select_on_validation(runs)
    table = runs.groupby(KEYS).agg(
        n_seeds=("seed", "nunique"), val_top1_mean=("val_top1_last", "mean"),
        val_top1_std=("val_top1_last", "std")).reset_index()
    table["selected"] = [(r.lam, r.temperature) == chosen for r in table.itertuples()]
    test = runs[(runs["lam"] == chosen[0]) & (runs["temperature"] == chosen[1])]["top1_last"]
    table["test_top1_mean"] = [test.mean() if s else math.nan for s in table["selected"]]
    table["test_top1_std"] = [test.std() if s else math.nan for s in table["selected"]]
    return table


def heatmap_figure(table: pd.DataFrame, out_paths):
    """Mean validation top-1 per (λ, T) as a heat map, the chosen cell outlined."""
    grid = table.pivot(index="lam", columns="temperature", values="val_top1_mean")
    fig, ax = plt.subplots(figsize=(1.2 * len(grid.columns) + 2.5, 0.8 * len(grid.index) + 2))
    image = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(grid.columns)), [f"{t:g}" for t in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{lam:g}" for lam in grid.index])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("KD weight λ")
    for i, lam in enumerate(grid.index):
        for j, temperature in enumerate(grid.columns):
            value = grid.iloc[i, j]
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white", fontsize=8)
    chosen = table[table["selected"]].iloc[0]
    i, j = list(grid.index).index(chosen.lam), list(grid.columns).index(chosen.temperature)
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_title("validation top-1 % (last epoch, mean over seeds); red: chosen")
    plots.title_seeds(fig, "Ablation: λ × T grid", table["n_seeds"])
    fig.colorbar(image, ax=ax)
    fig.tight_layout()  # room for the figure's title above the axes' own
    for path in out_paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return fig


def write_grid(table: pd.DataFrame, csv_path, md_path) -> None:
    """The grid's table as CSV and Markdown (each written atomically)."""
    from dgkd_core.io import atomic_write_text

    atomic_write_text(table.to_csv(index=False), csv_path)
    lines = ["# Ablation: the λ × T grid, chosen on validation", "",
             "Validation: held-out training images, top-1 % at the last epoch, mean ± std over "
             "seeds. The test top-1 is given for the chosen setting only: the test set plays "
             "no part in the choice.", "",
             "| λ | T | Seeds | Validation top-1 % | Chosen | Test top-1 % |", "|---" * 6 + "|"]
    for r in table.itertuples():
        val = f"{r.val_top1_mean:.2f}" + ("" if math.isnan(r.val_top1_std)
                                           else f" ± {r.val_top1_std:.2f}")
        test = "" if not r.selected else f"{r.test_top1_mean:.2f}" + (
            "" if math.isnan(r.test_top1_std) else f" ± {r.test_top1_std:.2f}")
        lines.append(f"| {r.lam:g} | {r.temperature:g} | {r.n_seeds} | {val} | "
                     f"{'**yes**' if r.selected else ''} | {test} |")
    atomic_write_text("\n".join(lines) + "\n", md_path)
