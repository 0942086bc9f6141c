"""The Snakemake workflow: config errors, the DAG, incremental reruns, and the tiny demo end to end.

Every Snakemake call runs in a temporary working directory (`--directory`) with the repository's
Snakefile and a config written by the test, so the repository's own results/ is never touched.
Dry runs (-n) need no training; the end-to-end part trains 18 one-epoch tiny models.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dgkd_core.experiment.fused_groups import fused_groups
from dgkd_core.experiment.plan import Plan

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tiny(**changes) -> dict:
    """The tiny test config with top-level keys replaced."""
    config = copy.deepcopy(TINY)
    config.update(copy.deepcopy(changes))
    return config


def snakemake(workdir: Path, *args: str, config: dict | None = None,
              configfiles: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    files = list(configfiles)
    if config is not None:
        files.insert(0, write_config(workdir / f"config_{len(list(workdir.glob('config_*')))}.yaml",
                                     config))
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--resources", "gpu_jobs=2"]
    if files:
        cmd += ["--configfile", *map(str, files)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=900)


class DryRun:
    """What a dry run would do: training jobs (their wildcards) and job counts per rule."""

    def __init__(self, proc: subprocess.CompletedProcess):
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.text = proc.stdout + proc.stderr
        self.nothing_to_do = "Nothing to be done" in self.text
        self.train_jobs: list[dict] = []
        self.rules: list[str] = []
        rule = None
        for line in self.text.splitlines():
            m = re.match(r"^(?:local)?rule (\w+):$", line)
            if m:
                rule = m.group(1)
                self.rules.append(rule)
            m = re.match(r"^\s+wildcards: (.*)$", line)
            if m and rule == "train_model":
                self.train_jobs.append(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))

    def count(self, rule: str) -> int:
        return self.rules.count(rule)

    def runs(self) -> set[str]:
        return {f"seed{j['seed']}/{j['method']}/{j['lineage']}" for j in self.train_jobs}


def dry_run(workdir: Path, *args, **kwargs) -> DryRun:
    return DryRun(snakemake(workdir, "-n", *args, **kwargs))


# ------------------------------------------------------------------ config errors


def assert_fails_before_any_job(workdir: Path, config: dict, *needles: str) -> str:
    proc = snakemake(workdir, config=config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    assert not (workdir / "results").exists(), "a job ran although the config is invalid"
    return out


def test_config_errors_stop_snakemake_before_any_job(tmp_path):
    """Every config error is a plan test (tests/unit/experiment/test_plan.py); here: Snakemake stops on one."""
    out = assert_fails_before_any_job(
        tmp_path, tiny(methods=["nokd", "dgdk"]), "Invalid config",
        "'dgdk', which is not one of nokd, kd, takd, dgkd, sdgkd")
    assert "methods" in out
    config = tiny()
    config["hyperparameters"]["per_role"]["student"] = {"optimiser": {"lr": 0.1}}
    out = assert_fails_before_any_job(tmp_path, config, "'optimiser'", "per_role")
    assert "$defs" not in out and "additionalProperties" not in out  # not the whole schema


def test_teacher_smaller_than_student_warns(tmp_path):
    chains = {"upside_down": {"teacher": "plane2", "tas": ["plane3"], "student": "plane5"}}
    run = dry_run(tmp_path, config=tiny(chains=chains, ablations={}))
    assert "plane3 (69,866 parameters) is not larger than plane5" in run.text
    assert run.count("train_model") > 0


def test_plain_kd_alone_needs_no_ta(tmp_path):
    chains = {"direct": {"teacher": "plane5", "student": "plane2"}}
    run = dry_run(tmp_path, config=tiny(chains=chains, methods=["nokd", "kd"], ablations={}))
    assert run.runs() == {f"seed{s}/{m}" for s in (1, 2)
                          for m in ("nokd/plane5", "nokd/plane2", "kd/plane5-plane2")}


# -------------------------------------------------------------------------- the DAG


def test_job_count_of_a_three_ta_chain(tmp_path):
    """T -> A1 -> A2 -> A3 -> S, all five methods, one seed: 2n + 5 = 11 training jobs.

    teacher, NoKD student, KD student (3); TAKD: kd/T-A1 (shared with DGKD), two TAKD TAs, its
    student (4); DGKD: two DGKD TAs and its student (3); stochastic DGKD's student (1)."""
    chains = {"plain": {"teacher": "plane10", "tas": ["plane8", "plane6", "plane4"],
                        "student": "plane2"}}
    run = dry_run(tmp_path, config=tiny(chains=chains, seeds=[7], ablations={}))
    assert run.count("train_model") == 11
    assert run.count("prepare_data") == 1 and run.count("table1") == 1
    assert run.runs() == {
        "seed7/nokd/plane10", "seed7/nokd/plane2", "seed7/kd/plane10-plane2",
        "seed7/kd/plane10-plane8",
        "seed7/takd/plane10-plane8-plane6", "seed7/takd/plane10-plane8-plane6-plane4",
        "seed7/takd/plane10-plane8-plane6-plane4-plane2",
        "seed7/dgkd/plane10-plane8-plane6", "seed7/dgkd/plane10-plane8-plane6-plane4",
        "seed7/dgkd/plane10-plane8-plane6-plane4-plane2",
        "seed7/sdgkd-p0.75/plane10-plane8-plane6-plane4-plane2",
    }
    # Three seeds, two datasets: every job once per dataset and seed.
    datasets = {"a": TINY["datasets"]["synthetic"], "b": {**TINY["datasets"]["synthetic"],
                                                          "seed": 1}}
    run = dry_run(tmp_path, config=tiny(chains=chains, seeds=[1, 2, 3], datasets=datasets,
                                        ablations={}))
    assert run.count("train_model") == 11 * 3 * 2
    assert run.count("prepare_data") == 2


