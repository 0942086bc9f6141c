"""Config validation, the experiment plan (which runs exist), and the rules' input functions.

A run is one training job (dgkd_core.paths.Run): dataset, seed, method and lineage. Its output
paths come only from dgkd_core.paths; its settings only from `run_config` below.
"""

from functools import cache

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from dgkd_core import paths
from dgkd_core.config import (
    TRAINING_CODE_VERSION,
    ConfigError,
    deep_update,
    resolve_run_config,
)
from dgkd_core.models import (
    available_models,
    build_model,
    count_parameters,
    model_family,
)

validate(config, "../config/schema.yaml")


wildcard_constraints:
    **paths.WILDCARD_CONSTRAINTS,


# A training job's outputs, log and benchmark as wildcard patterns (dgkd_core.paths builds them).
RUN_WILDCARDS = ("{dataset}", "{seed}", "{method}", "{lineage}")
METHODS_WITH_TAS = ("takd", "dgkd", "sdgkd")
HYPERPARAMETERS = config["hyperparameters"]
ABLATIONS = config.get("ablations") or {}


# --------------------------------------------------------------------- config checks


def config_error(message):
    """Stop before any job runs, naming the offending key."""
    raise WorkflowError(f"Invalid config: {message}")


def chain_models(chain):
    return [chain["teacher"], *chain.get("tas", []), chain["student"]]


def all_chains():
    """(name, chain) for Table 1's chains and the TA-count ablation's chain."""
    named = [(f"chains.{name}", chain) for name, chain in config["chains"].items()]
    if "num_tas" in ABLATIONS:
        named.append(("ablations.num_tas", ABLATIONS["num_tas"]))
    return named


def check_models():
    known = available_models()
    for where, chain in all_chains():
        for model in chain_models(chain):
            if model not in known:
                config_error(
                    f"{where}: unknown model '{model}'; available models: {', '.join(known)}"
                )


def check_datasets():
    for name, spec in config["datasets"].items():
        where = f"datasets.{name}"
        if spec.get("archive") and spec["source"] != "imagefolder":
            config_error(
                f"{where}.archive: only the imagefolder source is unpacked from an archive"
            )
        if spec["source"] == "imagefolder" and not (
            spec.get("root") or spec.get("archive")
        ):
            config_error(
                f"{where}: the imagefolder source needs `root` (a folder with "
                "train/<class>/ and test/<class>/) or `archive` (a .tar of one)"
            )
    used = [(f"ablations.{k}.dataset", a["dataset"]) for k, a in ABLATIONS.items()]
    for where, name in used:
        if name not in config["datasets"]:
            config_error(
                f"{where} is '{name}'; datasets defined: {', '.join(config['datasets'])}"
            )


def check_chains_have_tas():
    needing = [m for m in config["methods"] if m in METHODS_WITH_TAS]
    if not needing:
        return
    for name, chain in config["chains"].items():
        if not chain.get("tas"):
            config_error(
                f"chain '{name}' has no TA (chains.{name}.tas is empty), but methods "
                f"{', '.join(needing)} need at least one; add TAs or drop those methods"
            )


def check_ablations():
    if "num_tas" in ABLATIONS:
        ab = ABLATIONS["num_tas"]
        too_many = [k for k in ab["ta_counts"] if k > len(ab["tas"])]
        if too_many:
            config_error(
                f"ablations.num_tas.ta_counts {too_many} exceed the {len(ab['tas'])} "
                "TAs listed in ablations.num_tas.tas"
            )
    if "keep_prob" in ABLATIONS:
        chain = ABLATIONS["keep_prob"]["chain"]
        if chain not in config["chains"]:
            config_error(
                f"ablations.keep_prob.chain is '{chain}'; chains defined: "
                f"{', '.join(config['chains'])}"
            )
        if not config["chains"][chain].get("tas"):
            config_error(
                f"ablations.keep_prob.chain '{chain}' has no TA; stochastic DGKD "
                "needs at least one"
            )


def check_keep_prob():
    """keep_prob makes a run stochastic DGKD, so it is set under per_method.sdgkd only."""
    layers = {"defaults": HYPERPARAMETERS["defaults"]}
    for group in ("per_family", "per_role", "per_method"):
        for key, settings in HYPERPARAMETERS.get(group, {}).items():
            layers[f"{group}.{key}"] = settings
    for where, settings in layers.items():
        if (
            where != "per_method.sdgkd"
            and settings.get("loss", {}).get("keep_prob") is not None
        ):
            config_error(
                f"hyperparameters.{where}.loss.keep_prob: the keep probability belongs "
                "under hyperparameters.per_method.sdgkd.loss.keep_prob"
            )
    if "sdgkd" in config["methods"] and sdgkd_keep_prob() is None:
        config_error(
            "methods include sdgkd, but hyperparameters.per_method.sdgkd.loss."
            "keep_prob is not set (stochastic DGKD's keep probability, e.g. 0.75)"
        )


