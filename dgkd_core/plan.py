"""The experiment plan: which training runs a workflow config asks for, and who guides whom.

    plan = Plan(config)          # checks the config; raises ConfigError naming the key
    plan.runs()                  # every training run, each once, guides before what they guide
    plan.guides(run)             # the runs whose model.pt guide `run`, teacher first
    plan.run_config(run)         # its resolved run config (defaults < per_family < per_role
                                 #   < per_method < the run's own model, method, seed, keep_prob)
    plan.import_source(run)      # the file a teacher or TA trained elsewhere is imported from
                                 #   (chains.<name>.teacher_checkpoint / .ta_checkpoints), or None
    plan.guide_tables(run)       # per guide: its run where `run` looks it up in a guide table

A run is a dgkd_core.paths.Run (dataset, seed, method, lineage). Who guides a run is the method
registry's rule (dgkd_core.methods); this module adds the config: chains, seeds, ablations and
hyperparameter layers. Nothing here needs Snakemake; rules/common.smk only wires it in.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path

from dgkd_core import io, methods, paths
from dgkd_core.checkpoints import file_fingerprint
from dgkd_core.config import deep_update, resolve_run_config, semantic_settings, settings_schema
from dgkd_core.models import available_models, build_model, count_parameters, model_family
from dgkd_core.paths import Run
from dgkd_core.schema import ConfigError, check, check_size
from dgkd_core.table_plan import plan_guide_tables

__all__ = ["ABLATIONS", "ConfigError", "Plan", "ROLES", "default_schema_path", "evenly_spaced",
           "job_run_config", "job_table_config", "load_workflow_schema"]

ROLES = ("teacher", "ta", "student")
ABLATIONS = ("num_tas", "keep_prob", "convention")
_LAYER_GROUPS = ("per_family", "per_role", "per_method")


def default_schema_path() -> Path:
    """config/schema.yaml of the repository this package lives in."""
    return Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


def load_workflow_schema(path: str | Path | None = None) -> dict:
    """The workflow config's schema, its `settings` entry replaced by the run config's own."""
    path = Path(path) if path is not None else default_schema_path()
    schema = io.load_yaml_file(path, "schema")
    schema["$defs"]["settings"] = settings_schema()
    return schema


def evenly_spaced(tas, k: int) -> list:
    """k of `tas` (largest first), spread evenly along the chain: k=3 of 7 -> 2nd, 4th, 6th."""
    n = len(tas)
    return [tas[int((i + 1) * (n + 1) / (k + 1) + 0.5) - 1] for i in range(k)]


def job_run_config(config: dict, output_file: str, run_settings: dict) -> dict:
    """The full run config of the training job that writes `output_file` (a run's file).

    run_settings: the job's rerun params (Plan.run_config without what cannot change a result);
    the rest (eval_batch_size, device) comes from the plan, so changing it reruns nothing."""
    cfg = Plan(config).run_config(paths.run_from_path(output_file))
    if semantic_settings(cfg) != run_settings:
        raise ConfigError(f"the plan's settings for {output_file} differ from the job's params; "
                          "run Snakemake again from the same config")
    return cfg


def job_table_config(config: dict, output_file: str, table_settings: dict) -> dict:
    """The run config the guide_table job that writes `output_file` builds with.

    table_settings: the job's rerun params (normalize and fast of Plan.table_config)."""
    cfg = Plan(config).table_config(paths.run_from_path(output_file))
    if {key: cfg[key] for key in table_settings} != table_settings:
        raise ConfigError(f"the plan's settings for {output_file} differ from the job's params; "
                          "run Snakemake again from the same config")
    return cfg


def _chain_models(chain: dict) -> list[str]:
    return [chain["teacher"], *chain.get("tas", []), chain["student"]]


@cache
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per content version (size and mtime key the cache)."""
    return file_fingerprint(path)


@cache
def _parameter_count(model: str, num_classes: int, dataset: str) -> int:
    return count_parameters(build_model(model, num_classes, dataset=dataset))


class Plan:
    """A checked workflow config and the training runs it plans.

    config: the workflow config (config/config.yaml's layout); it is not modified: `self.config`
    is a copy with the schema's defaults filled in. schema_path: config/schema.yaml by default.
    `warnings` lists what is allowed but probably a mistake (a TA not smaller than its teacher)."""

    def __init__(self, config: dict, schema_path: str | Path | None = None):
        if not isinstance(config, dict):
            raise ConfigError(f"the workflow config must be a mapping of keys to values, got "
                              f"{type(config).__name__}")
        check_size(config, "config")  # before the copy: an alias bomb must not be expanded
        self.config = copy.deepcopy(config)
        check(self.config, load_workflow_schema(schema_path), what="config", fill_defaults=True)
        self.hyperparameters = self.config["hyperparameters"]
        self.ablations = self.config.get("ablations") or {}
        self.warnings: list[str] = []
        self._check_models()
        self._check_datasets()
        self._check_chains_have_tas()
        self._check_ablations()
        self._check_keep_prob()
        self._check_families()
        self._imports = self._find_imports()
        self._runs = self._with_guides(self._wanted_runs())
        self._warn_on_imported_baselines()
        self._check_run_configs()
        self._warn_on_chain_sizes()
        self._tables = plan_guide_tables(self._runs, self.guides, self.run_config,
                                         self.config["datasets"], self.config["guide_tables"])

    # ------------------------------------------------------------------ the runs

    def runs(self) -> list[Run]:
        """Every training run, each once, guides before what they guide."""
        return list(self._runs)

    def guides(self, run: Run) -> list[Run]:
        """The runs whose checkpoints guide `run`: teacher first, then TAs largest to smallest.
        An imported run has none: it is not trained here."""
        if run.lineage in self._imports:
            return []
        # A run of the convention ablation is guided by TAs trained under its convention too.
        return [paths.make_run(run.dataset, run.seed, method, lineage, convention=run.convention)
                for method, lineage in methods.guide_specs(run.method, run.lineage)]

    def table1_runs(self) -> list[Run]:
        """Table 1's students: every dataset x chain x method x seed."""
        return [self._student_run(dataset, seed, method, chain)
                for dataset in self.config["datasets"]
                for chain in self.config["chains"].values()
                for method in self.config["methods"]
                for seed in self.config["seeds"]]

    def table1_guide_runs(self) -> list[Run]:
        """The teachers and TAs behind Table 1's students."""
        students = self.table1_runs()
        is_student = set(students)
        return [run for run in self._with_guides(students) if run not in is_student]

    def ablation_runs(self, name: str) -> list[Run]:
        """The students of ablation `name` (num_tas or keep_prob), each once."""
        if name not in self.ablations:
            raise ConfigError(f"ablations.{name} is not configured in the config file")
        planners = {"num_tas": self._num_tas_runs, "keep_prob": self._keep_prob_runs,
                    "convention": self._convention_runs}
        return list(dict.fromkeys(planners[name]()))

    def role(self, run: Run) -> str:
        """teacher | ta | student, from the lineage: a model trained alone is a teacher if some
        chain starts with it (else a NoKD student); a guided model is a student if some chain
        goes from its teacher to it (else a TA)."""
        chains = [chain for _, chain in self._all_chains()]
        if len(run.lineage) == 1:
            return "teacher" if any(c["teacher"] == run.model for c in chains) else "student"
        pairs = {(c["teacher"], c["student"]) for c in chains}
        return "student" if (run.lineage[0], run.model) in pairs else "ta"

    def run_config(self, run: Run) -> dict:
        """The resolved run config: defaults < per_family < per_role < per_method < the run."""
        hp = self.hyperparameters
        layers = [
            hp["defaults"],
            hp.get("per_family", {}).get(model_family(run.model), {}),
            hp.get("per_role", {}).get(self.role(run), {}),
            hp.get("per_method", {}).get(run.method, {}),
            {"model": run.model, "method": run.method, "seed": run.seed,
             "loss": {"keep_prob": run.keep_prob, "drop_num": run.drop_num or 0}},
        ]
        if run.convention is not None:
            layers.append({"loss": {"convention": run.convention}})
        partial: dict = {}
        for layer in layers:
            partial = deep_update(partial, layer)
        return resolve_run_config(partial)

    def targets(self) -> list[str]:
        """What `snakemake` builds by default: Table 1 and every configured ablation."""
        targets = paths.table1_targets()
        for name in ABLATIONS:
            if name in self.ablations:
                targets += paths.ablation_targets(name)
        return targets

    # ------------------------------------------------------------------ guide tables

    def uses_table(self, guide: Run) -> bool:
        """Whether `guide` gets a table (dgkd_core.table_plan: the `guide_tables` setting)."""
        return guide in self._tables

    def guide_tables(self, run: Run) -> list[Run | None]:
        """Per guide of `run` (teacher first): that guide's run where `run` looks its logits up
        in the guide's table, None where the guide runs inline."""
        return [g if run in self._tables.get(g, ()) else None for g in self.guides(run)]

    def table_config(self, guide: Run) -> dict:
        """The run config a guide's table is built with: its first user's."""
        if guide not in self._tables:
            raise ConfigError(f"{guide.dir} has no guide table in this plan (guide_tables: "
                              f"{self.config['guide_tables']})")
        return self.run_config(self._tables[guide][0])

    # ------------------------------------------------------------------ imported models

    def import_source(self, run: Run) -> str | None:
        """The checkpoint file (as the config writes it; relative paths are from the working
        directory) that `run` is imported from instead of being trained, or None.

        An imported model stands in for every run of that model at its place in its chain: the
        teacher's `nokd/<teacher>`, a TA's KD, TAKD and DGKD runs (`kd/T-A`, `takd/T-A-B`,
        `dgkd/T-A-B`), at every dataset, seed and loss convention: a run is imported when its
        lineage is the chain's up to an imported model (docs/design.md, "Imported models")."""
        found = self._imports.get(run.lineage)
        return found[0] if found else None

    def import_key(self, run: Run) -> str:
        """The config key that names `run`'s imported checkpoint (for messages)."""
        return self._imports[run.lineage][1]

    def imported_lineages(self) -> list[str]:
        """The lineages (`plane5`, `plane5-plane4`) whose runs are imported, not trained."""
        return sorted(paths.lineage_text(lineage) for lineage in self._imports)

    def import_sha256(self, run: Run) -> str:
        """sha256 (hex) of the content of `run`'s imported checkpoint: the import job's rerun
        param, so new content reruns it and what it guides, and moving the file does not."""
        path = self.import_source(run)
        if path is None:
            raise ConfigError(f"{run.dir} is trained, not imported")
        stat = os.stat(path)
        return _content_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)

    def dataset_identity(self, name: str) -> dict:
        """What the prepared data depends on. Where the files are (root, archive, download) is
        left out: moving them does not retrain anything. New data gets a new dataset name."""
        spec = self.config["datasets"][name]
        return {k: spec.get(k) for k in ("source", "resize", "seed", "options")}

    # ------------------------------------------------------------------ planning

    def _sdgkd_dropping(self) -> tuple[float | None, int | None]:
        """(keep_prob, drop_num) of stochastic DGKD's final students: per_method.sdgkd.loss."""
        loss = self.hyperparameters.get("per_method", {}).get("sdgkd", {}).get("loss", {})
        return loss.get("keep_prob"), (loss.get("drop_num") or None)

    def _student_run(self, dataset, seed, method, chain, keep_prob=None) -> Run:
        """The run that trains the chain's student by `method`."""
        lineage = methods.get_method(method).student_lineage(
            chain["teacher"], tuple(chain.get("tas", [])), chain["student"])
        drop_num = None
        if methods.get_method(method).stochastic and keep_prob is None:
            keep_prob, drop_num = self._sdgkd_dropping()
        return paths.make_run(dataset, seed, method, lineage, keep_prob, drop_num)

    def _with_guides(self, runs) -> list[Run]:
        """`runs` and every run they depend on, each once, guides first."""
        out: dict[Run, None] = {}

        def visit(run):
            if run not in out:
                for guide in self.guides(run):
                    visit(guide)
                out[run] = None

        for run in runs:
            visit(run)
        return list(out)

    def _wanted_runs(self) -> list[Run]:
        runs = self.table1_runs()
        if "num_tas" in self.ablations:
            runs += self._num_tas_runs()
        for name in ("keep_prob", "convention"):
            if name in self.ablations:
                runs += self.ablation_runs(name)
        return runs

    def _num_tas_runs(self) -> list[Run]:
        ab = self.ablations["num_tas"]
        return [self._student_run(ab["dataset"], seed, method,
                                  {**ab, "tas": evenly_spaced(ab["tas"], k)})
                for k in ab["ta_counts"]
                for method in ab["methods"]
                for seed in ab.get("seeds", self.config["seeds"])]

    def _keep_prob_runs(self) -> list[Run]:
        """Stochastic DGKD at each keep probability, and DGKD (no dropping) for reference."""
        ab = self.ablations["keep_prob"]
        chain = self.config["chains"][ab["chain"]]
        sweep = [(p, "sdgkd") for p in ab["keep_probs"]] + [(None, "dgkd")]
        return [self._student_run(ab["dataset"], seed, method, chain, keep_prob=p)
                for p, method in sweep
                for seed in ab.get("seeds", self.config["seeds"])]

    def _convention_runs(self) -> list[Run]:
        """Each method under each loss convention. A run whose convention is already the
        config's is the Table 1 run itself; the others carry their convention (`dgkd+...`)."""
        ab = self.ablations["convention"]
        chain = self.config["chains"][ab["chain"]]
        runs = []
        for convention in ab["conventions"]:
            for method in ab["methods"]:
                for seed in ab.get("seeds", self.config["seeds"]):
                    run = self._student_run(ab["dataset"], seed, method, chain)
                    if self.run_config(run)["loss"]["convention"] != convention:
                        run = paths.make_run(run.dataset, run.seed, run.method, run.lineage,
                                             run.keep_prob, run.drop_num, convention)
                    runs.append(run)
        return runs

    def _all_chains(self) -> list[tuple[str, dict]]:
        """(where, chain) for Table 1's chains and the TA-count ablation's chain."""
        named = [(f"chains.{name}", chain) for name, chain in self.config["chains"].items()]
        if "num_tas" in self.ablations:
            named.append(("ablations.num_tas", self.ablations["num_tas"]))
        return named

    # ------------------------------------------------------------------ checks

    def _check_models(self) -> None:
        known = available_models()
        for where, chain in self._all_chains():
            for model in _chain_models(chain):
                if model not in known:
                    raise ConfigError(f"{where}: unknown model '{model}'; available models: "
                                      f"{', '.join(known)}")

    def _check_datasets(self) -> None:
        for name, spec in self.config["datasets"].items():
            where = f"datasets.{name}"
            if spec.get("archive") and spec["source"] != "imagefolder":
                raise ConfigError(f"{where}.archive: only the imagefolder source is unpacked "
                                  "from an archive")
            if spec["source"] == "imagefolder" and not (spec.get("root") or spec.get("archive")):
                raise ConfigError(f"{where}: the imagefolder source needs `root` (a folder with "
                                  "train/<class>/ and test/<class>/) or `archive` (a .tar of one)")
        for key, ablation in self.ablations.items():
            if ablation["dataset"] not in self.config["datasets"]:
                raise ConfigError(f"ablations.{key}.dataset is '{ablation['dataset']}'; datasets "
                                  f"defined: {', '.join(self.config['datasets'])}")

    def _check_chains_have_tas(self) -> None:
        needing = [m for m in self.config["methods"] if methods.get_method(m).needs_tas]
        for name, chain in self.config["chains"].items():
            if needing and not chain.get("tas"):
                raise ConfigError(
                    f"chain '{name}' has no TA (chains.{name}.tas is empty), but methods "
                    f"{', '.join(needing)} need at least one; add TAs or drop those methods")

    def _check_ablations(self) -> None:
        if "num_tas" in self.ablations:
            ab = self.ablations["num_tas"]
            too_many = [k for k in ab["ta_counts"] if k > len(ab["tas"])]
            if too_many:
                raise ConfigError(f"ablations.num_tas.ta_counts {too_many} exceed the "
                                  f"{len(ab['tas'])} TAs listed in ablations.num_tas.tas")
        chains = self.config["chains"]
        for name in ("keep_prob", "convention"):
            if name not in self.ablations:
                continue
            chain = self.ablations[name]["chain"]
            if chain not in chains:
                raise ConfigError(f"ablations.{name}.chain is '{chain}'; chains defined: "
                                  f"{', '.join(chains)}")
            needing = (["sdgkd"] if name == "keep_prob" else
                       [m for m in self.ablations[name]["methods"]
                        if methods.get_method(m).needs_tas])
            if needing and not chains[chain].get("tas"):
                raise ConfigError(f"ablations.{name}.chain '{chain}' has no TA, which "
                                  f"{', '.join(needing)} need")

    def _layers(self) -> dict[str, dict]:
        """Every hyperparameter layer by its place in the config (`per_role.student`, ...)."""
        layers = {"defaults": self.hyperparameters["defaults"]}
        for group in _LAYER_GROUPS:
            for key, settings in self.hyperparameters.get(group, {}).items():
                layers[f"{group}.{key}"] = settings
        return layers

    def _check_keep_prob(self) -> None:
        """keep_prob or drop_num makes a run stochastic DGKD, so they are set under
        per_method.sdgkd only (elsewhere they would reach the TAs and other students too)."""
        for where, settings in self._layers().items():
            loss = settings.get("loss", {})
            for key, unset in (("keep_prob", None), ("drop_num", 0)):
                if where != "per_method.sdgkd" and loss.get(key, unset) != unset:
                    raise ConfigError(
                        f"hyperparameters.{where}.loss.{key}: guide dropping is stochastic "
                        f"DGKD's; it belongs under hyperparameters.per_method.sdgkd.loss.{key}")
        keep_prob, drop_num = self._sdgkd_dropping()
        if keep_prob is not None and drop_num:
            raise ConfigError(
                "hyperparameters.per_method.sdgkd.loss sets both keep_prob and drop_num; set one: "
                "keep_prob drops each guide at random (the paper), drop_num exactly that many "
                "per batch (the released code)")
        if "sdgkd" in self.config["methods"] and keep_prob is None and not drop_num:
            raise ConfigError(
                "methods include sdgkd, but hyperparameters.per_method.sdgkd.loss sets neither "
                "keep_prob (stochastic DGKD's keep probability, e.g. 0.75) nor drop_num")

    def _chain_sources(self, name: str, chain: dict):
        """(lineage, file or None, config key) for the teacher and each TA of chain `name`."""
        tas = chain.get("tas", [])
        given = chain.get("ta_checkpoints") or {}
        for ta in given:
            if ta not in tas:
                raise ConfigError(f"chains.{name}.ta_checkpoints.{ta}: {ta} is not one of the "
                                  f"chain's TAs ({', '.join(tas) or 'none'})")
        models = _chain_models(chain)
        yield (models[0],), chain.get("teacher_checkpoint"), f"chains.{name}.teacher_checkpoint"
        for i, ta in enumerate(tas, start=1):
            yield tuple(models[:i + 1]), given.get(ta), f"chains.{name}.ta_checkpoints.{ta}"

    def _find_imports(self) -> dict[tuple[str, ...], tuple[str, str]]:
        """lineage -> (file, config key) of every imported model. Chains that share a place
        (the same teacher, or the same TAs in the same order) must agree on its checkpoint."""
        seen: dict[tuple[str, ...], tuple[str | None, str]] = {}
        imports: dict[tuple[str, ...], tuple[str, str]] = {}
        for name, chain in self.config["chains"].items():
            for lineage, source, key in self._chain_sources(name, chain):
                if source is not None and not os.path.isfile(source):
                    raise ConfigError(f"{key}: there is no file {source} (relative paths are "
                                      f"read from the working directory, {os.getcwd()})")
                real = None if source is None else os.path.realpath(source)
                if lineage in seen and seen[lineage][0] != real:
                    raise ConfigError(self._disagreement(lineage, seen[lineage], (real, key)))
                seen[lineage] = (real, key)
                if source is not None:
                    imports[lineage] = (source, key)
        return imports

    @staticmethod
    def _disagreement(lineage, first, second) -> str:
        def says(source, key):
            return f"{key} is {source}" if source else f"{key} is not set (trained)"
        return (f"chains share the run of {' → '.join(lineage)} but not its checkpoint: "
                f"{says(*first)}, {says(*second)}; give every chain the same file, or none")

    def _warn_on_imported_baselines(self) -> None:
        """A chain's NoKD student that is another chain's imported teacher is that import."""
        baselines = {run.lineage for run in self.table1_runs() if run.method == "nokd"}
        for lineage in sorted(baselines & self._imports.keys()):
            self.warnings.append(
                f"Warning: the NoKD student nokd/{paths.lineage_text(lineage)} is imported "
                f"({self._imports[lineage][1]}), not trained: it is another chain's teacher")

    def _check_families(self) -> None:
        families = sorted({model_family(m) for m in available_models()})
        for family in self.hyperparameters.get("per_family", {}):
            if family not in families:
                raise ConfigError(f"hyperparameters.per_family.{family}: unknown model family; "
                                  f"allowed: {', '.join(families)}")

    def _check_run_configs(self) -> None:
        for run in self._runs:
            try:
                self.run_config(run)
            except ConfigError as err:
                raise ConfigError(f"hyperparameters for {run.dir}: {err}") from None

    def _warn_on_chain_sizes(self) -> None:
        """Each model of a chain should be larger than the next one (a warning, not an error)."""
        for where, chain in self._all_chains():
            models = _chain_models(chain)
            datasets = [chain["dataset"]] if "dataset" in chain else list(self.config["datasets"])
            for dataset in datasets:
                classes = 100 if self.config["datasets"][dataset]["source"] == "cifar100" else 10
                for bigger, smaller in zip(models, models[1:]):
                    n_big = _parameter_count(bigger, classes, dataset)
                    n_small = _parameter_count(smaller, classes, dataset)
                    if n_big <= n_small:
                        self.warnings.append(
                            f"Warning: {where} on {dataset}: {bigger} ({n_big:,} parameters) is "
                            f"not larger than {smaller} ({n_small:,}), which it guides")
