"""The experiment plan (dgkd_core.experiment.plan) on small config dicts: no Snakemake, no subprocess.

Expected guides are written out by hand from the paper's definitions (docs/paper.md), not
computed with the code under test."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dgkd_core.experiment import paths
from dgkd_core.experiment.plan import Plan, evenly_spaced
from dgkd_core.method import registry
from dgkd_core.schema import ConfigError

REPO = Path(__file__).resolve().parents[3]
TINY = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
PLANE = ("plane10", "plane9", "plane8", "plane7", "plane6", "plane5", "plane4", "plane3",
         "plane2")


def config(**changes) -> dict:
    out = copy.deepcopy(TINY)
    out.update(copy.deepcopy(changes))
    return out


def chain_config(teacher, tas, student, methods_=("nokd", "kd", "takd", "dgkd", "sdgkd"),
                 seeds=(7,)) -> dict:
    return config(chains={"c": {"teacher": teacher, "tas": list(tas), "student": student}},
                  methods=list(methods_), seeds=list(seeds), ablations={})


def names(runs) -> list[str]:
    return [f"{r.method_dir}/{r.lineage_str}" for r in runs]


def student(plan: Plan, method: str):
    """The table's one student of `method` at the config's first seed."""
    first_seed = plan.config["seeds"][0]
    (run,) = [r for r in plan.table1_runs() if r.method == method and r.seed == first_seed]
    return run


# ---------------------------------------------------------------------- the registry


def test_labels_and_colours_come_from_the_registry():
    from dgkd_core.reporting import tables

    assert tables.method_label("sdgkd", 0.5) == "Stochastic DGKD (p=0.5)"
    assert tables.method_label("dgkd", 0.5) == "DGKD"
    assert tables.method_label("sdgkd", float("nan")) == "Stochastic DGKD"
    assert len({registry.colour(m) for m in registry.METHODS}) == len(registry.METHODS)


# ---------------------------------------------------------------------- guides


@pytest.mark.parametrize("n_tas", range(1, 8))
def test_dgkd_guides_are_dense_for_1_to_7_tas(n_tas):
    tas = PLANE[1:1 + n_tas]
    plan = Plan(chain_config("plane10", tas, "plane2", ["dgkd"]))
    run = student(plan, "dgkd")
    expected = ["nokd/plane10"]  # the teacher, then TA k trained by DGKD from all above it
    for k in range(1, n_tas + 1):
        method = "kd" if k == 1 else "dgkd"
        expected.append(f"{method}/{'-'.join(('plane10',) + tas[:k])}")
    assert names(plan.guides(run)) == expected
    # every DGKD TA is guided by the teacher and every larger TA, too
    last_ta = plan.guides(run)[-1]
    assert len(plan.guides(last_ta)) == n_tas
    # teacher, KD TA, n-1 DGKD TAs, the student
    assert len(plan.runs()) == n_tas + 2


def test_takd_chain_guides_one_step_up():
    plan = Plan(chain_config("plane10", ["plane8", "plane6", "plane4"], "plane2", ["takd"]))
    run = student(plan, "takd")
    assert names(plan.guides(run)) == ["takd/plane10-plane8-plane6-plane4"]
    chain = []
    while plan.guides(run):
        (run,) = plan.guides(run)
        chain.append(f"{run.method_dir}/{run.lineage_str}")
    assert chain == ["takd/plane10-plane8-plane6-plane4", "takd/plane10-plane8-plane6",
                     "kd/plane10-plane8", "nokd/plane10"]


def test_first_ta_is_the_one_shared_kd_run():
    plan = Plan(chain_config("plane10", ["plane8", "plane6"], "plane2", ["takd", "dgkd"]))
    first_tas = {names(plan.guides(r))[-1 if r.method == "takd" else 1]
                 for r in plan.runs() if r.lineage == ("plane10", "plane8", "plane6")}
    assert first_tas == {"kd/plane10-plane8"}
    assert names(plan.runs()).count("kd/plane10-plane8") == 1
    assert paths.make_run("d", 1, "takd", ["a", "b"]).method == "kd"
    assert paths.make_run("d", 1, "dgkd", ["a", "b"]).method == "kd"


def test_stochastic_dgkd_takes_dgkds_guides_and_its_keep_prob():
    plan = Plan(chain_config("plane10", ["plane8", "plane6"], "plane2", ["dgkd", "sdgkd"]))
    sdgkd, dgkd = student(plan, "sdgkd"), student(plan, "dgkd")
    assert sdgkd.keep_prob == 0.75 and sdgkd.method_dir == "sdgkd-p0.75"
    assert names(plan.guides(sdgkd)) == names(plan.guides(dgkd)) == [
        "nokd/plane10", "kd/plane10-plane8", "dgkd/plane10-plane8-plane6"]
    assert plan.run_config(sdgkd)["loss"]["keep_prob"] == 0.75
    assert plan.run_config(dgkd)["loss"]["keep_prob"] is None


def test_runs_are_unique_and_guides_come_first():
    plan = Plan(config())
    runs = plan.runs()
    assert len(runs) == len(set(runs))
    seen = set()
    for run in runs:
        assert set(plan.guides(run)) <= seen, run
        seen.add(run)
    # 2 TAs: 2n + 5 = 9 runs per seed (num_tas and keep_prob share them), and the convention
    # ablation's own at seed 1: the KD student and TA, the DGKD TA and student
    assert len(runs) == 9 * 2 + 4


def test_ablations_plan_their_runs():
    plan = Plan(config())
    assert names(plan.ablation_runs("num_tas"))[:2] == ["kd/plane5-plane2", "kd/plane5-plane2"]
    assert len(plan.ablation_runs("num_tas")) == 6  # kd x 2 seeds, takd/dgkd 2 TAs x 2 seeds
    assert {r.method_dir for r in plan.ablation_runs("keep_prob")} == {"sdgkd-p0.75", "dgkd"}
    with pytest.raises(ConfigError, match="ablations.nope is not configured"):
        Plan(config(ablations={})).ablation_runs("nope")
    assert evenly_spaced(["a", "b", "c", "d", "e", "f", "g"], 3) == ["b", "d", "f"]


# ---------------------------------------------------------------------- roles, layers


def test_roles_from_the_lineage():
    plan = Plan(config())
    roles = {f"{r.method_dir}/{r.lineage_str}": plan.role(r) for r in plan.runs()}
    assert roles["nokd/plane5"] == "teacher" and roles["nokd/plane2"] == "student"
    assert roles["kd/plane5-plane4"] == "ta" and roles["kd/plane5-plane2"] == "student"
    assert roles["dgkd/plane5-plane4-plane3"] == "ta"
    assert roles["dgkd/plane5-plane4-plane3-plane2"] == "student"


def test_layers_apply_in_order_defaults_family_role_method_run():
    cfg = config()
    hp = cfg["hyperparameters"]
    hp["defaults"]["epochs"] = 3
    hp["per_family"] = {"plane": {"epochs": 4, "batch_size": 32}}
    hp["per_role"]["student"] = {"epochs": 5, "optimizer": {"lr": 0.02}}
    hp["per_method"]["dgkd"] = {"epochs": 6}
    plan = Plan(cfg)
    (teacher,) = [r for r in plan.runs() if plan.role(r) == "teacher" and r.seed == 1]
    dgkd, kd = student(plan, "dgkd"), student(plan, "kd")
    assert plan.run_config(teacher)["epochs"] == 4  # family over defaults
    assert plan.run_config(kd)["epochs"] == 5  # role over family
    assert plan.run_config(dgkd)["epochs"] == 6  # method over role
    assert plan.run_config(dgkd)["batch_size"] == 32  # family, untouched above it
    assert plan.run_config(dgkd)["optimizer"] == {"lr": 0.02, "momentum": 0.9,
                                                  "weight_decay": 1.0e-4, "nesterov": False}
    assert (plan.run_config(dgkd)["model"], plan.run_config(dgkd)["seed"]) == ("plane2", 1)


def test_plan_does_not_change_its_input_and_fills_defaults():
    cfg = config()
    del cfg["resources"]["threads"]
    before = copy.deepcopy(cfg)
    plan = Plan(cfg)
    assert cfg == before
    assert plan.config["resources"]["threads"] == 1
    assert plan.config["datasets"]["synthetic"]["resize"] is None


# ---------------------------------------------------------------------- config errors


def set_in(cfg: dict, dotted: str, value) -> dict:
    node = cfg
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return cfg


@pytest.mark.parametrize("where, value, needles", [
    ("methods", ["nokd", "dgdk"], ["methods.1", "'dgdk'", "nokd, kd, takd, dgkd, sdgkd"]),
    ("chains.plain.student", "plane1", ["chains.plain", "unknown model 'plane1'", "resnet8"]),
    ("chains.plain.tas", [], ["chain 'plain' has no TA", "dgkd"]),
    ("hyperparameters.per_role.student", {"optimiser": {"lr": 0.1}},
     ["'optimiser'", "per_role.student"]),
    ("hyperparameters.defaults.loss.keep_prob", 0.5, ["per_method.sdgkd.loss.keep_prob"]),
    ("hyperparameters.per_method.sdgkd.loss", {}, ["sets neither keep_prob", "nor drop_num"]),
    ("hyperparameters.defaults.optimizer.lr", "1e6", ["defaults.optimizer.lr", "write 1.0e6"]),
    ("hyperparameters.defaults.epochs", 0, ["defaults.epochs", ">= 1"]),
    ("hyperparameters.per_family", {"planes": {}}, ["per_family.planes", "plane, resnet"]),
    ("hyperparameters.per_method.dgkd", {"loss": {"drop_num": -1}}, ["drop_num", ">= 0"]),
    ("seeds", [True], ["seeds.0", "integer"]),
    ("datasets.synthetic.options", {"synthetic_trian": 5}, ["'synthetic_trian'", "options"]),
    ("datasets.synthetic.resize", [32, 32, 3], ["resize"]),
    ("datasets.synthetic.archive", "x.tar", ["only the imagefolder source"]),
    ("datasets.synthetic.source", "imagefolder", ["needs `root`"]),
    ("ablations.num_tas.ta_counts", [0, 3], ["ta_counts [3] exceed the 2 TAs"]),
    ("ablations.num_tas.dataset", "nope", ["ablations.num_tas.dataset is 'nope'"]),
    ("ablations.keep_prob.chain", "nope", ["ablations.keep_prob.chain is 'nope'"]),
    ("resources.runtime_minutes", {"teacher": 0}, ["runtime_minutes.teacher", ">= 1"]),
    ("resources.runtime_minutes", {"techer": 5}, ["'techer'", "did you mean 'teacher'?"]),
])
def test_config_errors_name_the_key(where, value, needles):
    with pytest.raises(ConfigError) as err:
        Plan(set_in(config(), where, value))
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_resize_accepts_h_and_hw():
    for resize in (32, [32], [32, 24]):
        cfg = set_in(config(), "datasets.synthetic.resize", resize)
        assert Plan(cfg).dataset_identity("synthetic")["resize"] == resize


def test_a_layer_error_names_the_layer_and_the_allowed_values():
    cfg = config()
    cfg["hyperparameters"]["per_method"]["sdgkd"]["loss"]["convention"] = "released"
    with pytest.raises(ConfigError, match=r"per_method\.sdgkd\.loss\.convention' is 'released', "
                                          r"which is not one of paper, released_code"):
        Plan(cfg)


def test_the_plan_alone_reads_no_file_and_builds_no_model(monkeypatch):
    """What a plan is (runs, guides, settings) needs the config only; check() does the rest."""
    from dgkd_core.experiment import plan_checks

    def refuse(*args, **kwargs):
        raise AssertionError("the plan built a model or read a file before check()")

    monkeypatch.setattr(plan_checks, "build_model", refuse)
    monkeypatch.setattr(plan_checks.os.path, "isfile", refuse)
    plan = Plan(config())
    assert plan.runs() and all(plan.run_config(run) for run in plan.runs())


def test_chain_size_warning():
    plan = Plan(chain_config("plane2", ["plane3"], "plane5", ["nokd", "kd", "dgkd"]))
    assert not plan.warnings  # the plan alone builds no model: check() warns
    plan.check()
    assert any("plane3 (69,866 parameters) is not larger than plane5" in w
               for w in plan.warnings)
    assert not Plan(config()).check().warnings
    assert not any("expected" in w for w in plan.warnings)  # no reason: a real inversion


def test_the_plane7_warning_comes_once_with_its_reason():
    """The codes' CIFAR-100 plane6 (docs/paper.md) is mostly classifier: plane7 has fewer parameters."""
    cfg = config(datasets={"cifar100": {"source": "cifar100", "root": "dl", "download": True}},
                 chains={name: {"teacher": "plane8", "tas": ["plane7", "plane6"],
                                "student": "plane2"} for name in ("a", "b")},
                 methods=["nokd", "kd", "dgkd"], ablations={})
    warnings = [w for w in Plan(cfg).check().warnings if "plane7" in w]
    assert len(warnings) == 1, warnings
    assert "chains.a, chains.b on cifar100" in warnings[0]
    assert "expected: plane7 is deeper (7 conv layers to 6)" in warnings[0]
    assert "of plane6's parameters are its classifier" in warnings[0]