def test_paper_config_dag(tmp_path):
    """The default config (Table 1) plans 2 datasets x 3 seeds x (11 plain + 9 resnet) jobs,
    plus the ablations; the released code's settings reach the right jobs."""
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "2", "results/table1.csv"], capture_output=True, text=True, timeout=300)
    run = DryRun(proc)
    assert run.count("train_model") == 2 * 3 * (11 + 9)
    assert "seed55/sdgkd-p0.75/resnet26-resnet20-resnet14-resnet8" in run.runs()


def test_released_code_preset_dry_run(tmp_path):
    """config/released_code.yaml: Table 1's layout, stochastic DGKD in its own sdgkd-d1 runs."""
    run = dry_run(tmp_path, "results/table1.csv",
                  configfiles=(REPO / "config" / "released_code.yaml",))
    assert run.count("train_model") == 2 * 3 * (11 + 9)
    assert "seed55/sdgkd-d1/resnet26-resnet20-resnet14-resnet8" in run.runs()
    assert not any(r.startswith(("seed20/sdgkd-p", "seed31/sdgkd-p")) for r in run.runs())


def test_local_archive_config_unpacks_then_prepares(tmp_path):
    config = yaml.safe_load((REPO / "config" / "cifar10_local.yaml").read_text())
    archive = (REPO / config["datasets"]["cifar10"]["archive"]).resolve()
    if not archive.exists():
        pytest.skip(f"{archive} is not here")
    config["datasets"]["cifar10"]["archive"] = str(archive)  # relative to the repository
    run = dry_run(tmp_path, config=config)
    assert run.count("extract_archive") == 1 and run.count("prepare_data") == 1
    assert run.count("train_model") == 9  # the ResNet chain with two TAs, one seed


