"""The checks and warnings of a workflow config beyond its schema (`PlanChecks`, a base of
dgkd_core.experiment.plan.Plan): known models, datasets and model families, chains with the TAs
their methods need, ablations that fit the chains, guide dropping under a stochastic method only,
imported checkpoints that agree where chains share a run, every run's hyperparameters, and
chains whose models do not shrink."""

from __future__ import annotations

import os
from functools import cache

from dgkd_core.data import source_num_classes
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


@cache
def _layer_counts(model: str, num_classes: int, dataset: str) -> tuple[int, int]:
    """(conv layers, parameters in Linear layers) of `model`."""
    from torch import nn

    built = build_model(model, num_classes, dataset=dataset)
    convs = sum(isinstance(m, nn.Conv2d) for m in built.modules())
    linear = sum(p.numel() for m in built.modules() if isinstance(m, nn.Linear)
                 for p in m.parameters())
    return convs, linear


def size_reason(bigger: str, smaller: str, num_classes: int, dataset: str) -> str:
    """Why `bigger` may guide `smaller` although it has no more parameters, or ''.

    The codes' CIFAR-100 plane6 (docs/paper.md) ends without a max-pool: its classifier reads an 8x8x128 map
    and holds most of its parameters, so the deeper plane7 has fewer (the paper's chains go by
    depth). A deeper guide whose student is mostly classifier is such a case."""
    (big_convs, _), (small_convs, small_linear) = (
        _layer_counts(bigger, num_classes, dataset), _layer_counts(smaller, num_classes, dataset))
    share = small_linear / _parameter_count(smaller, num_classes, dataset)
    if big_convs <= small_convs or share <= 0.5:
        return ""
    return (f"; expected: {bigger} is deeper ({big_convs} conv layers to {small_convs}), as a "
            f"chain goes, but {share:.0%} of {smaller}'s parameters are its classifier "
            "(docs/paper.md's layouts), so this needs no change")


class PlanChecks:
    """What `Plan.__init__` checks from the config alone, and what `Plan.check()` checks with
    the file system and model builds; it reads config, hyperparameters, ablations, warnings,
    _imports and _runs of the Plan, and its `_all_chains`, `_dropping`, `table1_runs` and
    `run_config`."""

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
            stochastic = [m for m in registry.METHODS if registry.get_method(m).stochastic]
            methods = {"keep_prob": stochastic, "grid": [self.ablations[name].get("method")]}
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
        """keep_prob or drop_num makes a run stochastic, so they are set under
        per_method.<a stochastic method> only (elsewhere they would reach the TAs and other
        students too); a planned stochastic method sets one (resolving its run config refuses
        both)."""
        stochastic = [m for m in registry.METHODS if registry.get_method(m).stochastic]
        homes = {f"per_method.{m}" for m in stochastic}
        for where, settings in self._layers().items():
            loss = settings.get("loss", {})
            for key, unset in (("keep_prob", None), ("drop_num", 0)):
                if where not in homes and loss.get(key, unset) != unset:
                    raise ConfigError(
                        f"hyperparameters.{where}.loss.{key}: guide dropping is stochastic "
                        f"DGKD's; it belongs under hyperparameters.per_method."
                        f"{stochastic[0]}.loss.{key}")
        for method in stochastic:
            keep_prob, drop_num = self._dropping(method)
            if method in self.config["methods"] and keep_prob is None and not drop_num:
                raise ConfigError(
                    f"methods include {method}, but hyperparameters.per_method.{method}.loss sets "
                    "neither keep_prob (the keep probability of each guide, e.g. 0.75) nor "
                    "drop_num")

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
        """lineage -> (file, config key) of every imported model, from the config alone (the
        first chain naming a file for that place; `_check_import_files` makes the others agree)."""
        imports: dict[tuple[str, ...], tuple[str, str]] = {}
        for name, chain in self.config["chains"].items():
            for lineage, source, key in self._chain_sources(name, chain):
                if source is not None:
                    imports.setdefault(lineage, (source, key))
        return imports

    def _check_import_files(self) -> None:
        """Every imported file exists, and chains that share a place (the same teacher, or the
        same TAs in the same order) name the same file for it, or none."""
        seen: dict[tuple[str, ...], tuple[str | None, str]] = {}
        for name, chain in self.config["chains"].items():
            for lineage, source, key in self._chain_sources(name, chain):
                if source is not None and not os.path.isfile(source):
                    raise ConfigError(f"{key}: there is no file {source} (relative paths are "
                                      f"read from the working directory, {os.getcwd()})")
                real = None if source is None else os.path.realpath(source)
                if lineage in seen and seen[lineage][0] != real:
                    raise ConfigError(self._disagreement(lineage, seen[lineage], (real, key)))
                seen[lineage] = (real, key)

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
        """Each model of a chain should be larger than the next one (a warning, not an error);
        one warning per pair and dataset, naming every chain it is in, with its reason."""
        found: dict[tuple[str, str, str, int], list[str]] = {}
        for where, chain in self._all_chains():
            models = chain_models(chain)
            datasets = [chain["dataset"]] if "dataset" in chain else list(self.config["datasets"])
            for dataset in datasets:
                # An image folder's count is known once prepared; it widens both models'
                # classifiers alike, so any count compares them.
                classes = source_num_classes(self.config["datasets"][dataset]["source"]) or 10
                for bigger, smaller in zip(models, models[1:]):
                    if (_parameter_count(bigger, classes, dataset)
                            <= _parameter_count(smaller, classes, dataset)):
                        found.setdefault((bigger, smaller, dataset, classes), []).append(where)
        for (bigger, smaller, dataset, classes), wheres in found.items():
            n_big = _parameter_count(bigger, classes, dataset)
            n_small = _parameter_count(smaller, classes, dataset)
            self.warnings.append(
                f"Warning: {', '.join(dict.fromkeys(wheres))} on {dataset}: {bigger} "
                f"({n_big:,} parameters) is not larger than {smaller} ({n_small:,}), which it "
                f"guides{size_reason(bigger, smaller, classes, dataset)}")
