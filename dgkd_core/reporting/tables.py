"""Tables (pandas) from the runs' `metrics.json` and `history.csv` files.

Every run is identified by its path (dgkd_core.experiment.paths): dataset, seed, method and lineage come
from there, the numbers from metrics.json. Seeds are aggregated as mean and sample standard
deviation (ddof = 1; empty for a single seed). The accuracy reported is the last epoch's;
the best epoch's mean is given beside it, labelled, for reference only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dgkd_core.errors import DgkdError
from dgkd_core.experiment import paths
from dgkd_core.method import registry
from dgkd_core.method.models import model_family
from dgkd_core.reporting.reference import RECIPES, published_for_rows

ARROW = " → "


def method_label(method: str, keep_prob: float | None = None,
                 drop_num: float | None = None) -> str:
    """The registry's label (dgkd_core.method.registry), with a stochastic run's dropping."""
    return registry.label(method, keep_prob, drop_num)


# ---------------------------------------------------------------------------- runs


class ReportError(DgkdError, ValueError):
    """An input of a table cannot be used; the message names the file and what to do."""


_METRIC_KEYS = ("epochs", "top1_last", "top5_last", "top1_best", "best_epoch", "wall_time_s")


def read_metrics(path) -> dict:
    """A run's metrics.json, checked for the keys the tables use; ReportError naming the file."""
    redo = f"delete {path} and run the workflow again to retrain that model"
    try:
        with open(path, encoding="utf-8") as fh:
            metrics = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"cannot read {path}: {err}; {redo}") from None
    except RecursionError:
        raise ReportError(f"cannot read {path}: it nests too deeply; {redo}") from None
    missing = [k for k in _METRIC_KEYS if not isinstance(metrics, dict) or k not in metrics]
    if missing:
        raise ReportError(f"{path} lacks {', '.join(missing)}; {redo}")
    # JSON allows NaN, Infinity and text where a number belongs; a mean over them is no mean.
    wrong = [f"{k}={metrics[k]!r}" for k in _METRIC_KEYS if not _is_finite_number(metrics[k])]
    if wrong:
        raise ReportError(f"{path} has {', '.join(wrong)}, not a finite number; {redo}")
    differ = _other_run(metrics, path)
    if differ:
        raise ReportError(f"{path} records another run than its path names ({differ}): copied "
                          f"from elsewhere?; {redo}")
    return metrics


def _is_finite_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _other_run(metrics: dict, path) -> str:
    """Where a run's metrics.json disagrees with the run its path names, or "" (also for a path
    that names no run). Only what the record holds is compared: a hand-made record without
    identity keys is not refused."""
    try:
        run = paths.run_from_path(path)
    except ValueError:
        return ""
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    loss = config.get("loss") if isinstance(config.get("loss"), dict) else {}
    expected = {"dataset": run.dataset, "seed": run.seed, "method": run.method,
                "model": run.model}
    differ = [f"{key} {metrics[key]!r}, the path {want!r}" for key, want in expected.items()
              if key in metrics and metrics[key] != want]
    for key, want in (("keep_prob", run.keep_prob), ("drop_num", run.drop_num)):
        recorded = loss.get(key)
        if key in loss and (recorded or None) != want and run.method == "sdgkd":
            differ.append(f"loss.{key} {recorded!r}, the path {want!r}")
    guides = metrics.get("guides")
    if isinstance(guides, list) and not metrics.get("imported"):
        # Which of the lineage guide depends on the method (TAKD: the last TA only); each
        # guide is one of them, and a run has guides exactly when its lineage has them.
        models = [_guide_model(g) for g in guides]
        if bool(guides) != (len(run.lineage) > 1) or any(
                m is not None and m not in run.lineage[:-1] for m in models):
            differ.append(f"guides {', '.join(m or '?' for m in models) or 'none'}, the path "
                          f"{', '.join(run.lineage[:-1]) or 'none'}")
    return "; ".join(differ)


def _guide_model(guide_path) -> str | None:
    """The model of a guide checkpoint at a run's path, or None for a path that names no run."""
    try:
        return paths.run_from_path(guide_path).model
    except (TypeError, ValueError):
        return None


