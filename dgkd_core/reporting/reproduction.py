"""The reproduction report of Table 1 (`python -m dgkd_core reproduction`), as Markdown.

From the Table 1 students' metrics.json files: top-1 % at the last epoch, mean ± sample std per
method over seeds; paired per-seed differences (same dataset, chain and seed) with a 95 %
t interval; whether the paper's ordering holds in the means; the DGKD − TAKD gap against the
paper's (dgkd_core.reporting.reference); the schedule run; provenance. All numbers: top-1 % points.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import subprocess
from pathlib import Path

import pandas as pd

from dgkd_core.config import deep_update
from dgkd_core.errors import DgkdError
from dgkd_core.experiment.plan import Plan
from dgkd_core.io import atomic_write_text, load_yaml_file
from dgkd_core.reporting import tables
from dgkd_core.reporting.reference import RECIPES, chain_protocol, paper_value
from dgkd_core.schema import ConfigError

__all__ = ["DIFFERENCES", "T_975", "ReproductionError", "chain_differences", "excludes_zero",
           "interval_text", "merged_config", "paired_difference", "provenance",
           "reproduction_report", "seed_paired_difference", "t_interval", "table1_metrics_paths",
           "write_from_config"]

# Student's t quantile t_{0.975, df} for df = 1..30 (two-sided 95 %), from the standard t
# tables (NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2); checked against a
# numerical integration of the t density to the third decimal. scipy is not a dependency.
T_975 = dict(enumerate([12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042],
                       start=1))
# (minuend, subtrahend): the paper's three claims, and stochastic DGKD's over DGKD.
DIFFERENCES = (("dgkd", "takd"), ("dgkd", "kd"), ("kd", "nokd"), ("sdgkd", "dgkd"))
# The paper's ordering of the means: (lower, higher, strictly lower).
ORDERING = (("nokd", "kd", True), ("kd", "takd", True), ("takd", "dgkd", True),
            ("dgkd", "sdgkd", False))
REPO = Path(__file__).resolve().parents[2]
_label = tables.method_label


class ReproductionError(DgkdError, ValueError):
    """The runs cannot make a reproduction report; the message says which and what to do."""


def t_interval(values) -> tuple[float, float | None, str]:
    """(mean, half-width of the 95 % t interval or None, why None): mean ± t·sd/√n, ddof 1."""
    values = list(values)
    if not values:
        return math.nan, None, "n/a: no paired seeds"
    mean, n = statistics.fmean(values), len(values)
    if n < 2:
        return mean, None, "n/a: one seed (an interval needs at least 2)"
    if n - 1 not in T_975:
        return mean, None, f"n/a: {n} seeds (the t table stops at {max(T_975) + 1})"
    return mean, T_975[n - 1] * statistics.stdev(values) / math.sqrt(n), ""


def paired_difference(runs: pd.DataFrame, first: str, second: str) -> dict:
    """first − second per seed (top1_last, points) over the seeds both have, with its interval:
    first, second, seeds, values, mean, half_width (None: see why_no_interval), unpaired.

    runs: tables.load_runs rows of one dataset and chain."""
    a = runs[runs["method"] == first].set_index("seed")["top1_last"]
    b = runs[runs["method"] == second].set_index("seed")["top1_last"]
    return {"first": first, "second": second, **seed_paired_difference(a, b)}


def seed_paired_difference(a: pd.Series, b: pd.Series) -> dict:
    """a − b per seed (Series of top1_last indexed by seed) over the seeds both have, with its
    95 % interval: seeds, values, mean, half_width (None: see why_no_interval), unpaired."""
    seeds = sorted(set(a.index) & set(b.index))
    values = [float(a[s] - b[s]) for s in seeds]
    mean, half, why = t_interval(values)
    return {"seeds": seeds, "values": values, "mean": mean, "half_width": half,
            "why_no_interval": why, "unpaired": sorted(set(a.index) ^ set(b.index))}


def excludes_zero(difference: dict) -> bool:
    """Whether a paired difference's 95 % interval lies wholly above or below 0."""
    half = difference["half_width"]
    return half is not None and abs(difference["mean"]) > half