def check_families():
    families = sorted({model_family(m) for m in available_models()})
    for family in HYPERPARAMETERS.get("per_family", {}):
        if family not in families:
            config_error(
                f"hyperparameters.per_family.{family}: unknown model family; "
                f"allowed: {', '.join(families)}"
            )


def num_classes_hint(dataset):
    return 100 if config["datasets"][dataset]["source"] == "cifar100" else 10


@cache
def parameter_count(model, dataset):
    return count_parameters(
        build_model(model, num_classes_hint(dataset), dataset=dataset)
    )


def warn_on_chain_sizes():
    """Each model of a chain should be larger than the next one (a warning, not an error)."""
    for where, chain in all_chains():
        models = chain_models(chain)
        datasets = (
            [chain["dataset"]] if "dataset" in chain else list(config["datasets"])
        )
        for dataset in datasets:
            for bigger, smaller in zip(models, models[1:]):
                n_big, n_small = parameter_count(bigger, dataset), parameter_count(
                    smaller, dataset
                )
                if n_big <= n_small:
                    logger.warning(
                        f"Warning: {where} on {dataset}: {bigger} ({n_big:,} parameters) is "
                        f"not larger than {smaller} ({n_small:,}), which it guides"
                    )


# ------------------------------------------------------------------------- the plan


def sdgkd_keep_prob():
    return (
        HYPERPARAMETERS.get("per_method", {})
        .get("sdgkd", {})
        .get("loss", {})
        .get("keep_prob")
    )


def student_run(dataset, seed, method, teacher, tas, student, keep_prob=None):
    """The run that trains `student` by `method` along teacher -> tas -> student."""
    if method == "nokd":
        lineage = [student]
    elif method == "kd":
        lineage = [teacher, student]
    else:
        lineage = [teacher, *tas, student]
    if method == "sdgkd" and keep_prob is None:
        keep_prob = sdgkd_keep_prob()
    return paths.make_run(dataset, seed, method, lineage, keep_prob)


def guide_runs(run):
    """The runs whose checkpoints guide `run`: teacher first, then TAs from largest to smallest.

    KD: the teacher. TAKD: the previous model of the chain, itself trained by TAKD. DGKD: the
    teacher and every larger TA, each trained by DGKD. Stochastic DGKD: DGKD's guides (its
    dropping applies to the final student only). paths.make_run turns a TAKD or DGKD model with
    the teacher as its only guide into the one shared KD run."""
    if run.method == "nokd":
        return []
    teacher = paths.make_run(run.dataset, run.seed, "nokd", run.lineage[:1])
    if run.method == "kd":
        return [teacher]
    if run.method == "takd":
        return [paths.make_run(run.dataset, run.seed, "takd", run.lineage[:-1])]
    return [teacher] + [
        paths.make_run(run.dataset, run.seed, "dgkd", run.lineage[: i + 1])
        for i in range(1, len(run.lineage) - 1)
    ]


def with_guides(runs):
    """`runs` and every run they depend on, each once, in first-seen order."""
    out = {}

    def visit(run):
        if run not in out:
            for guide in guide_runs(run):
                visit(guide)
            out[run] = None

    for run in runs:
        visit(run)
    return list(out)


def table1_runs():
    """Table 1's students: every dataset x chain x method x seed."""
    return [
        student_run(
            dataset,
            seed,
            method,
            chain["teacher"],
            chain.get("tas", []),
            chain["student"],
        )
        for dataset in config["datasets"]
        for chain in config["chains"].values()
        for method in config["methods"]
        for seed in config["seeds"]
    ]


def table1_guide_runs():
    students = table1_runs()
    is_student = set(students)
    return [run for run in with_guides(students) if run not in is_student]


def evenly_spaced(tas, k):
    """k of `tas` (largest first), spread evenly along the chain: k=3 of 7 -> 2nd, 4th, 6th."""
    n = len(tas)
    return [tas[int((i + 1) * (n + 1) / (k + 1) + 0.5) - 1] for i in range(k)]


def num_tas_runs():
    ab = ABLATIONS["num_tas"]
    return [
        student_run(
            ab["dataset"],
            seed,
            method,
            ab["teacher"],
            evenly_spaced(ab["tas"], k),
            ab["student"],
        )
        for k in ab["ta_counts"]
        for method in ab["methods"]
        for seed in ab.get("seeds", config["seeds"])
    ]


def keep_prob_runs():
    """Stochastic DGKD at each keep probability, and DGKD (no dropping) for reference."""
    ab = ABLATIONS["keep_prob"]
    chain = config["chains"][ab["chain"]]
    seeds = ab.get("seeds", config["seeds"])
    sweep = [(p, "sdgkd") for p in ab["keep_probs"]] + [(None, "dgkd")]
    return [
        student_run(
            ab["dataset"],
            seed,
            method,
            chain["teacher"],
            chain["tas"],
            chain["student"],
            keep_prob=p,
        )
        for p, method in sweep
        for seed in seeds
    ]


