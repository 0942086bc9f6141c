"""Paths, reference numbers, tables and figures, on hand-made metrics files (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from dgkd_core.experiment import paths
from dgkd_core.reporting import plots, tables
from dgkd_core.reporting import reference
from dgkd_core.reporting.reference import paper_value

# ------------------------------------------------------------------------ paths


def test_run_paths_encode_the_lineage():
    run = paths.make_run("cifar10", 20, "dgkd", ["resnet26", "resnet20", "resnet14", "resnet8"])
    assert run.file("model.pt") == (
        "results/runs/cifar10/seed20/dgkd/resnet26-resnet20-resnet14-resnet8/model.pt")
    assert paths.make_run("cifar10", 20, "nokd", ["resnet26"]).dir == (
        "results/runs/cifar10/seed20/nokd/resnet26")


def test_first_ta_of_takd_and_dgkd_is_one_kd_run():
    takd = paths.make_run("c", 1, "takd", ["plane10", "plane8"])
    dgkd = paths.make_run("c", 1, "dgkd", ["plane10", "plane8"])
    assert takd == dgkd
    assert takd.method == "kd" and takd.dir.endswith("/seed1/kd/plane10-plane8")


def test_sdgkd_carries_its_keep_probability():
    run = paths.make_run("c", 1, "sdgkd", ["a", "b", "c"], keep_prob=0.75)
    assert run.method_dir == "sdgkd-p0.75"
    assert paths.run_from_path(run.file("metrics.json")) == run
    with pytest.raises(ValueError, match="keep_prob"):
        paths.make_run("c", 1, "dgkd", ["a", "b", "c"], keep_prob=0.5)


@pytest.mark.parametrize("method,lineage", [("nokd", ["a", "b"]), ("kd", ["a"]),
                                            ("kd", ["a", "b", "c"]), ("dgkd", ["a-b", "c"])])
def test_lineage_must_fit_the_method(method, lineage):
    with pytest.raises(ValueError):
        paths.make_run("c", 1, method, lineage)


def test_path_round_trip_with_a_prefix():
    run = paths.make_run("cifar100", 55, "takd", ["plane10", "plane8", "plane6"])
    assert paths.run_from_path("/tmp/x/" + run.file("history.csv")) == run
    with pytest.raises(ValueError):
        paths.run_from_path("results/data/cifar10.pt")


# -------------------------------------------------------------------- reference


def test_paper_values_match_the_whole_lineage_only():
    chain = ["plane10", "plane8", "plane6", "plane4", "plane2"]
    assert paper_value("cifar100", "dgkd", chain).top1 == 48.92
    assert paper_value("cifar100", "takd", chain).top1 == 45.14
    assert paper_value("cifar100", "sdgkd", chain, keep_prob=0.75).approximate
    assert paper_value("cifar100", "sdgkd", chain, keep_prob=0.5) is None
    assert paper_value("cifar10", "dgkd", chain) is None
    assert paper_value("cifar100", "dgkd", ["plane10", "plane6", "plane2"]) is None
    assert paper_value("cifar10", "dgkd", ["resnet26", "resnet20", "resnet14", "resnet8"]
                       ).top1 == 89.02
    assert paper_value("cifar100", "nokd", ["resnet8"]).top1 == 61.37
    imagenet = paper_value("imagenet", "dgkd", ["resnet34", "resnet18x", "resnet18"])
    assert imagenet.top1 == 71.73 and imagenet.approximate


# ------------------------------------------------------------------------ tables


def write_run(root: Path, run: paths.Run, top1: float, best: float, epochs: int = 3) -> str:
    path = root / run.file("metrics.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"top1_last": top1, "top5_last": 99.0, "top1_best": best,
                                "best_epoch": 2, "epochs": epochs, "wall_time_s": 1.0}))
    history = pd.DataFrame({"epoch": range(1, epochs + 1),
                            "test_top1": [top1 - 2 * (epochs - e) for e in range(1, epochs + 1)]})
    history.to_csv(path.with_name("history.csv"), index=False)
    return str(path)


CHAIN = ["plane10", "plane8", "plane6", "plane4", "plane2"]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Table-1-like runs on cifar100 with known numbers, two seeds each."""
    monkeypatch.chdir(tmp_path)
    students, guides = [], []
    for seed, shift in ((20, 0.0), (31, 2.0)):
        def add(target, method, lineage, top1, keep_prob=None):
            run = paths.make_run("cifar100", seed, method, lineage, keep_prob)
            target.append(write_run(Path("."), run, top1 + shift, top1 + shift + 1))
        add(students, "nokd", ["plane2"], 40.0)
        add(students, "kd", ["plane10", "plane2"], 42.0)
        add(students, "takd", CHAIN, 44.0)
        add(students, "dgkd", CHAIN, 48.0)
        add(students, "sdgkd", CHAIN, 49.0, keep_prob=0.75)
        add(guides, "nokd", ["plane10"], 60.0)
        add(guides, "kd", ["plane10", "plane8"], 55.0)
    return students, guides


