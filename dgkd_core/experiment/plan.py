"""The experiment plan: which training runs a workflow config asks for, and who guides whom.

    plan = Plan(config)          # the schema, the layering and the run list: no file reads,
                                 #   no model builds; raises ConfigError naming the key
    plan.check()                 # the imported files and their sha256s, and the warnings
                                 #   (rules/common.smk calls it once per workflow)
    plan.runs()                  # every training run, each once, guides before what they guide
    plan.guides(run)             # the runs whose model.pt guide `run`, teacher first
    plan.run_config(run)         # its resolved run config (defaults < per_family < per_role
                                 #   < per_method < the run's own model, method, seed, keep_prob)
    plan.import_source(run)      # the file a teacher or TA trained elsewhere is imported from
                                 #   (chains.<name>.teacher_checkpoint / .ta_checkpoints), or None
    plan.guide_tables(run)       # per guide: its run where `run` looks it up in a guide table

A run is a dgkd_core.experiment.paths.Run (dataset, seed, method, lineage). Who guides a run is the method
registry's rule (dgkd_core.method.registry); this module adds the config: chains, seeds, ablations and
hyperparameter layers. Nothing here needs Snakemake; rules/common.smk only wires it in.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path

from dgkd_core import io
from dgkd_core.config import deep_update, resolve_run_config, settings_schema
from dgkd_core.experiment import paths
from dgkd_core.experiment.paths import Run
from dgkd_core.experiment.plan_checks import PlanChecks
from dgkd_core.experiment.table_plan import plan_guide_tables
from dgkd_core.guides.checkpoints import file_fingerprint
from dgkd_core.method import registry
from dgkd_core.method.losses import CONVENTIONS
from dgkd_core.method.models import model_family
from dgkd_core.schema import ConfigError, check, check_size
from dgkd_core.training.fuse_choice import MECHANISMS

__all__ = ["ABLATIONS", "Plan", "ROLES", "default_schema_path", "evenly_spaced",
           "keep_prob_methods", "load_workflow_schema"]

ROLES = ("teacher", "ta", "student")
ABLATIONS = ("num_tas", "keep_prob", "convention", "grid")


def default_schema_path() -> Path:
    """config/schema.yaml of the repository this package lives in."""
    return Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def load_workflow_schema(path: str | Path | None = None) -> dict:
    """The workflow config's schema, its `settings` entry replaced by the run config's own."""
    path = Path(path) if path is not None else default_schema_path()
    schema = io.load_yaml_file(path, "schema")
    schema["$defs"]["settings"] = settings_schema()
    _fill_registry_lists(schema)
    return schema


def _fill_registry_lists(schema: dict) -> None:
    """The schema's lists of methods, loss conventions and fused mechanisms, from their
    registries."""
    methods = [registry.get_method(name) for name in registry.METHODS]
    guided = [m.name for m in methods if m.max_guides != 0]
    along_tas = [m.name for m in methods if m.needs_tas and not m.stochastic]
    schema["$defs"]["method"]["enum"] = list(registry.METHODS)
    ablations = schema["properties"]["ablations"]["properties"]
    ablations["num_tas"]["properties"]["methods"]["items"]["enum"] = along_tas
    convention = ablations["convention"]["properties"]
    convention["methods"]["items"]["enum"] = guided
    convention["conventions"]["items"]["enum"] = list(CONVENTIONS)
    schema["properties"]["fuse_mechanism"]["enum"] = list(MECHANISMS)


def keep_prob_methods() -> tuple[str, str]:
    """(the stochastic method, the method with its guides that drops none): the keep_prob
    ablation's (sdgkd, dgkd), from the method registry."""
    (stochastic,) = [m for m in registry.REGISTRY.values() if m.stochastic]
    (plain,) = [m for m in registry.REGISTRY.values()
                if not m.stochastic and m.guide_rule is stochastic.guide_rule]
    return stochastic.name, plain.name


def evenly_spaced(tas, k: int) -> list:
    """k of `tas` (largest first), spread evenly along the chain: k=3 of 7 -> 2nd, 4th, 6th."""
    n = len(tas)
    return [tas[int((i + 1) * (n + 1) / (k + 1) + 0.5) - 1] for i in range(k)]