def load_runs(metrics_paths) -> pd.DataFrame:
    """One row per run: its identity (from the path) and its numbers (from metrics.json)."""
    rows = []
    for path in metrics_paths:
        run = paths.run_from_path(path)
        metrics = read_metrics(path)
        guided = len(run.lineage) > 1
        rows.append({
            "dataset": run.dataset,
            "family": model_family(run.model),
            "method": run.method,
            "keep_prob": run.keep_prob,
            "drop_num": run.drop_num,
            # what ran, from the run's own config (the convention ablation's runs differ in it)
            "convention": metrics.get("config", {}).get("loss", {}).get("convention", ""),
            "imported": bool(metrics.get("imported", False)),  # trained elsewhere, not here
            "lineage": run.lineage_str,
            "teacher": run.lineage[0] if guided else "",
            "tas": ", ".join(run.lineage[1:-1]),
            "n_tas": max(len(run.lineage) - 2, 0),
            "model": run.model,
            "seed": run.seed,
            "epochs": metrics["epochs"],
            "top1_last": metrics["top1_last"],
            "top5_last": metrics["top5_last"],
            "top1_best": metrics["top1_best"],
            "best_epoch": metrics["best_epoch"],
            "wall_time_s": metrics["wall_time_s"],
            "history": str(Path(path).with_name("history.csv")),
        })
    return pd.DataFrame(rows)


_ROW_KEYS = ("dataset", "family", "method", "keep_prob", "drop_num", "teacher", "tas")


def seed_values(runs: pd.DataFrame | None, row) -> pd.Series:
    """top1_last (%) of each seed behind a Table 1 row, indexed by seed (`runs`: load_runs)."""
    if runs is None or runs.empty:
        return pd.Series(dtype=float)
    mask = runs["model"] == row.student
    for key in _ROW_KEYS:
        value = getattr(row, key)
        # no teacher/TAs is "" in memory and NaN from a CSV: either matches either
        mask &= (runs[key].isna() | (runs[key] == "")) if pd.isna(value) or value == "" \
            else runs[key] == value
    return runs.loc[mask].set_index("seed")["top1_last"].astype(float)


_IDENTITY = ["dataset", "family", "method", "keep_prob", "drop_num", "convention", "lineage",
             "teacher", "tas", "n_tas", "model"]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Aggregate seeds: one row per (dataset, method, keep_prob, lineage), in first-seen order."""
    grouped = runs.groupby(_IDENTITY, sort=False, dropna=False)
    out = grouped.agg(
        n_seeds=("seed", "nunique"),
        seeds=("seed", lambda s: " ".join(str(x) for x in sorted(s))),
        epochs=("epochs", "max"),
        top1_last_mean=("top1_last", "mean"),
        top1_last_std=("top1_last", "std"),
        top5_last_mean=("top5_last", "mean"),
        top1_best_epoch_mean=("top1_best", "mean"),
        best_epoch_mean=("best_epoch", "mean"),
    ).reset_index()
    return _with_paper(out)


def _with_paper(table: pd.DataFrame) -> pd.DataFrame:
    # One published experiment per chain (reference.published_for_rows), named per row.
    values = published_for_rows(
        (row.dataset, row.method, row.lineage.split("-"),
         None if pd.isna(row.keep_prob) else row.keep_prob) for row in table.itertuples())
    table["paper_top1"] = [v.top1 if v else math.nan for v in values]
    table["paper_approximate"] = [v.approximate if v else None for v in values]
    table["paper_source"] = [v.protocol.name if v else "" for v in values]
    table["paper_recipe"] = [v.recipe if v else "" for v in values]
    # Both differences, labelled: the paper's numbers are probably best-epoch numbers, while
    # this project reports the last epoch (the best is never used to pick a model).
    table["diff_vs_paper"] = table["top1_last_mean"] - table["paper_top1"]
    table["diff_vs_paper_best"] = table["top1_best_epoch_mean"] - table["paper_top1"]
    return table


# -------------------------------------------------------------------------- tables

_TABLE1_COLUMNS = ["dataset", "family", "method", "keep_prob", "drop_num", "teacher", "tas",
                   "student", "n_seeds", "seeds", "epochs", "top1_last_mean", "top1_last_std",
                   "top5_last_mean", "top1_best_epoch_mean", "paper_top1", "paper_approximate",
                   "paper_source", "paper_recipe", "diff_vs_paper", "diff_vs_paper_best"]


def table1(student_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, family, method, student), rows in the order the runs came."""
    table = summarise(student_runs).rename(columns={"model": "student"})
    return table[_TABLE1_COLUMNS]


