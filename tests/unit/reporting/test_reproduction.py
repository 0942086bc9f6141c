"""The reproduction report (dgkd_core.reporting.reproduction, `python -m dgkd_core reproduction`) on
hand-made metrics files with numbers worked by hand, and ci/reproduce_table1.sh end to end on
the CPU with a tiny schedule (in a temporary folder: the repository's results/ and docs/ stay
as they are)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dgkd_core import cli
from dgkd_core.experiment.plan import Plan
from dgkd_core.reporting import reproduction, tables

REPO = Path(__file__).resolve().parents[3]
REPRO_CONFIG = REPO / "config" / "cifar10_repro.yaml"
SEEDS = (20, 31, 55)
# Top-1 % per seed (20, 31, 55), chosen so that every difference is easy to work by hand.
ACCURACY = {"nokd": (86.0, 86.5, 85.9), "kd": (87.0, 87.2, 86.8), "takd": (87.5, 87.9, 87.1),
            "dgkd": (88.6, 88.7, 88.3), "sdgkd": (88.9, 88.6, 88.8)}
T_2 = 4.303  # t_{0.975, 2}, from a printed t table


def write_metrics(workdir: Path, run, top1: float, epochs: int = 160) -> str:
    """A metrics.json with the keys the report reads, where the workflow would write it."""
    path = workdir / run.file("metrics.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "top1_last": top1, "top5_last": 99.0, "top1_best": top1 + 0.3, "best_epoch": epochs,
        "epochs": epochs, "wall_time_s": 60.0, "device": "cuda:0", "data_checksum": "abc123",
        "versions": {"device_name": "NVIDIA H200", "torch": "2.11.0",
                     "training_code_version": 2},
        "config": {"schedule": {"name": "step", "milestones": [0.5, 0.75], "gamma": 0.1},
                   "optimizer": {"lr": 0.1}, "batch_size": 128}}))
    return str(path)


def write_table1_runs(workdir: Path, accuracy=ACCURACY, epochs: int = 160) -> list[str]:
    """Every Table 1 student that config/cifar10_repro.yaml plans, with `accuracy`."""
    config = reproduction.merged_config([REPRO_CONFIG])
    return [write_metrics(workdir, run, accuracy[run.method][SEEDS.index(run.seed)], epochs)
            for run in Plan(config).table1_runs()]


def by_hand(values) -> tuple[float, float]:
    """Mean and 95 % half-width of three values: t_{0.975,2} · sd / √3, sd with n − 1."""
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    return mean, T_2 * sd / math.sqrt(3)


def test_t_interval_and_its_limits():
    mean, half, why = reproduction.t_interval([1.0, 3.0])
    assert (mean, why) == (2.0, "") and half == pytest.approx(12.706)  # sd √2, over √2
    mean, half, why = reproduction.t_interval([1.5])
    assert mean == 1.5 and half is None and why.startswith("n/a") and "one seed" in why
    assert reproduction.t_interval([0.1] * 32)[1] is None  # beyond the table (df 30)
    assert reproduction.T_975[2] == T_2 and len(reproduction.T_975) == 30


def test_paired_differences_match_the_hand_worked_numbers(tmp_path):
    runs = tables.load_runs(write_table1_runs(tmp_path))
    for first, second, values in (("dgkd", "takd", (1.1, 0.8, 1.2)),
                                  ("dgkd", "kd", (1.6, 1.5, 1.5)),
                                  ("kd", "nokd", (1.0, 0.7, 0.9))):
        d = reproduction.paired_difference(runs, first, second)
        assert d["seeds"] == list(SEEDS) and d["unpaired"] == []
        assert d["values"] == pytest.approx(values)
        mean, half = by_hand(values)
        assert d["mean"] == pytest.approx(mean) and d["half_width"] == pytest.approx(half)
    # DGKD − TAKD: mean 1.0333, sd 0.2082, half-width 4.303 · 0.2082 / √3 = 0.517.
    d = reproduction.paired_difference(runs, "dgkd", "takd")
    assert d["half_width"] == pytest.approx(0.5172, abs=1e-4)


def test_report_states_differences_ordering_gap_and_provenance(tmp_path):
    text = reproduction.reproduction_report(write_table1_runs(tmp_path, epochs=30), "the command")
    assert "| DGKD − TAKD | 3 | seed 20: +1.10, seed 31: +0.80, seed 55: +1.20 | +1.03 | " \
           "[+0.52, +1.55] (± 0.52) |" in text
    assert "| DGKD − KD | 3 | seed 20: +1.60, seed 31: +1.50, seed 55: +1.50 | +1.53 |" in text
    assert "| KD − NoKD | 3 |" in text and "| Stochastic DGKD − DGKD | 3 |" in text
    assert "| TAKD | resnet26 | resnet20, resnet14 | resnet8 | 30 | 20 31 55 | " \
           "87.50, 87.90, 87.10 | 87.50 ± 0.40 | 88.01 | -0.51 |" in text
    assert "in the means: **holds**" in text and "TAKD < DGKD: 87.50 vs 88.53, holds" in text
    # The paper's gap, 89.02 − 88.01 from dgkd_core.reporting.reference, inside [+0.52, +1.55].
    assert ("against the published +1.01 (89.02 − 88.01; TAKD paper, resnet26-teacher table "
            "(80 epochs)): +0.02 from it") in text
    assert "lies inside the 95 % interval [+0.52, +1.55] (± 0.52), which excludes 0" in text
    assert "- Command: `the command`" in text
    assert "- Device: NVIDIA H200 (cuda:0); torch 2.11.0, training code 2" in text
    # The paper's epochs are not known: the schedule is stated, with no claim about the paper's.
    assert "30 epochs, lr 0.1 step (×0.1 at [0.5, 0.75] of the epochs), batch 128" in text
    assert "the paper's is" not in text and "expect lower" not in text
    assert "- Code: " in text and "- Data checksum: abc123" in text


def test_an_ordering_that_fails_and_a_gap_outside_the_interval(tmp_path):
    accuracy = {**ACCURACY, "dgkd": (87.4, 87.8, 87.0), "sdgkd": (87.0, 87.1, 86.9)}
    text = reproduction.reproduction_report(write_table1_runs(tmp_path, accuracy), "c")
    assert "in the means: **does not hold**" in text
    assert "TAKD < DGKD: 87.50 vs 87.40, does not hold" in text
    assert "DGKD ≤ Stochastic DGKD: 87.40 vs 87.00, does not hold" in text
    # DGKD − TAKD is −0.10 on every seed: sd 0, so the interval is the point −0.10.
    assert "DGKD − TAKD: -0.10 here" in text and "lies above the 95 % interval" in text
    assert "160 epochs" in text and "the paper's is 160" not in text


def test_one_seed_gives_no_interval(tmp_path):
    paths = [p for p in write_table1_runs(tmp_path) if "/seed20/" in p]
    text = reproduction.reproduction_report(paths, "c")
    assert "| DGKD − TAKD | 1 | seed 20: +1.10 | +1.10 | n/a: one seed" in text
    assert "against the published +1.01" in text and "lies inside" not in text


def test_missing_run_is_named(tmp_path):
    paths = write_table1_runs(tmp_path)
    missing = next(p for p in paths if "/seed31/takd/" in p)
    os.remove(missing)
    config = reproduction.merged_config([REPRO_CONFIG])
    with pytest.raises(reproduction.ReproductionError, match="1 of 15 Table 1 runs have no "
                       "metrics.json: .*seed31/takd/resnet26-resnet20-resnet14-resnet8"):
        reproduction.table1_metrics_paths(config, tmp_path)


def test_cli_writes_the_report_and_refuses_missing_runs(tmp_path, capsys):
    write_table1_runs(tmp_path)
    out = tmp_path / "docs" / "reproduction.md"
    argv = ["reproduction", "--config", str(REPRO_CONFIG), "--workdir", str(tmp_path),
            "--command", "bash ci/reproduce_table1.sh", "--out", str(out), "--commit", "abc"]
    assert cli.main(argv) == 0
    text = out.read_text()
    assert "- Code: abc" in text and "| DGKD − TAKD | 3 |" in text
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("seeds: [20, 31, 55, 77]\n")  # merged as Snakemake merges it: seed 77 too
    assert cli.main(argv[:-2] + ["--config", str(overlay)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "5 of 20 Table 1 runs have no metrics.json" in err and "seed77" in err


def test_config_is_the_paper_recipe_on_the_copy():
    config = reproduction.merged_config([REPRO_CONFIG])
    plan = Plan(config)
    assert config["datasets"]["cifar10"]["archive"] == "../shared/data/cifar10-images.tar"
    assert config["seeds"] == [20, 31, 55] and config["ablations"] == {}
    assert len(plan.table1_runs()) == 15 and len(plan.runs()) == 27
    settings = plan.run_config(plan.table1_runs()[-1])
    assert settings["epochs"] == 160 and settings["batch_size"] == 128
    assert settings["schedule"] == {"name": "step", "milestones": [0.5, 0.75], "gamma": 0.1}
    assert settings["optimizer"]["lr"] == 0.1 and settings["optimizer"]["weight_decay"] == 1e-4
    assert settings["loss"]["keep_prob"] == 0.75 and not settings["loss"]["drop_teacher"]
    assert (settings["loss"]["lam"], settings["loss"]["temperature"]) == (0.5, 5.0)


@pytest.mark.slow
def test_script_end_to_end_on_the_cpu(tmp_path):
    """TEST=1: tiny synthetic data, plane4 -> plane3 -> plane2, 1 epoch; seeds and one more
    overlay given, to see both reach the workflow and the report (about 1 minute on 2 cores)."""
    overlay = tmp_path / "extra.yaml"
    overlay.write_text("hyperparameters:\n  defaults:\n    batch_size: 128\n")
    docs = tmp_path / "docs"
    generated = [REPO / "docs" / "reproduction.md", REPO / "docs" / "reproduction",
                 REPO / "results" / "reproduce_test"]
    before = [p.exists() for p in generated]
    env = {**os.environ, "TEST": "1", "SEEDS": "3 4", "REPRO_CONFIG_OVERLAY": str(overlay),
           "PYTHON": sys.executable, "WORKDIR": str(tmp_path / "work"),
           "REPORT_OUT": str(docs / "reproduction.md"),
           "EVIDENCE_DIR": str(docs / "reproduction"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(REPO / "ci" / "reproduce_table1.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (docs / "reproduction.md").read_text()
    for label in ("DGKD − TAKD", "DGKD − KD", "KD − NoKD"):
        assert f"| {label} | 2 | seed 3: " in text
    assert "1 epoch, lr 0.05 constant, batch 128" in text  # EPOCHS (TEST=1) and the overlay
    assert "no published experiment has both for this dataset and chain" in text
    assert "TEST=1" in text and "SEEDS=" in text  # the command as run
    evidence = docs / "reproduction" / "results"
    for name in ("table1.csv", "table1.md", "guides.csv"):
        assert (evidence / name).is_file()
    copied = sorted(p.relative_to(evidence).as_posix() for p in evidence.rglob("metrics.json"))
    assert len(copied) == 14 and "runs/synthetic/seed4/dgkd/plane4-plane3-plane2/metrics.json" \
        in copied
    assert not list((docs / "reproduction").rglob("*.pt"))
    assert (tmp_path / "out" / "reproduction.md").is_file()
    assert (tmp_path / "out" / "reproduce_logs.tar.gz").is_file()
    # what a device call brings back: at most 8 files, none more than 2 folders down
    returned = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(returned) <= 8 and all(len(p.relative_to(tmp_path / "out").parts) <= 3
                                      for p in returned)
    with tarfile.open(tmp_path / "out" / "reproduce_evidence.tar.gz") as tar:
        assert "reproduction/results/table1.csv" in tar.getnames()
    summary = proc.stdout.split("== summary")[-1]  # printed last: the table, the differences
    assert "| Method |" in summary and "| DGKD − TAKD | 2 |" in summary
    assert summary.strip().splitlines()[-1].startswith("workflow exit 0, report exit 0")
    assert [p.exists() for p in generated] == before