@cache
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per content version (size and mtime key the cache)."""
    return file_fingerprint(path)


class Plan(PlanChecks):
    """A checked workflow config and the training runs it plans.

    config: the workflow config (config/config.yaml's layout); it is not modified: `self.config`
    is a copy with the schema's defaults filled in. schema_path: config/schema.yaml by default.
    Building it reads no file and builds no model; `check()` does both. `warnings` (filled by
    `check()`) lists what is allowed but probably a mistake (a TA not smaller than its teacher)."""

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
        self._check_run_configs()
        self._tables = plan_guide_tables(self._runs, self.guides, self.run_config,
                                         self.config["datasets"], self.config["guide_tables"])
        self._import_sha256s: dict[tuple[str, ...], str] | None = None

    def check(self) -> "Plan":
        """What needs the file system or model builds: every imported checkpoint exists, chains
        sharing a run name the same file, each file's sha256 (`import_sha256`), and the
        warnings. Raises ConfigError naming the key; returns the plan."""
        self._check_import_files()
        self._import_sha256s = {}
        for lineage, (path, _) in self._imports.items():
            stat = os.stat(path)
            self._import_sha256s[lineage] = _content_sha256(os.path.realpath(path),
                                                            stat.st_size, stat.st_mtime_ns)
        self.warnings = []
        self._warn_on_imported_baselines()
        self._warn_on_chain_sizes()
        return self

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
                for method, lineage in registry.guide_specs(run.method, run.lineage)]

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
                    "convention": self._convention_runs, "grid": self._grid_runs}
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
        if run.grid is not None:  # the grid ablation's λ, T and validation split
            lam, temperature, validation_images = run.grid
            layers.append({"loss": {"lam": lam, "temperature": temperature},
                           "validation_images": validation_images})
        partial: dict = {}
        for layer in layers:
            partial = deep_update(partial, layer)
        return resolve_run_config(partial)

    def targets(self) -> list[str]:
        """What `snakemake` builds by default: the summary page, Table 1 and every configured
        ablation."""
        targets = [paths.summary_file(), *paths.table1_targets()]
        for name in ABLATIONS:
            if name in self.ablations:
                targets += paths.ablation_targets(name)
        return targets

    # ------------------------------------------------------------------ guide tables

    def uses_table(self, guide: Run) -> bool:
        """Whether `guide` gets a table (dgkd_core.experiment.table_plan: the `guide_tables` setting)."""
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
        if self.import_source(run) is None:
            raise ConfigError(f"{run.dir} is trained, not imported")
        if self._import_sha256s is None:
            raise ConfigError("the imported files' sha256s are read by Plan.check(): call it first")
        return self._import_sha256s[run.lineage]

    def dataset_identity(self, name: str) -> dict:
        """What the prepared data depends on. Where the files are (root, archive, download) is
        left out: moving them does not retrain anything. New data gets a new dataset name."""
        spec = self.config["datasets"][name]
        return {k: spec.get(k) for k in ("source", "resize", "seed", "options")}

    # ------------------------------------------------------------------ planning

    def _dropping(self, method: str) -> tuple[float | None, int | None]:
        """(keep_prob, drop_num) of a stochastic method's final students: per_method.<method>.loss.
        Both may be set here; resolving the run config refuses that (dgkd_core.config)."""
        loss = self.hyperparameters.get("per_method", {}).get(method, {}).get("loss", {})
        return loss.get("keep_prob"), (loss.get("drop_num") or None)

    def _student_run(self, dataset, seed, method, chain, keep_prob=None) -> Run:
        """The run that trains the chain's student by `method`."""
        lineage = registry.get_method(method).student_lineage(
            chain["teacher"], tuple(chain.get("tas", [])), chain["student"])
        drop_num = None
        if registry.get_method(method).stochastic and keep_prob is None:
            keep_prob, drop_num = self._dropping(method)
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
        for name in ("keep_prob", "convention", "grid"):
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
        """The stochastic method at each keep probability, and the same guides without
        dropping (keep_prob_methods) for reference."""
        ab = self.ablations["keep_prob"]
        chain = self.config["chains"][ab["chain"]]
        stochastic, plain = keep_prob_methods()
        sweep = [(p, stochastic) for p in ab["keep_probs"]] + [(None, plain)]
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

    def _grid_runs(self) -> list[Run]:
        """The chain's student by one method at every (λ, T) and seed, each holding out
        `validation_images` (dgkd_core.reporting.grid chooses on it); guided by the usual runs."""
        ab = self.ablations["grid"]
        chain = self.config["chains"][ab["chain"]]
        runs = []
        for lam in ab["lams"]:
            for temperature in ab["temperatures"]:
                for seed in ab.get("seeds", self.config["seeds"]):
                    run = self._student_run(ab["dataset"], seed, ab["method"], chain)
                    runs.append(paths.make_run(
                        run.dataset, run.seed, run.method, run.lineage, run.keep_prob,
                        run.drop_num, grid=(lam, temperature, ab["validation_images"])))
        return runs

    def _all_chains(self) -> list[tuple[str, dict]]:
        """(where, chain) for Table 1's chains and the TA-count ablation's chain."""
        named = [(f"chains.{name}", chain) for name, chain in self.config["chains"].items()]
        if "num_tas" in self.ablations:
            named.append(("ablations.num_tas", self.ablations["num_tas"]))
        return named