def guides_table(guide_runs: pd.DataFrame) -> pd.DataFrame:
    """Teachers and TAs: one row per model and lineage (the models it descends from, teacher
    first: a TAKD TA was taught by the previous one only, a DGKD TA by all of them)."""
    table = summarise(guide_runs)
    table.insert(2, "role", ["teacher" if n == 1 else "TA"
                             for n in table["lineage"].str.split("-").str.len()])
    imported = set(guide_runs.loc[guide_runs["imported"], "lineage"]) if len(guide_runs) else set()
    table["imported"] = table["lineage"].isin(imported)
    table["lineage"] = [ARROW.join(lin.split("-")) for lin in table["lineage"]]
    return table[["dataset", "family", "role", "model", "method", "imported", "lineage",
                  "n_seeds", "seeds", "epochs", "top1_last_mean", "top1_last_std", "top5_last_mean",
                  "top1_best_epoch_mean", "paper_top1", "paper_approximate", "paper_source",
                  "paper_recipe", "diff_vs_paper", "diff_vs_paper_best"]]


def num_tas_table(student_runs: pd.DataFrame) -> pd.DataFrame:
    """TAKD vs DGKD by number of TAs. With no TA both are KD: that row is given for each."""
    table = summarise(student_runs).rename(columns={"model": "student"})
    compared = [m for m in table["method"].unique() if m != "kd"] or ["kd"]
    parts = []
    for method in compared:
        part = table[table["method"].isin([method, "kd"])].copy()
        part["trained_as"] = part["method"]
        part["method"] = method
        parts.append(part)
    out = pd.concat(parts, ignore_index=True).sort_values("n_tas", kind="stable")
    out = out.sort_values("method", key=lambda m: m.map(compared.index), kind="stable")
    return out[["dataset", "family", "method", "n_tas", "teacher", "tas", "student", "trained_as",
                "n_seeds", "seeds", "epochs", "top1_last_mean", "top1_last_std",
                "top1_best_epoch_mean", "paper_top1", "paper_approximate", "paper_source",
                "diff_vs_paper"]].reset_index(drop=True)


def keep_prob_table(student_runs: pd.DataFrame) -> pd.DataFrame:
    """Stochastic DGKD by keep probability; DGKD (nothing dropped) as keep_prob 1."""
    table = summarise(student_runs).rename(columns={"model": "student"})
    table["keep_prob"] = table["keep_prob"].where(table["method"] != "dgkd", 1.0)
    table = table.sort_values(["method", "keep_prob"], ascending=[False, True], kind="stable")
    return table[["dataset", "family", "method", "keep_prob", "teacher", "tas", "student",
                  "n_seeds", "seeds", "epochs", "top1_last_mean", "top1_last_std",
                  "top1_best_epoch_mean", "paper_top1", "paper_approximate", "paper_source",
                  "paper_recipe", "diff_vs_paper", "diff_vs_paper_best"]].reset_index(drop=True)


def convention_table(student_runs: pd.DataFrame) -> pd.DataFrame:
    """Each method under each loss convention (dgkd_core.method.losses.CONVENTIONS), methods in the
    registry's order, conventions in CONVENTIONS' order."""
    from dgkd_core.method.losses import CONVENTIONS

    table = summarise(student_runs).rename(columns={"model": "student"})
    table = table.sort_values("convention", key=lambda c: c.map(CONVENTIONS.index), kind="stable")
    table = table.sort_values("method", key=lambda m: m.map(registry.METHODS.index), kind="stable")
    return table[["dataset", "family", "method", "convention", "teacher", "tas", "student",
                  "n_seeds", "seeds", "epochs", "top1_last_mean", "top1_last_std",
                  "top1_best_epoch_mean"]].reset_index(drop=True)


def read_history(path) -> pd.DataFrame:
    """A run's history.csv: epoch and test_top1; ReportError naming the file otherwise."""
    redo = "delete the run's metrics.json and run the workflow again to retrain that model"
    try:
        with open(path, encoding="utf-8") as fh:
            history = pd.read_csv(fh, usecols=["epoch", "test_top1"])
    except UnicodeDecodeError as err:
        raise ReportError(f"cannot read {path}: not UTF-8 text (byte {err.start}); "
                          f"{redo}") from None
    except pd.errors.EmptyDataError:
        raise ReportError(f"cannot read {path}: it is empty; {redo}") from None
    except (OSError, ValueError) as err:  # ParserError and a missing column are ValueErrors
        raise ReportError(f"cannot read {path}: {str(err).splitlines()[0]}; {redo}") from None
    return history


