"""Table 1 as HTML and LaTeX (pandas Styler), the runs table and the resolved config
(dgkd_core.reporting.publish), on hand-made metrics files (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dgkd_core.experiment import paths


from dgkd_core.reporting import publish, tables
CHAIN = ["plane10", "plane8", "plane6", "plane4", "plane2"]
RESNET = ["resnet26", "resnet20", "resnet14", "resnet8"]
SETTINGS = {"model": "?", "method": "?", "seed": 0, "epochs": 3, "batch_size": 128,
            "optimizer": {"lr": 0.1, "momentum": 0.9}, "schedule": {"name": "step",
                                                                    "milestones": [0.5, 0.75]},
            "loss": {"temperature": 5.0, "keep_prob": None}, "device": "auto"}


def write_run(run: paths.Run, top1: float) -> str:
    path = Path(run.file("metrics.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {**SETTINGS, "model": run.model, "method": run.method, "seed": run.seed,
              "loss": {**SETTINGS["loss"], "keep_prob": run.keep_prob}}
    # as the trainer records them: one checkpoint per guide of the run's lineage
    guides = [paths.make_run(run.dataset, run.seed, "nokd", [m]).file("model.pt")
              for m in run.lineage[:-1]]
    path.write_text(json.dumps({
        "model": run.model, "method": run.method, "seed": run.seed, "epochs": 3,
        "top1_last": top1, "top5_last": 99.0, "top1_best": top1 + 1, "best_epoch": 2,
        "wall_time_s": 12.5, "img_per_s": 2000.0, "device": "cuda:0",
        "reported": "last epoch", "guides": guides, "versions": {"torch": "2.14.1"},
        "config": config}))
    return str(path)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """cifar100 · plain chain and cifar10 · ResNet chain, five methods, seeds 20 and 31
    (the seeds differ by 2 points); the guides of the plain chain's DGKD student."""
    monkeypatch.chdir(tmp_path)
    students, guides = [], []
    for seed, shift in ((20, 0.0), (31, 2.0)):
        for dataset, chain, base in (("cifar100", CHAIN, 40.0), ("cifar10", RESNET, 80.0)):
            for method, lineage, gain, p in (
                    ("nokd", chain[-1:], 0.0, None), ("kd", [chain[0], chain[-1]], 2.0, None),
                    ("takd", chain, 4.0, None), ("dgkd", chain, 8.0, None),
                    ("sdgkd", chain, 9.0 if dataset == "cifar100" else 7.0, 0.75)):
                run = paths.make_run(dataset, seed, method, lineage, p)
                students.append(write_run(run, base + gain + shift))
        guides.append(write_run(paths.make_run("cifar100", seed, "nokd", CHAIN[:1]), 60.0))
        guides.append(write_run(paths.make_run("cifar100", seed, "kd", CHAIN[:2]), 55.0))
    return students, guides


def table1_of(students) -> pd.DataFrame:
    return tables.table1(tables.load_runs(students))


def test_pivot_has_a_row_per_dataset_and_chain_and_methods_in_registry_order(runs):
    students, _ = runs
    means, stds = publish.table1_pivot(table1_of(students))
    assert list(means.index) == [("cifar100", " → ".join(CHAIN)),
                                 ("cifar10", " → ".join(RESNET))]
    assert list(means.columns) == ["NoKD", "KD", "TAKD", "DGKD", "Stochastic DGKD (p=0.75)"]
    assert means.loc[("cifar100", " → ".join(CHAIN)), "DGKD"] == pytest.approx(49.0)
    assert stds.loc[("cifar10", " → ".join(RESNET)), "NoKD"] == pytest.approx(2 ** 0.5)


