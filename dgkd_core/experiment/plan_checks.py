"""The checks and warnings of a workflow config beyond its schema (`PlanChecks`, a base of
dgkd_core.experiment.plan.Plan): known models, datasets and model families, chains with the TAs
their methods need, ablations that fit the chains, guide dropping under per_method.sdgkd only,
imported checkpoints that agree where chains share a run, every run's hyperparameters, and
chains whose models do not shrink."""

from __future__ import annotations

import os
from functools import cache

from dgkd_core.experiment import paths
from dgkd_core.method import registry
from dgkd_core.method.models import available_models, build_model, count_parameters, model_family
from dgkd_core.schema import ConfigError

_LAYER_GROUPS = ("per_family", "per_role", "per_method")


def chain_models(chain: dict) -> list[str]:
    """A chain's models, teacher first, student last."""
    return [chain["teacher"], *chain.get("tas", []), chain["student"]]


@cache
def _parameter_count(model: str, num_classes: int, dataset: str) -> int:
    return count_parameters(build_model(model, num_classes, dataset=dataset))


class PlanChecks:
    """What `Plan.__init__` checks, in its order; it reads config, hyperparameters, ablations,
    warnings, _imports and _runs of the Plan, and its `_all_chains`, `_sdgkd_dropping`,
    `table1_runs` and `run_config`."""

    def _check_models(self) -> None:
        known = available_models()
        for where, chain in self._all_chains():
            for model in chain_models(chain):
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
        needing = [m for m in self.config["methods"] if registry.get_method(m).needs_tas]
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
        for name in ("keep_prob", "convention", "grid"):
            if name not in self.ablations:
                continue
            chain = self.ablations[name]["chain"]
            if chain not in chains:
                raise ConfigError(f"ablations.{name}.chain is '{chain}'; chains defined: "
                                  f"{', '.join(chains)}")
            methods = {"keep_prob": ["sdgkd"], "grid": [self.ablations[name].get("method")]}
            needing = [m for m in methods.get(name, self.ablations[name].get("methods", []))
                       if registry.get_method(m).needs_tas]
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
        models = chain_models(chain)
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
            models = chain_models(chain)
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