def test_a_config_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        Plan([1, 2])


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml", "test_tiny.yaml"])
def test_every_planned_run_passes_the_trainers_method_check(name):
    """train() refuses a run whose method and guides disagree: the workflow never plans one."""
    plan = Plan(yaml.safe_load((REPO / "config" / name).read_text()))
    for run in plan.runs():
        cfg = plan.run_config(run)
        registry.check_guides(cfg["method"], len(plan.guides(run)), cfg["loss"]["keep_prob"],
                             cfg["loss"]["drop_num"])


@pytest.mark.parametrize("method, n_guides, keep_prob, needle", [
    ("nokd", 1, None, "takes no guide checkpoints, but 1 was given"),
    ("kd", 0, None, "exactly 1 guide checkpoint, but 0 were given"),
    ("dgkd", 1, None, "at least 2 guide checkpoints, but 1 was given; .* the KD run"),
    ("sdgkd", 2, None, "needs loss.keep_prob"),
    ("takd", 1, 0.5, "loss.keep_prob is 0.5 but method is 'takd'"),
])
def test_check_guides_refuses_a_mismatch(method, n_guides, keep_prob, needle):
    with pytest.raises(ValueError, match=needle):
        registry.check_guides(method, n_guides, keep_prob)


def test_check_guides_accepts_each_methods_own_runs():
    for args in (("nokd", 0, None), ("kd", 1, None), ("takd", 1, None), ("dgkd", 2, None),
                 ("sdgkd", 3, 0.75)):
        registry.check_guides(*args)