def image_archive_config(tmp_path: Path, **options) -> dict:
    """A 2-class imagefolder archive (16 train + 4 test 8x8 PNGs) as dataset `imgs`, trained by a
    one-epoch plane3 -> plane2 chain (NoKD and KD, one seed)."""
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, n in (("train", 8), ("test", 2)):
            for cls in ("cat", "dog"):
                for i in range(n):
                    png = tmp_path / "png" / split / cls / f"{i}.png"
                    png.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(png)
                    tar.add(png, arcname=f"{split}/{cls}/{i}.png")
    config = tiny(datasets={"imgs": {"source": "imagefolder", "archive": str(archive),
                                     "options": options}},
                  chains={"small": {"teacher": "plane3", "student": "plane2"}},
                  methods=["nokd", "kd"], seeds=[1], ablations={})
    config["hyperparameters"]["defaults"].update(batch_size=8, eval_batch_size=8)
    return config


def test_archive_dataset_unpacks_prepares_trains_and_is_removed(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = snakemake(workdir, config=image_archive_config(tmp_path))
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    results = workdir / "results"
    assert (results / "data" / "imgs.pt").is_file() and (results / "table1.csv").is_file()
    assert not (results / "extracted" / "imgs").exists()  # temp(): removed once prepared


def test_archive_dataset_too_large_to_cache_is_refused_before_training(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = snakemake(workdir, config=image_archive_config(tmp_path, max_cached_images=10))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    log = (workdir / "results" / "logs" / "prepare_data" / "imgs.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: dataset 'imgs' is given as an archive, which is unpacked only for preparing, but "
        "it is too large to cache (20 images, about 0.00 GiB as uint8; limits: 10 images, 8.00 "
        "GiB): unpack it yourself and set datasets.imgs.root, or raise "
        "options.max_cached_images/max_cached_bytes"], log
    assert "Traceback" not in log
    assert not (workdir / "results" / "data" / "imgs.pt").exists()
    assert not (workdir / "results" / "runs").exists() and "rule train_model" not in out


def lint(tmp_path, config: dict) -> subprocess.CompletedProcess:
    configfile = write_config(tmp_path / "tiny.yaml", config)
    return subprocess.run([SNAKEMAKE, "--lint", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(configfile)],
                          capture_output=True, text=True, timeout=300)


def test_lint_is_clean_and_rules_are_snakefmt_formatted(tmp_path):
    proc = lint(tmp_path, TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fmt = subprocess.run([str(Path(sys.executable).with_name("snakefmt")), "--check",
                          "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_lint_is_clean_with_fused_groups(tmp_path):
    """fuse: true defines one rule per fused group (rules/train_fused.smk): lint those too."""
    fused = TINY | {"fuse": True}
    assert fused_groups(Plan(fused))  # the config has groups, so their rules exist
    proc = lint(tmp_path, fused)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------- end to end (slow)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny workflow run to the end once; tests below look at it or dry-run changes on it."""
    workdir = tmp_path_factory.mktemp("workflow")
    proc = snakemake(workdir, config=TINY)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return workdir


def student_runs(seeds=(1, 2)) -> set[str]:
    """Table 1's students, and the convention ablation's own (seed 1, config/test_tiny.yaml)."""
    lineage = "plane5-plane4-plane3-plane2"
    return {f"seed{s}/{m}" for s in seeds for m in (
        "nokd/plane2", "kd/plane5-plane2", f"takd/{lineage}", f"dgkd/{lineage}",
        f"sdgkd-p0.75/{lineage}")} | {
        f"seed1/{m}+released_code_batchmean/{lin}"
        for m, lin in (("kd", "plane5-plane2"), ("dgkd", lineage))}


@pytest.mark.slow
def test_tiny_workflow_table_and_figures(finished):
    results = finished / "results"
    table = pd.read_csv(results / "table1.csv")
    assert len(table) == 5  # one dataset x one chain x five methods
    assert list(table["method"]) == ["nokd", "kd", "takd", "dgkd", "sdgkd"]
    assert (table["n_seeds"] == 2).all()
    for column in ("top1_last_mean", "top1_last_std", "top1_best_epoch_mean"):
        assert pd.api.types.is_float_dtype(table[column]), column
        assert table[column].between(0, 100).all(), column
    assert list(table["teacher"].fillna("")) == ["", "plane5", "plane5", "plane5", "plane5"]
    assert table.loc[table["method"] == "dgkd", "tas"].item() == "plane4, plane3"
    assert "Top-1 % (best epoch, mean; reference only)" in (results / "table1.md").read_text()
    html = (results / "table1.html").read_text()
    assert ">plane5 → plane4 → plane3 → plane2</td>" in html and ">DGKD</th>" in html
    page = (results / "summary.html").read_text()  # the one page to show, self-contained
    for needle in ("<h2>Paired differences</h2>", "DGKD − TAKD", "(n = 2 seeds)",
                   "<h2>Provenance</h2>", "<h2>Recipe</h2>"):
        assert needle in page, needle
    assert page.count('src="data:image/png;base64,') == 2 and "<script" not in page
    tex = (results / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{" in tex and " $\\pm$ " in tex
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == 10 + 8  # every model Table 1 reads: 5 students, 4 guides, 2 seeds
    assert runs["role"].value_counts().to_dict() == {"student": 10, "ta": 6, "teacher": 2}
    assert (runs["config.optimizer.lr"] == 0.05).all() and (runs["device"] == "cpu").all()
    resolved = yaml.safe_load((results / "config.yaml").read_text())
    assert resolved["seeds"] == TINY["seeds"]
    assert resolved["chains"]["plain"]["tas"] == TINY["chains"]["plain"]["tas"]
    guides = pd.read_csv(results / "guides.csv")
    assert list(zip(guides["role"], guides["method"], guides["model"])) == [
        ("teacher", "nokd", "plane5"), ("TA", "kd", "plane4"), ("TA", "takd", "plane3"),
        ("TA", "dgkd", "plane3")]
    num_tas = pd.read_csv(results / "ablations" / "num_tas.csv")
    assert list(zip(num_tas["method"], num_tas["n_tas"])) == [
        ("takd", 0), ("takd", 2), ("dgkd", 0), ("dgkd", 2)]
    keep = pd.read_csv(results / "ablations" / "keep_prob.csv")
    assert list(zip(keep["method"], keep["keep_prob"])) == [("sdgkd", 0.75), ("dgkd", 1.0)]
    convention = pd.read_csv(results / "ablations" / "convention.csv")
    assert list(zip(convention["method"], convention["convention"])) == [
        ("kd", "paper"), ("kd", "released_code_batchmean"), ("dgkd", "paper"),
        ("dgkd", "released_code_batchmean")]
    ran = json.loads((results / "runs" / "synthetic" / "seed1" / "dgkd+released_code_batchmean"
                      / "plane5-plane4-plane3-plane2" / "metrics.json").read_text())
    assert ran["config"]["loss"]["convention"] == "released_code_batchmean"

    from PIL import Image

    for name in ("methods", "learning_curves", "ablation_num_tas", "ablation_keep_prob",
                 "ablation_convention"):
        with Image.open(results / "figures" / f"{name}.png") as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200
        assert (results / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert (results / "logs" / "train" / "synthetic" / "seed1" / "nokd" / "plane5.log").exists()
    assert (results / "benchmarks" / "train" / "synthetic" / "seed1" / "nokd" / "plane5.tsv"
            ).exists()


@pytest.mark.slow
def test_finished_workflow_has_nothing_to_do(finished):
    run = dry_run(finished, config=TINY)
    assert run.nothing_to_do and not run.train_jobs, run.text


@pytest.mark.slow
def test_changing_student_settings_reruns_only_students(finished):
    config = tiny()
    config["hyperparameters"]["per_role"]["student"] = {"optimizer": {"lr": 0.02}}
    run = dry_run(finished, config=config)
    assert run.runs() == student_runs()
    assert {r for r in run.rules if r != "train_model"} == {
        "table1", "summary", "ablation_num_tas", "ablation_keep_prob", "ablation_convention",
        "all"}


@pytest.mark.slow
def test_changing_ta_settings_reruns_tas_and_what_they_guide(finished):
    config = tiny()
    config["hyperparameters"]["per_role"]["ta"] = {"epochs": 2}
    run = dry_run(finished, config=config)
    lineage = "plane5-plane4-plane3-plane2"
    expected = {f"seed{s}/{m}" for s in (1, 2) for m in (
        "kd/plane5-plane4", "takd/plane5-plane4-plane3", "dgkd/plane5-plane4-plane3",
        f"takd/{lineage}", f"dgkd/{lineage}", f"sdgkd-p0.75/{lineage}")} | {
        f"seed1/{m}+released_code_batchmean/{lin}" for m, lin in (
            ("kd", "plane5-plane4"), ("dgkd", "plane5-plane4-plane3"), ("dgkd", lineage))}
    assert run.runs() == expected  # teacher, NoKD and KD students untouched
    assert "prepare_data" not in run.rules


@pytest.mark.slow
def test_adding_a_seed_adds_only_that_seeds_jobs(finished):
    run = dry_run(finished, config=tiny(seeds=[1, 2, 3]))
    assert {j["seed"] for j in run.train_jobs} == {"3"}
    assert run.count("train_model") == 9  # 2n + 5 for n = 2 TAs
    assert "prepare_data" not in run.rules


@pytest.mark.slow
def test_settings_that_cannot_change_a_result_rerun_nothing(finished):
    config = tiny()
    config["hyperparameters"]["defaults"]["eval_batch_size"] = 64
    config["hyperparameters"]["per_role"]["teacher"] = {"device": "auto"}
    run = dry_run(finished, config=config)
    assert run.nothing_to_do and not run.train_jobs, run.text


@pytest.mark.slow
def test_method_override_reaches_that_methods_jobs_only(finished):
    config = tiny()
    config["hyperparameters"]["per_method"]["takd"] = {"loss": {"temperature": 3.0}}
    run = dry_run(finished, config=config)
    # the first TA is KD (shared with DGKD), so it stays
    assert run.runs() == {f"seed{s}/takd/{lin}" for s in (1, 2)
                          for lin in ("plane5-plane4-plane3", "plane5-plane4-plane3-plane2")}


@pytest.mark.slow
def test_html_report(finished, tmp_path):
    report = tmp_path / "report.html"
    proc = snakemake(finished, "--report", str(report), config=TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = report.read_text(errors="replace")
    assert "table1.csv" in text and "methods.png" in text
    # Snakemake 9 embeds each result as a base64 data URI in its `results` JSON and shows a
    # text/html one inline, in an iframe: Table 1's cells must be in that page.
    results = json.loads(re.search(r"var results = (\{.*?\});\n", text, re.S).group(1))
    entry = results["results/table1.html"]
    assert entry["mime_type"] == "text/html"
    table = base64.b64decode(entry["data_uri"].split(";base64,", 1)[1]).decode()
    md = (finished / "results" / "table1.md").read_text()
    dgkd = re.search(r"^\| synthetic \| plane \| DGKD \|.*?(\d+\.\d\d ± \d+\.\d\d)", md, re.M)
    assert ">DGKD</th>" in table and ">Stochastic DGKD (p=0.75)</th>" in table
    assert f">{dgkd.group(1)}<" in table  # DGKD's mean ± std, as Table 1's Markdown has it
    assert "Table 1 as the paper prints it" in entry["caption"]
    # the summary first: Snakemake's menu sorts the categories by name
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", text, re.S).group(1))
    assert sorted(categories)[0] == "1. Summary"
    assert categories["1. Summary"] == {"Other": ["results/summary.html"]}
    config = results["results/config.yaml"]
    assert "&quot;seeds&quot;: [" in config["caption"]  # the resolved config, shown inline
