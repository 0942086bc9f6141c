"""Imported teachers and TAs (dgkd_core.experiment.importing, Plan.import_source, rule import_model).

A tiny model's checkpoint is written in every accepted layout and imported; the plan and a
Snakemake dry run show which runs are imported and that nothing trains them; a real import shows
that new content reruns the import and what it guides, and that moving the file does not.
"""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dgkd_core.config import resolve_run_config
from dgkd_core.data import load_prepared, prepare_dataset
from dgkd_core.experiment import paths
from dgkd_core.experiment.importing import ImportFailed, import_model
from dgkd_core.experiment.plan import Plan
from dgkd_core.guides.checkpoints import load_checkpoint, load_guide, save_checkpoint
from dgkd_core.method.models import build_model
from dgkd_core.reporting.tables import read_metrics
from dgkd_core.schema import ConfigError
from dgkd_core.training.evaluate import evaluate_checkpoint

REPO = Path(__file__).resolve().parents[3]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
DATASET = "synthetic"  # the prepared data's name: the plain CNNs' layout depends on it


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / f"{DATASET}.pt"
    prepare_dataset("synthetic", path, name=DATASET, seed=0, synthetic_train=32, synthetic_test=64)
    return path


def run_config(model: str, method: str = "nokd") -> dict:
    return resolve_run_config({"model": model, "method": method, "seed": 1, "device": "cpu",
                               "eval_batch_size": 64})


def tiny_model(name: str = "plane3", classes: int = 10):
    torch.manual_seed(0)
    return build_model(name, classes, dataset=DATASET)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ layouts


def _project_checkpoint(model, path: Path, data: Path) -> None:
    save_checkpoint(path, model, run_config("plane3"), load_prepared(data).meta, {})


def _prefixed(state: dict) -> dict:
    return {f"module.{k}": v for k, v in state.items()}