# ---------------------------------------------------------------------- convention ablation


def test_convention_ablation_trains_its_chain_under_each_convention():
    plan = Plan(config(ablations={"convention": {
        "dataset": "synthetic", "chain": "plain", "methods": ["dgkd"], "seeds": [1],
        "conventions": ["paper", "released_code"]}}))
    paper, released = plan.ablation_runs("convention")
    assert paper in plan.table1_runs()  # the config's own convention: Table 1's run itself
    assert released.method_dir == "dgkd+released_code"
    assert names(plan.guides(released)) == [
        "nokd/plane5", "kd+released_code/plane5-plane4", "dgkd+released_code/plane5-plane4-plane3"]
    for run in [released, *plan.guides(released)[1:]]:
        assert plan.run_config(run)["loss"]["convention"] == "released_code"
    assert plan.run_config(paper)["loss"]["convention"] == "paper"
    assert paths.run_from_path(released.file("metrics.json")) == released


def test_convention_ablation_needs_a_chain_with_tas_for_ta_methods():
    cfg = config(chains={"direct": {"teacher": "plane5", "tas": [], "student": "plane2"}},
                 methods=["kd"], ablations={"convention": {
                     "dataset": "synthetic", "chain": "direct", "methods": ["kd", "dgkd"]}})
    with pytest.raises(ConfigError, match="ablations.convention.chain 'direct' has no TA"):
        Plan(cfg)


@pytest.mark.parametrize("resources", [None, {"threads": 2}, {"runtime_minutes": {"ta": 30}}])
def test_resources_have_defaults_for_a_local_run(resources):
    """A local run needs no resources; SLURM's runtime_minutes defaults per role too."""
    cfg = config()
    del cfg["resources"]
    if resources is not None:
        cfg["resources"] = resources
    filled = Plan(cfg).config["resources"]
    assert filled["mem_mb"] == 4000 and filled["gpus_per_job"]["default"] == 1
    assert filled["threads"] == (resources or {}).get("threads", 1)
    assert filled["runtime_minutes"] == {"teacher": 720, "student": 480,
                                         "ta": 30 if resources and "runtime_minutes" in resources
                                         else 480}