def test_table1_aggregates_seeds_and_compares_with_the_paper(runs, tmp_path):
    students, _ = runs
    table = tables.table1(tables.load_runs(students))
    assert list(table["method"]) == ["nokd", "kd", "takd", "dgkd", "sdgkd"]
    dgkd = table[table["method"] == "dgkd"].iloc[0]
    assert dgkd["teacher"] == "plane10" and dgkd["tas"] == "plane8, plane6, plane4"
    assert dgkd["student"] == "plane2" and dgkd["n_seeds"] == 2 and dgkd["seeds"] == "20 31"
    assert dgkd["top1_last_mean"] == pytest.approx(49.0)
    assert dgkd["top1_last_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 48, 50
    assert dgkd["top1_best_epoch_mean"] == pytest.approx(50.0)
    assert dgkd["paper_top1"] == 48.92
    assert dgkd["diff_vs_paper"] == pytest.approx(49.0 - 48.92)
    assert dgkd["diff_vs_paper_best"] == pytest.approx(50.0 - 48.92)  # best epochs 49 and 51
    assert "best-epoch" in dgkd["paper_recipe"]
    assert math.isnan(table[table["method"] == "kd"]["paper_top1"].item())

    tables.write_table(table, tmp_path / "t.csv", tmp_path / "t.md", "Table 1")
    again = pd.read_csv(tmp_path / "t.csv")
    assert len(again) == 5 and again["top1_last_mean"].dtype == float
    md = (tmp_path / "t.md").read_text()
    assert "| cifar100 | plane | DGKD | plane10 | plane8, plane6, plane4 | plane2 | 2 |" in md
    assert "49.00 ± 1.41" in md and "48.92" in md and "+0.08" in md
    assert "Stochastic DGKD (p=0.75)" in md and "≈50.15" in md
    assert "best epoch, mean; reference only" in md
    assert "Δ vs paper (last epoch)" in md and "Δ vs paper (best epoch; reference only)" in md
    assert "+1.08" in md  # the best-epoch difference, 50.00 - 48.92


def test_reference_values_name_their_experiment(tmp_path):
    run = paths.make_run("cifar100", 20, "nokd", ["resnet8"])
    table = tables.table1(tables.load_runs([write_run(tmp_path, run, 60.0, 61.0)]))
    assert table["paper_top1"].item() == 61.37
    assert table["paper_source"].item() == reference.TAKD_SEARCH.name
    assert "150 epochs" in table["paper_recipe"].item()
    assert "best test accuracy over 120 search trials" in table["paper_recipe"].item()
    md = tables.markdown(table, "T")
    assert f"- {reference.TAKD_SEARCH.name}: 150 epochs, teacher resnet110 or plane10" in md


def test_guides_table(runs):
    _, guides = runs
    table = tables.guides_table(tables.load_runs(guides))
    assert list(table["role"]) == ["teacher", "TA"]
    assert list(table["lineage"]) == ["plane10", "plane10 → plane8"]
    assert table["top1_last_mean"].tolist() == [61.0, 56.0]
    assert not table["imported"].any()


def test_an_imported_teacher_is_labelled_imported(tmp_path):
    teacher = paths.make_run("cifar100", 20, "nokd", ["plane10"])
    path = Path(write_run(tmp_path, teacher, 60.0, 60.0))
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "imported": True, "epochs": 0}))
    ta = write_run(tmp_path, paths.make_run("cifar100", 20, "kd", ["plane10", "plane8"]), 55, 56)
    table = tables.guides_table(tables.load_runs([str(path), ta]))
    assert table["imported"].tolist() == [True, False]
    md = tables.markdown(table, "Guides")
    assert "| teacher | plane10 | imported |" in md and "| TA | plane8 | KD |" in md


def test_num_tas_table_gives_the_no_ta_point_to_every_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = []
    for method, lineage, top1 in (("kd", ["plane10", "plane2"], 40.0),
                                  ("takd", ["plane10", "plane6", "plane2"], 41.0),
                                  ("dgkd", ["plane10", "plane6", "plane2"], 43.0)):
        files.append(write_run(Path("."), paths.make_run("cifar100", 1, method, lineage),
                               top1, top1))
    table = tables.num_tas_table(tables.load_runs(files))
    assert list(zip(table["method"], table["n_tas"], table["trained_as"])) == [
        ("takd", 0, "kd"), ("takd", 1, "takd"), ("dgkd", 0, "kd"), ("dgkd", 1, "dgkd")]
    assert table["top1_last_std"].isna().all()  # one seed: no std
    assert "40.00 |" in tables.markdown(table, "x")


def test_figures_are_valid_png_and_pdf(runs, tmp_path):
    from PIL import Image

    students, _ = runs
    loaded = tables.load_runs(students)
    table = tables.table1(loaded)
    outputs = {
        "methods": lambda out: plots.methods_figure(table, out),
        "curves": lambda out: plots.learning_curves_figure(tables.learning_curves(loaded), out),
        "keep": lambda out: plots.keep_prob_figure(tables.keep_prob_table(
            loaded[loaded["method"].isin(["dgkd", "sdgkd"])]), out),
    }
    for name, draw in outputs.items():
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        draw([png, pdf])
        with Image.open(png) as image:
            image.verify()
        assert pdf.read_bytes().startswith(b"%PDF")
    curves = tables.learning_curves(loaded)
    dgkd = curves[curves["method"] == "dgkd"]
    assert dgkd["epoch"].tolist() == [1, 2, 3]
    assert dgkd["top1_mean"].tolist() == [45.0, 47.0, 49.0]