def planned_runs():
    runs = table1_runs()
    if "num_tas" in ABLATIONS:
        runs += num_tas_runs()
    if "keep_prob" in ABLATIONS:
        runs += keep_prob_runs()
    return with_guides(runs)


# ------------------------------------------------------------------ settings per run


@cache
def teachers_and_pairs():
    chains = [chain for _, chain in all_chains()]
    teachers = {chain["teacher"] for chain in chains}
    pairs = {(chain["teacher"], chain["student"]) for chain in chains}
    return teachers, pairs


def role_of(run):
    """teacher | ta | student, from the lineage: a model trained alone is a teacher if some
    chain starts with it (else a NoKD student); a guided model is a student if some chain goes
    from its teacher to it (else a TA)."""
    teachers, pairs = teachers_and_pairs()
    if len(run.lineage) == 1:
        return "teacher" if run.model in teachers else "student"
    return "student" if (run.lineage[0], run.model) in pairs else "ta"


def run_config(run):
    """The resolved run config of one job: defaults < per_family < per_role < per_method."""
    layers = [
        HYPERPARAMETERS["defaults"],
        HYPERPARAMETERS.get("per_family", {}).get(model_family(run.model), {}),
        HYPERPARAMETERS.get("per_role", {}).get(role_of(run), {}),
        HYPERPARAMETERS.get("per_method", {}).get(run.method, {}),
        {
            "model": run.model,
            "method": run.method,
            "seed": run.seed,
            "loss": {"keep_prob": run.keep_prob},
        },
    ]
    partial = {}
    for layer in layers:
        partial = deep_update(partial, layer)
    return resolve_run_config(partial)


def check_run_configs():
    for run in planned_runs():
        try:
            run_config(run)
        except ConfigError as err:
            config_error(f"hyperparameters for {run.dir}: {err}")


check_models()
check_datasets()
check_chains_have_tas()
check_ablations()
check_keep_prob()
check_families()
check_run_configs()
warn_on_chain_sizes()


# ------------------------------------------------------------------ input functions


def run_of(wildcards):
    """The run a train_model job's wildcards name; refuses a non-canonical path."""
    run = paths.run_from_wildcards(
        wildcards.dataset, wildcards.seed, wildcards.method, wildcards.lineage
    )
    if run.method_dir != wildcards.method:
        raise WorkflowError(
            f"{wildcards.method}/{wildcards.lineage} is the run "
            f"{run.method_dir}/{run.lineage_str}; ask for that path"
        )
    return run


def get_guide_checkpoints(wildcards):
    return [guide.file("model.pt") for guide in guide_runs(run_of(wildcards))]


def get_run_config(wildcards):
    return run_config(run_of(wildcards))


def get_runtime_minutes(wildcards):
    return config["resources"]["runtime_minutes"][role_of(run_of(wildcards))]


def get_dataset_archive(wildcards):
    return config["datasets"][wildcards.dataset]["archive"]


def get_prepare_input(wildcards):
    """The unpacked archive, for a dataset given as one; nothing otherwise."""
    if config["datasets"][wildcards.dataset].get("archive"):
        return paths.extracted_dir(wildcards.dataset)
    return []


def get_dataset_identity(wildcards):
    """What the prepared data depends on. Where the files are (root, archive, download) is left
    out: moving them does not retrain anything. New data gets a new dataset name."""
    spec = config["datasets"][wildcards.dataset]
    return {k: spec.get(k) for k in ("source", "resize", "seed", "options")}


def run_files(runs, name):
    return [run.file(name) for run in runs]


def all_targets():
    targets = table1_outputs()
    if "num_tas" in ABLATIONS:
        targets += ablation_outputs("num_tas")
    if "keep_prob" in ABLATIONS:
        targets += ablation_outputs("keep_prob")
    return targets


def table1_outputs():
    return [
        paths.table_file("table1", "csv"),
        paths.table_file("table1", "md"),
        paths.table_file("guides", "csv"),
        paths.table_file("guides", "md"),
        *[
            paths.figure_file(name, ext)
            for name in ("methods", "learning_curves")
            for ext in ("png", "pdf")
        ],
    ]


def ablation_outputs(name):
    return [
        paths.table_file(f"ablations/{name}", "csv"),
        paths.table_file(f"ablations/{name}", "md"),
        paths.figure_file(f"ablation_{name}", "png"),
        paths.figure_file(f"ablation_{name}", "pdf"),
    ]


ABLATION_RUNS = {"num_tas": num_tas_runs, "keep_prob": keep_prob_runs}


def get_ablation_metrics(name):
    """Input function: the ablation's runs' metrics.json (an error if it is not configured)."""

    def metrics(wildcards):
        if name not in ABLATIONS:
            raise WorkflowError(
                f"ablations.{name} is not configured in the config file"
            )
        return run_files(dict.fromkeys(ABLATION_RUNS[name]()), "metrics.json")

    return metrics