def _chain_groups(runs: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """((dataset, teacher, student), its runs) per chain; a NoKD student joins each chain."""
    guided = runs[runs["teacher"] != ""]
    keys = list(dict.fromkeys(zip(guided["dataset"], guided["teacher"], guided["model"]))) or \
        list(dict.fromkeys(zip(runs["dataset"], [""] * len(runs), runs["model"])))
    groups = []
    for dataset, teacher, student in keys:
        rows = runs[(runs["dataset"] == dataset) & (runs["model"] == student)
                    & ((runs["method"] == "nokd") | (runs["teacher"] == teacher))]
        if (rows.groupby("method")["lineage"].nunique() > 1).any() or \
                rows.duplicated(["method", "seed"]).any():
            raise ReproductionError(f"{dataset}: more than one chain from {teacher} to {student} "
                                    "(or a run twice); report each chain from its own config")
        groups.append(((dataset, teacher, student), rows))
    return groups


def _table_lines(rows: pd.DataFrame) -> list[str]:
    table = tables.table1(rows)
    lines = ["| Method | Teacher | TAs | Student | Epochs | Seeds | Top-1 % per seed | "
             "Top-1 % mean ± std | Paper | Δ vs paper |", "|---" * 10 + "|"]
    for row in table.itertuples():
        # One lineage per method within a chain (_chain_groups), so the method picks the runs.
        per_seed = rows[rows["method"] == row.method].sort_values("seed")["top1_last"]
        paper = tables.paper_text(row) or "–"
        diff = "–" if pd.isna(row.paper_top1) else f"{row.diff_vs_paper:+.2f}"
        cells = [_label(row.method, row.keep_prob, row.drop_num), row.teacher or "–",
                 row.tas or "–", row.student, row.epochs, row.seeds,
                 ", ".join(f"{v:.2f}" for v in per_seed),
                 tables.mean_std(row.top1_last_mean, row.top1_last_std),
                 paper, diff]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    sources = sorted({s for s in table["paper_source"] if s})
    return lines + [""] + [f"- Published, {s}: {RECIPES[s]}. ≈: approximate." for s in sources]


def interval_text(d: dict) -> str:
    """`[low, high] (± half)`, or why there is no interval."""
    if d["half_width"] is None:
        return d["why_no_interval"]
    low, high = d["mean"] - d["half_width"], d["mean"] + d["half_width"]
    return f"[{low:+.2f}, {high:+.2f}] (± {d['half_width']:.2f})"


def _difference_lines(rows: pd.DataFrame) -> tuple[list[str], dict]:
    lines = ["| Difference | Seeds | Per seed | Mean | 95 % t interval |", "|---" * 5 + "|"]
    found = {}
    for first, second in DIFFERENCES:
        d = found[(first, second)] = paired_difference(rows, first, second)
        if not d["seeds"]:
            continue
        per_seed = ", ".join(f"seed {s}: {v:+.2f}" for s, v in zip(d["seeds"], d["values"]))
        lines.append(f"| {_label(first)} − {_label(second)} | {len(d['seeds'])} | "
                     f"{per_seed} | {d['mean']:+.2f} | {interval_text(d)} |")
        if d["unpaired"]:
            lines.append(f"| (seeds {d['unpaired']} have only one of the two: left out) |||||")
    return lines, found


def _ordering_lines(rows: pd.DataFrame) -> list[str]:
    means = rows.groupby("method")["top1_last"].mean()
    verdicts = []
    for low, high, strict in ORDERING:
        text = f"{_label(low)} {'<' if strict else '≤'} {_label(high)}: "
        if low not in means or high not in means:
            verdicts.append((None, text + "not measured"))
            continue
        holds = bool(means[low] < means[high] if strict else means[low] <= means[high])
        verdicts.append((holds, text + f"{means[low]:.2f} vs {means[high]:.2f}, "
                                       f"{'holds' if holds else 'does not hold'}"))
    measured = [h for h, _ in verdicts if h is not None]
    overall = "not measured" if not measured else "holds" if all(measured) else "does not hold"
    if measured and len(measured) < len(verdicts):
        overall += " (in part: some methods were not run)"
    return [f"The paper's ordering (NoKD < KD < TAKD < DGKD ≤ stochastic DGKD) in the means: "
            f"**{overall}**. Means only: the intervals say which gaps exceed seed noise.",
            ""] + [f"- {text}" for _, text in verdicts]


def _gap_lines(rows: pd.DataFrame, found: dict) -> list[str]:
    d = found["dgkd", "takd"]
    if not d["seeds"]:
        return ["DGKD − TAKD vs the paper: not measured (both methods are needed)."]
    dataset = rows["dataset"].iloc[0]
    lineages = [rows[rows["method"] == m]["lineage"].iloc[0].split("-") for m in ("dgkd", "takd")]
    # Both values from the chain's one published experiment, never one from each of two.
    protocol = chain_protocol(dataset, lineages[0])
    paper = [paper_value(dataset, m, lineage, protocol=protocol)
             for m, lineage in zip(("dgkd", "takd"), lineages)] if protocol else [None]
    if None in paper:
        return [f"DGKD − TAKD: {d['mean']:+.2f} here; no published experiment has both for "
                "this dataset and chain."]
    gap = paper[0].top1 - paper[1].top1
    text = (f"DGKD − TAKD: {d['mean']:+.2f} here (paired, {len(d['seeds'])} seeds) against "
            f"the published {gap:+.2f} ({paper[0].top1:.2f} − {paper[1].top1:.2f}; "
            f"{protocol.name}): {d['mean'] - gap:+.2f} from it.")
    if d["half_width"] is not None:
        low, high = d["mean"] - d["half_width"], d["mean"] + d["half_width"]
        where = "inside" if low <= gap <= high else "above" if gap > high else "below"
        zero = "excludes 0" if excludes_zero(d) else "includes 0"
        text += f" The published gap lies {where} the 95 % interval {interval_text(d)}, " \
                f"which {zero}."
    return [text]


def _git_state() -> str:
    """HEAD's commit and whether the tree differs from it, of the checkout holding this code."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    try:
        commit, changed = git("rev-parse", "HEAD").strip(), git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({REPO} is not a git checkout here: {type(err).__name__})"
    n_changed = len(changed.splitlines())
    return commit + (f", dirty ({n_changed} changed or untracked paths)" if n_changed
                     else ", clean tree")


def _schedule_text(metrics: dict) -> str:
    """A run's epochs, lr schedule, lr and batch size, from its metrics.json."""
    cfg = metrics.get("config", {})
    sched = cfg.get("schedule") or {}
    name = sched.get("name", "?")
    # Milestones (fractions of the epochs) and gamma act only in a step schedule.
    details = (f" (×{sched.get('gamma')} at {sched.get('milestones')} of the epochs)"
               if name == "step" else "")
    text = (f"{metrics['epochs']} epoch{'s' * (metrics['epochs'] != 1)}, lr "
            f"{cfg.get('optimizer', {}).get('lr')} {name}{details}, batch {cfg.get('batch_size')}")
    return text


def provenance(metrics_paths, commit: str | None = None) -> list[tuple[str, str]]:
    """(what, value) pairs from the runs' metrics.json files: the code's git state (`commit`
    where this tree is no git checkout), devices and versions, schedules, data checksums, when
    the runs finished and when this was written."""
    metrics = [tables.read_metrics(p) for p in metrics_paths]
    devices = sorted({f"{v.get('device_name', '?')} ({m.get('device', '?')}); torch "
                      f"{v.get('torch', '?')}, training code {v.get('training_code_version')}"
                      for m in metrics for v in [m.get("versions") or {}]})
    finished = sorted(datetime.datetime.fromtimestamp(os.path.getmtime(p), datetime.UTC)
                      for p in metrics_paths)
    return [("Code", commit or _git_state()),
            *[("Device", d) for d in devices],
            *[("Schedule (students)", s) for s in sorted({*map(_schedule_text, metrics)})],
            ("Data checksum", ", ".join(sorted({str(m.get("data_checksum")) for m in metrics}))),
            ("Runs finished (metrics.json written, UTC)",
             f"{finished[0]:%Y-%m-%d %H:%M} to {finished[-1]:%Y-%m-%d %H:%M}"),
            ("Report written (UTC)", f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}")]


def _provenance_lines(metrics_paths, command: str, commit: str | None) -> list[str]:
    return ["## Provenance", "", f"- Command: `{command}`",
            *[f"- {what}: {value}" for what, value in provenance(metrics_paths, commit)]]


def chain_differences(runs: pd.DataFrame) -> list[tuple[tuple[str, str, str], list[dict]]]:
    """((dataset, teacher, student), its paired differences (DIFFERENCES with paired seeds;
    paired_difference's dicts)) per chain of `runs` (tables.load_runs of Table 1 students)."""
    return [(key, [d for first, second in DIFFERENCES
                   if (d := paired_difference(rows, first, second))["seeds"]])
            for key, rows in _chain_groups(runs)]


def reproduction_report(metrics_paths, command: str, commit: str | None = None) -> str:
    """The report as Markdown, from Table 1 students' metrics.json paths (…/results/runs/…).

    command: the exact command that produced the runs, quoted. commit: the code's git state
    where this tree is no git checkout (otherwise `git rev-parse HEAD` and dirtiness)."""
    metrics_paths = [str(p) for p in metrics_paths]
    if not metrics_paths:
        raise ReproductionError("no Table 1 runs given: nothing to report")
    lines = ["# Reproduction of Table 1", "",
             "Top-1 % on the test set at the last epoch; differences in points, paired by seed "
             "(same dataset, chain and seed); 95 % interval: mean ± t(0.975, n−1)·sd/√n.", ""]
    for (dataset, teacher, student), rows in _chain_groups(tables.load_runs(metrics_paths)):
        diff_lines, found = _difference_lines(rows)
        lines += [f"## {dataset}: {teacher or '–'} → … → {student}", "", *_table_lines(rows),
                  "", "### Paired differences", "", *diff_lines, "", "### The paper's claims",
                  "", *_ordering_lines(rows), "", *_gap_lines(rows, found), ""]
    lines += _provenance_lines(metrics_paths, command, commit)
    return "\n".join(lines) + "\n"


def merged_config(config_files) -> dict:
    """Workflow config files merged in order, as Snakemake merges several --configfile."""
    config: dict = {}
    for path in config_files:
        try:
            content = load_yaml_file(path, "config")
        except ConfigError as err:
            raise ReproductionError(str(err)) from None
        if not isinstance(content, dict):
            raise ReproductionError(f"config {path} is not a mapping of workflow-config keys")
        config = deep_update(config, content)
    return config


def table1_metrics_paths(config: dict, workdir=".") -> list[str]:
    """Every configured Table 1 student's metrics.json under `workdir` (the folder holding
    results/); ReproductionError naming the missing ones."""
    # dict.fromkeys: two chains with one student share its NoKD run; it is listed once.
    files = [Path(workdir) / run.file("metrics.json")
             for run in dict.fromkeys(Plan(config).table1_runs())]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ReproductionError(f"{len(missing)} of {len(files)} Table 1 runs have no "
                                f"metrics.json: {', '.join(missing[:3])}"
                                f"{' ...' if len(missing) > 3 else ''}; run the workflow to "
                                "results/table1.csv first")
    return [str(f) for f in files]


def write_from_config(config_files, workdir, command: str, out, commit: str | None = None) -> Path:
    """Write the report of the runs that `config_files` plan (under `workdir`) to `out`."""
    paths = table1_metrics_paths(merged_config(config_files), workdir)
    return atomic_write_text(reproduction_report(paths, command, commit), out)