def test_pivot_puts_shared_nokd_and_kd_rows_in_every_chain_of_their_student(runs):
    students, _ = runs
    table = table1_of(students)
    other = table[(table["dataset"] == "cifar100") & table["method"].isin(["takd", "dgkd"])].copy()
    other["tas"] = "plane6"  # a second chain plane10 -> plane6 -> plane2
    other["top1_last_mean"] -= 1.0
    means, _ = publish.table1_pivot(pd.concat([table, other], ignore_index=True))
    short = ("cifar100", "plane10 → plane6 → plane2")
    assert short in means.index
    assert means.loc[short, "NoKD"] == means.loc[("cifar100", " → ".join(CHAIN)), "NoKD"]
    assert means.loc[short, "DGKD"] == pytest.approx(48.0)
    assert pd.isna(means.loc[short, "Stochastic DGKD (p=0.75)"])


def test_latex_is_a_booktabs_pivot_with_each_rows_best_in_bold(runs):
    students, _ = runs
    tex = publish.table1_latex(table1_of(students), tables.load_runs(students))
    for needle in (r"\toprule", r"\midrule", r"\bottomrule", r"\label{tab:table1}",
                   r"Dataset & Chain & NoKD & KD & TAKD & DGKD & Stochastic DGKD (p=0.75) \\"):
        assert needle in tex, needle
    rows = {line.split(" & ")[0]: line for line in tex.splitlines() if " $\\pm$ " in line}
    # cifar100: stochastic DGKD is best (50 ± 1.41); cifar10: DGKD (89 ± 1.41)
    assert r"\textbf{50.00 $\pm$ 1.41} \\" in rows["cifar100"]
    assert rows["cifar100"].count(r"\textbf") == 1
    assert r"\textbf{89.00 $\pm$ 1.41}" in rows["cifar10"]
    assert rows["cifar10"].count(r"\textbf") == 1
    assert r"plane10 $\rightarrow$ plane8" in rows["cifar100"]
    assert "±" not in tex and "→" not in tex  # plain LaTeX, no Unicode it cannot typeset


def test_latex_escapes_names():
    table = pd.DataFrame([{"dataset": "my_data", "family": "plane", "method": "nokd",
                           "keep_prob": None, "drop_num": None, "teacher": "", "tas": "",
                           "student": "plane2", "top1_last_mean": 50.0,
                           "top1_last_std": float("nan")}])
    tex = publish.table1_latex(table, pd.DataFrame())
    assert r"my\_data & plane2 & 50.00 \\" in tex  # one method: nothing to be best against


def test_html_is_a_styler_page_with_the_pivot_and_the_full_table(runs):
    students, _ = runs
    html = publish.table1_html(table1_of(students), tables.load_runs(students))
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html
    assert html.count("<table") == 2
    assert ">Stochastic DGKD (p=0.75)</th>" in html and ">50.00 ± 1.41</td>" in html
    assert ">plane10 → plane8 → plane6 → plane4 → plane2</td>" in html
    assert "font-weight: bold" in html  # Styler's CSS for each row's best cell
    assert ">≈50.15</td>" in html  # the paper's stochastic DGKD value, approximate


def test_a_best_within_seed_noise_of_the_runner_up_is_a_tie(runs):
    students, _ = runs
    seeds = tables.load_runs(students)
    # cifar100: stochastic DGKD 49, 50.5 against DGKD 48, 50: +1 and +0.5, an interval over 0
    noisy = (seeds["dataset"] == "cifar100") & (seeds["method"] == "sdgkd") & (seeds["seed"] == 31)
    seeds.loc[noisy, "top1_last"] = 50.5
    table = tables.table1(seeds)
    marks = publish.table1_marks(table, seeds)
    assert marks.loc[("cifar100", " → ".join(CHAIN))].to_dict() == {
        "NoKD": "", "KD": "", "TAKD": "", "DGKD": "tie", "Stochastic DGKD (p=0.75)": "tie"}
    # cifar10: DGKD beats stochastic DGKD by 1 point on both seeds, an interval without 0
    assert list(marks.loc[("cifar10", " → ".join(RESNET))]) == ["", "", "", "best", ""]
    rows = {line.split(" & ")[0]: line
            for line in publish.table1_latex(table, seeds).splitlines() if " $\\pm$ " in line}
    assert rows["cifar100"].count(r"\textbf") == 2 and rows["cifar100"].count(r"$^\dagger$") == 2
    assert rows["cifar10"].count(r"\textbf") == 1 and r"\dagger" not in rows["cifar10"]
    html = publish.table1_html(table, seeds)
    assert ">49.75 ± 1.06 †</td>" in html and "† A tie" in html
    md = publish.table1_pivot_markdown(table, seeds)
    assert "| **49.75 ± 1.06 †** |" in md and "| **89.00 ± 1.41** |" in md
    assert md.count("**") == 2 * 3 and "† A tie" in md