def learning_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Test top-1 per epoch, mean and std over seeds: dataset, family, method, keep_prob,
    lineage, epoch, top1_mean, top1_std, n_seeds (the seeds that reached that epoch)."""
    frames = []
    for row in runs.itertuples():
        history = read_history(row.history)
        for key in ("dataset", "family", "method", "keep_prob", "lineage", "seed"):
            history[key] = getattr(row, key)
        frames.append(history)
    curves = pd.concat(frames, ignore_index=True)
    keys = ["dataset", "family", "method", "keep_prob", "lineage", "epoch"]
    return (curves.groupby(keys, sort=False, dropna=False)["test_top1"]
            .agg(top1_mean="mean", top1_std="std", n_seeds="count").reset_index())


# ------------------------------------------------------------------------- writing


def mean_std(mean: float, std: float, pm: str = " ± ", missing: str = "–") -> str:
    """`49.00 ± 1.41` (percentage points, 2 decimals); the mean alone with one seed (no std);
    `pm` is the separator (LaTeX: ` $\\pm$ `), `missing` the text for no value."""
    if pd.isna(mean):
        return missing
    return f"{mean:.2f}{pm}{std:.2f}" if not pd.isna(std) else f"{mean:.2f}"


def _number(x, fmt="{:.2f}", signed=False) -> str:
    if x is None or pd.isna(x):
        return ""
    return ("{:+.2f}" if signed else fmt).format(x)


def paper_text(row) -> str:
    """A table row's paper value as shown: `≈89.66` for an approximate one, "" for none."""
    if pd.isna(row.paper_top1):
        return ""
    return ("≈" if row.paper_approximate else "") + f"{row.paper_top1:.2f}"


def markdown(table: pd.DataFrame, title: str, note: str = "") -> str:
    """A readable Markdown rendering of any of the tables above."""
    has = set(table.columns)
    columns: list[tuple[str, callable]] = [("Dataset", lambda r: r.dataset),
                                           ("Family", lambda r: r.family)]
    if "role" in has:
        columns += [("Role", lambda r: r.role), ("Model", lambda r: r.model),
                    ("Trained by", lambda r: "imported" if getattr(r, "imported", False)
                     else method_label(r.method)),
                    ("Lineage", lambda r: r.lineage)]
    else:
        show_p = "keep_prob" in has
        columns.append(("Method", lambda r: method_label(
            r.method, r.keep_prob if show_p else None, getattr(r, "drop_num", None))))
        if "n_tas" in has:
            columns.append(("TAs (n)", lambda r: str(r.n_tas)))
        if "convention" in has:
            columns.append(("Loss convention", lambda r: r.convention))
        columns += [("Teacher", lambda r: r.teacher), ("TAs", lambda r: r.tas),
                    ("Student", lambda r: r.student)]
    columns += [
        ("Seeds", lambda r: str(r.n_seeds)),
        ("Epochs", lambda r: str(r.epochs)),
        ("Top-1 % (last epoch, mean ± std)", lambda r: mean_std(r.top1_last_mean,
                                                                 r.top1_last_std)),
        ("Top-1 % (best epoch, mean; reference only)", lambda r: _number(r.top1_best_epoch_mean)),
    ]
    if "paper_top1" in has:
        columns += [("Paper", paper_text),
                    ("Δ vs paper (last epoch)", lambda r: _number(r.diff_vs_paper, signed=True))]
        if "paper_source" in has:  # the row's own published experiment, named
            columns.append(("Paper's experiment", lambda r: r.paper_source or ""))
    if "diff_vs_paper_best" in has:
        columns.append(("Δ vs paper (best epoch; reference only)",
                        lambda r: _number(r.diff_vs_paper_best, signed=True)))
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(name for name, _ in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in table.itertuples():
        cells = [str(fn(row)).replace("|", "\\|") for _, fn in columns]
        lines.append("| " + " | ".join(cells) + " |")
    sources = sorted({s for s in table.get("paper_source", []) if s})
    if sources:
        lines += ["", "Published values, each row only its own experiment's: " + "; ".join(sources)
                  + ". ≈: approximate or unconfirmed."]
        lines += [f"- {source}: {RECIPES[source]}." for source in sources]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, csv_path, md_path, title: str, note: str = "") -> None:
    from dgkd_core.io import atomic_write_text

    atomic_write_text(table.to_csv(index=False, float_format="%.4f"), csv_path)
    atomic_write_text(markdown(table, title, note), md_path)