LAYOUTS = {
    "project model.pt": None,  # save_checkpoint, needs the data's meta
    "plain state_dict": lambda sd: sd,
    "{'model': sd} (RepDistiller, mdistiller)": lambda sd: {"model": sd, "epoch": 240,
                                                            "accuracy": 71.2},
    "{'net': sd}": lambda sd: {"net": sd, "acc": 93.0, "epoch": 199},
    "{'state_dict': sd} with an optimizer": lambda sd: {
        "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
    "module. prefixed (DataParallel)": _prefixed,
    "{'model': module. prefixed sd}": lambda sd: {"model": _prefixed(sd)},
    "_orig_mod. prefixed (torch.compile)": lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_imports_as_a_guide_with_identical_weights(layout, data, tmp_path):
    model = tiny_model()
    source = tmp_path / "teacher.pth"
    if LAYOUTS[layout] is None:
        _project_checkpoint(model, source, data)
    else:
        torch.save(LAYOUTS[layout](model.state_dict()), source)
    out = tmp_path / "run"
    metrics = import_model(source, data, out, cfg=run_config("plane3"), key="chains.c.x")

    guide = load_guide(out / "model.pt", load_prepared(data).meta, torch.device("cpu"))
    for key, value in model.state_dict().items():
        assert torch.equal(guide.state_dict()[key], value), key
    written = read_metrics(out / "metrics.json")  # what the tables read
    assert written == metrics
    assert written["imported"] is True and written["source_sha256"] == sha256(source)
    assert written["source_path"] == str(source) and written["epochs"] == 0
    assert written["top1_last"] == written["top1_best"] and written["guides"] == []
    # the project's own evaluation of the written model.pt gives the same number
    assert evaluate_checkpoint(out / "model.pt", data, device="cpu")["top1"] == written["top1_last"]
    history = pd.read_csv(out / "history.csv")
    assert history.to_dict("records") == [{"epoch": 0, "test_top1": written["top1_last"],
                                           "test_top5": written["top5_last"],
                                           "test_loss": written["test_loss"]}]
    assert load_checkpoint(out / "model.pt")["source_sha256"] == sha256(source)


def test_torchvision_resnet18_state_dict_imports(data, tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    source = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), source)  # what torchvision's weight files hold
    metrics = import_model(source, data, tmp_path / "run", cfg=run_config("resnet18"))
    assert metrics["imported"] and metrics["source_layout"] == "state_dict"
    guide = load_guide(tmp_path / "run" / "model.pt", load_prepared(data).meta, torch.device("cpu"))
    assert torch.equal(guide.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


# ------------------------------------------------------------------ refused files


def test_architecture_mismatch_names_the_file_and_the_first_difference(data, tmp_path):
    source = tmp_path / "plane2.pth"
    torch.save(tiny_model("plane2").state_dict(), source)
    with pytest.raises(ImportFailed) as err:
        import_model(source, data, tmp_path / "run", cfg=run_config("plane3"),
                     key="chains.c.teacher_checkpoint")
    message = str(err.value)
    assert "\n" not in message and str(source) in message
    assert "chains.c.teacher_checkpoint" in message and "is not a plane3" in message
    assert re.search(r"missing key|unexpected key|has shape", message), message
    assert not (tmp_path / "run").exists()


def test_recorded_model_name_must_match(data, tmp_path):
    source = tmp_path / "model.pt"
    save_checkpoint(source, tiny_model("plane2"), run_config("plane2"),
                    load_prepared(data).meta, {})
    with pytest.raises(ImportFailed, match=r"holds a plane2 \(its recorded 'model'\), not the "
                                           r"plane3"):
        import_model(source, data, tmp_path / "run", cfg=run_config("plane3"))


def test_class_count_mismatch(data, tmp_path):
    source = tmp_path / "cifar100_plane3.pth"
    torch.save({"model": tiny_model("plane3", classes=100).state_dict()}, source)
    with pytest.raises(ImportFailed) as err:
        import_model(source, data, tmp_path / "run", cfg=run_config("plane3"))
    assert str(source) in str(err.value)
    assert "has 100 classes" in str(err.value) and f"'{DATASET}' has 10" in str(err.value)


def test_imagenet_weights_into_a_ten_class_dataset_is_a_class_count_error(data, tmp_path):
    import torchvision

    source = tmp_path / "resnet18_imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), source)  # 1000 classes
    with pytest.raises(ImportFailed, match=r"has 1000 classes \(fc.weight has shape \[1000, "
                                           r"512\]\)"):
        import_model(source, data, tmp_path / "run", cfg=run_config("resnet18"))


class WritesAFile:
    """Unpickling this calls open(path, "w"): the file appears if the loader runs code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_nothing_in_it_runs(data, tmp_path):
    source = tmp_path / "evil.pth"
    torch.save({"model": WritesAFile(tmp_path / "MARKER")}, source)
    with pytest.raises(ImportFailed) as err:
        import_model(source, data, tmp_path / "run", cfg=run_config("plane3"))
    assert "holds more than tensors and plain values" in str(err.value)
    assert "\n" not in str(err.value) and str(source) in str(err.value)
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, needle", [
    ({"epoch": 3, "acc": 0.9}, "holds no state_dict: a dict with keys 'epoch', 'acc'"),
    (b"not a torch file", "is truncated or corrupt"),
])
def test_files_without_a_state_dict_are_refused(content, needle, data, tmp_path):
    source = tmp_path / "odd.pth"
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        torch.save(content, source)
    with pytest.raises(ImportFailed, match=re.escape(needle)):
        import_model(source, data, tmp_path / "run", cfg=run_config("plane3"))


def test_non_finite_weights_are_refused(data, tmp_path):
    state = tiny_model().state_dict()
    state["classifier.0.bias"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ImportFailed, match="non-finite values .* in 'classifier.0.bias'"):
        import_model(tmp_path / "nan.pth", data, tmp_path / "run", cfg=run_config("plane3"))


def test_content_changed_since_planning_is_refused(data, tmp_path):
    torch.save(tiny_model().state_dict(), tmp_path / "t.pth")
    with pytest.raises(ImportFailed, match="changed while the workflow ran"):
        import_model(tmp_path / "t.pth", data, tmp_path / "run", cfg=run_config("plane3"),
                     expected_sha256="0" * 64)


# ------------------------------------------------------------------ the plan


def tiny(**chain_changes) -> dict:
    config = copy.deepcopy(TINY)
    config["chains"]["plain"].update(copy.deepcopy(chain_changes))
    return config


def dirs(runs) -> set[str]:
    return {f"seed{r.seed}/{r.method_dir}/{r.lineage_str}" for r in runs}


def test_plan_imports_the_teachers_run_and_leaves_the_rest_unchanged(tmp_path):
    source = tmp_path / "teacher.pth"
    source.write_bytes(b"any content")  # the plan reads only its bytes (for the sha256)
    plain, imported = Plan(tiny()), Plan(tiny(teacher_checkpoint=str(source))).check()
    assert dirs(imported.runs()) == dirs(plain.runs())
    from_file = {r for r in imported.runs() if imported.import_source(r) is not None}
    assert dirs(from_file) == {"seed1/nokd/plane5", "seed2/nokd/plane5"}
    assert {imported.import_source(r) for r in from_file} == {str(source)}
    assert imported.import_key(next(iter(from_file))) == "chains.plain.teacher_checkpoint"
    assert imported.import_sha256(next(iter(from_file))) == sha256(source)
    for run in plain.runs():
        assert imported.guides(run) == plain.guides(run)
    assert imported.imported_lineages() == ["plane5"]


def test_an_imported_ta_replaces_every_run_of_it_in_its_chain(tmp_path):
    source = tmp_path / "plane3.pth"
    source.write_bytes(b"x")
    plan = Plan(tiny(ta_checkpoints={"plane3": str(source)}))
    from_file = {r for r in plan.runs() if plan.import_source(r) is not None}
    # TAKD's and DGKD's TA at both seeds, and the convention ablation's (seed 1 only)
    assert dirs(from_file) == {"seed1/takd/plane5-plane4-plane3", "seed2/takd/plane5-plane4-plane3",
                               "seed1/dgkd/plane5-plane4-plane3", "seed2/dgkd/plane5-plane4-plane3",
                               "seed1/dgkd+released_code_batchmean/plane5-plane4-plane3"}
    assert all(plan.guides(r) == [] for r in from_file)
    assert "seed1/kd/plane5-plane4" in dirs(plan.runs())  # DGKD's students still need it
    takd_only = Plan(tiny(ta_checkpoints={"plane3": str(source)}) | {
        "methods": ["takd"], "ablations": {}, "seeds": [1]})
    # TAKD's student needs only its last TA, which is imported: nothing else is trained for it
    assert dirs(takd_only.runs()) == {"seed1/takd/plane5-plane4-plane3",
                                      "seed1/takd/plane5-plane4-plane3-plane2"}


def test_plan_import_errors_name_the_key(tmp_path):
    missing = Plan(tiny(teacher_checkpoint="missing.pth"))  # the plan alone reads no file
    with pytest.raises(ConfigError, match=r"chains.plain.teacher_checkpoint: there is no file "
                                          r"missing.pth"):
        missing.check()
    (tmp_path / "t.pth").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"chains.plain.ta_checkpoints.plane9: plane9 is not "
                                          r"one of the chain's TAs \(plane4, plane3\)"):
        Plan(tiny(ta_checkpoints={"plane9": str(tmp_path / "t.pth")}))
    config = tiny(teacher_checkpoint=str(tmp_path / "t.pth"))
    config["chains"]["other"] = {"teacher": "plane5", "tas": ["plane3"], "student": "plane2"}
    with pytest.raises(ConfigError, match=r"chains share the run of plane5 but not its "
                                          r"checkpoint: .*chains.other.teacher_checkpoint is "
                                          r"not set"):
        Plan(config).check()
    config["chains"]["other"]["teacher_checkpoint"] = str(tmp_path / "t.pth")
    assert Plan(config).check().imported_lineages() == ["plane5"]
    with pytest.raises(ConfigError, match=r"'chains.plain.ta_checkpoints' is \['t.pth'\], but "
                                          r"it must be of type object"):
        Plan(tiny(ta_checkpoints=["t.pth"]))


def test_a_nokd_student_that_is_an_imported_teacher_warns(tmp_path):
    (tmp_path / "t.pth").write_bytes(b"x")
    config = tiny(teacher_checkpoint=str(tmp_path / "t.pth"))
    config["chains"]["small"] = {"teacher": "plane9", "tas": ["plane7"], "student": "plane5"}
    warnings = Plan(config).check().warnings
    assert any("NoKD student nokd/plane5 is imported (chains.plain.teacher_checkpoint)" in w
               for w in warnings), warnings


# ------------------------------------------------------------------ the workflow


def snakemake(workdir: Path, *args: str, config: dict) -> subprocess.CompletedProcess:
    """Snakemake on the repository's Snakefile in `workdir`, with `config` as its only config."""
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [SNAKEMAKE, *args, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--resources", "gpu_jobs=2", "--configfile", str(configfile)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def dry_run_text(workdir: Path, target: str, config: dict) -> str:
    proc = snakemake(workdir, "-n", target, config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def planned_jobs(proc: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, `seed/method/lineage`) of every run job a dry run lists."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs, rule = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        if m := re.match(r"^\s+wildcards: .*seed=(\d+), method=([^,]+), lineage=(\S+)$", line):
            jobs.append((rule, f"seed{m.group(1)}/{m.group(2)}/{m.group(3)}"))
    return jobs


def test_dry_run_imports_the_teacher_and_trains_nothing_of_it(tmp_path):
    torch.save(tiny_model("plane5").state_dict(), tmp_path / "teacher.pth")
    jobs = planned_jobs(snakemake(tmp_path, "-n", config=tiny(teacher_checkpoint="teacher.pth")))
    imported = sorted(run for rule, run in jobs if rule == "import_model")
    assert imported == ["seed1/nokd/plane5", "seed2/nokd/plane5"]
    trained = [run for rule, run in jobs if rule == "train_model"]
    assert not [run for run in trained if run.endswith("/plane5")]
    assert len(trained) == len(Plan(TINY).runs()) - 2  # everything else is trained as before


def test_dry_run_imports_a_ta_for_every_run_of_it_and_trains_its_students(tmp_path):
    torch.save(tiny_model("plane3").state_dict(), tmp_path / "ta.pth")
    config = tiny(ta_checkpoints={"plane3": "ta.pth"})
    config["ablations"] = {}
    jobs = planned_jobs(snakemake(tmp_path, "-n", config=config))
    assert sorted(run for rule, run in jobs if rule == "import_model") == [
        f"seed{seed}/{method}/plane5-plane4-plane3"
        for seed in (1, 2) for method in ("dgkd", "takd")]
    trained = {run for rule, run in jobs if rule == "train_model"}
    assert not [run for run in trained if run.endswith("/plane5-plane4-plane3")]
    assert {"seed1/takd/plane5-plane4-plane3-plane2", "seed1/dgkd/plane5-plane4-plane3-plane2",
            "seed1/kd/plane5-plane4", "seed1/nokd/plane5"} <= trained


def test_missing_file_stops_snakemake_before_any_job(tmp_path):
    proc = snakemake(tmp_path, config=tiny(ta_checkpoints={"plane4": "gone.pth"}))
    assert proc.returncode != 0
    assert ("Invalid config: chains.plain.ta_checkpoints.plane4: there is no file gone.pth"
            in proc.stdout + proc.stderr)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_new_content_reruns_the_import_and_what_it_guides_and_moving_does_not(tmp_path):
    torch.save(tiny_model("plane5").state_dict(), tmp_path / "teacher.pth")
    config = tiny(teacher_checkpoint="teacher.pth")
    config.update(methods=["kd"], seeds=[1], ablations={})
    student = "results/runs/synthetic/seed1/kd/plane5-plane2/model.pt"
    proc = snakemake(tmp_path, student, config=config)  # imports, then trains from the import
    assert proc.returncode == 0, proc.stdout + proc.stderr
    teacher = paths.make_run(DATASET, 1, "nokd", ["plane5"])
    assert read_metrics(tmp_path / teacher.file("metrics.json"))["imported"] is True
    assert "Nothing to be done" in dry_run_text(tmp_path, student, config)

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "teacher.pth").rename(tmp_path / "elsewhere" / "teacher.pth")
    config["chains"]["plain"]["teacher_checkpoint"] = "elsewhere/teacher.pth"
    assert "Nothing to be done" in dry_run_text(tmp_path, student, config)

    torch.save(tiny_model("plane5").state_dict() | {"classifier.0.bias": torch.ones(10)},
               tmp_path / "elsewhere" / "teacher.pth")
    proc = snakemake(tmp_path, "-n", student, config=config)
    assert sorted(planned_jobs(proc)) == [("import_model", "seed1/nokd/plane5"),
                                          ("train_model", "seed1/kd/plane5-plane2")]
    assert "Params have changed" in proc.stdout + proc.stderr