def test_marks_are_the_same_from_table1_csv(runs, tmp_path):
    students, _ = runs
    seeds = tables.load_runs([p for p in students if "/nokd/" in p or "/kd/" in p])
    table = tables.table1(seeds)
    tables.write_table(table, tmp_path / "t.csv", tmp_path / "t.md", "Table 1")
    from_csv = pd.read_csv(tmp_path / "t.csv")  # no teacher/TAs: NaN, not ""
    marks = publish.table1_marks(table, seeds)
    assert list(marks["KD"]) == ["best", "best"]  # KD is NoKD + 2 on every seed
    assert publish.table1_marks(from_csv, seeds).equals(marks)


def test_one_seed_gives_no_interval_so_the_best_two_tie(runs):
    students, _ = runs
    one_seed = tables.load_runs([p for p in students if "/seed20/" in p])
    marks = publish.table1_marks(tables.table1(one_seed), one_seed)
    assert (marks == "best").sum().sum() == 0 and (marks == "tie").sum().sum() == 4


def test_runs_table_has_every_model_with_flattened_settings(runs, tmp_path):
    students, guides = runs
    out = tmp_path / "runs.csv"
    publish.write_runs(students, guides, out)
    table = pd.read_csv(out)
    assert len(table) == len(students) + len(guides) == 24
    assert table["role"].value_counts().to_dict() == {"student": 20, "teacher": 2, "ta": 2}
    for column in ("dataset", "method", "keep_prob", "lineage", "model", "seed", "top1_last",
                   "top5_last", "top1_best", "best_epoch", "epochs", "wall_time_s",
                   "img_per_s", "device", "versions.torch", "config.optimizer.lr",
                   "config.optimizer.momentum", "config.schedule.name",
                   "config.loss.temperature", "config.batch_size", "config.device"):
        assert column in table.columns, column
    assert "config" not in table.columns and "reported" not in table.columns
    # One prefix for every setting: no bare setting beside config.model (issue 24)
    assert not {"batch_size", "optimizer.lr", "loss.temperature"} & set(table.columns)
    dgkd = table[(table["method"] == "dgkd") & (table["dataset"] == "cifar100")]
    assert dgkd["config.optimizer.lr"].tolist() == [0.1, 0.1]
    assert dgkd["device"].tolist() == ["cuda:0"] * 2  # what ran ...
    assert dgkd["config.device"].tolist() == ["auto"] * 2  # ... and what was asked for
    assert json.loads(dgkd["config.schedule.milestones"].iloc[0]) == [0.5, 0.75]
    assert table.loc[table["method"] == "sdgkd", "keep_prob"].eq(0.75).all()


def test_resolved_config_is_plain_yaml(tmp_path):
    config = {"seeds": [20, 31], "hyperparameters": {"defaults": {"epochs": 160}}}
    publish.write_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# The workflow config as Snakemake resolved it")
    assert yaml.safe_load(text) == config
    assert list(yaml.safe_load(text)) == ["seeds", "hyperparameters"]  # the config's order


def test_table1_targets_include_the_new_outputs():
    targets = paths.table1_targets()
    for target in ("results/table1.html", "results/table1.tex", "results/runs.csv",
                   "results/config.yaml"):
        assert target in targets
