"""Which training runs the workflow trains together, one fused job per group (the workflow
config's `fuse`; the trainer is dgkd_core.training.fused).

    fused_groups(plan)      # [FusedGroup], each of 2+ runs; every other run trains alone

A group's runs share dataset, model, role, epochs, batch size and device, and none of them
guides another, directly or through others: every guide of every member is ready when the group
starts. Whether a key's runs are fused at all is `fuse`: true, false, or auto, which fuses where
the runs' device is cuda, or auto on a host that sees a GPU (`fuse_enabled`).

Groups are sticky, so that a finished group is not retrained because the plan grew: a run
already trained in a group (its metrics.json's `fused_group`) stays in that group as long as
every member is still planned and the group still fits the rules above; a run trained alone
stays alone. Only the runs left (not trained yet, or whose group no longer fits) are grouped
anew, by the key above. So a seed added later trains in groups of its own. What reruns when a
member's settings change is its group (Snakemake removes a job's outputs before it runs it).

Why the groups read results at parse time, not the config alone: a group is one rule whose
params are all its members' settings, so regrouping a trained run (a seed added, a method
added) would change the rule and params that made its files, and Snakemake would retrain it.
Reading each run's recorded group keeps finished work; the price is that the rule set depends
on which runs have finished, for the runs not trained yet only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch

from dgkd_core.experiment.paths import Run
from dgkd_core.training.launch import gpus_per_job

__all__ = ["FusedGroup", "fuse_enabled", "fused_groups"]


@dataclass(frozen=True)
class FusedGroup:
    """Runs trained in one fused job, in plan order."""

    runs: tuple[Run, ...]

    @property
    def name(self) -> str:
        """The job's rule name, stable for the same members: `train_fused_<model>_<hash>`."""
        digest = hashlib.sha1("\n".join(self.member_dirs).encode()).hexdigest()[:10]
        return f"train_fused_{self.runs[0].model}_{digest}"

    @property
    def member_dirs(self) -> list[str]:
        return [run.dir for run in self.runs]

    def files(self, name: str) -> list[str]:
        """Every member's output `name` (model.pt, metrics.json, history.csv), in order."""
        return [run.file(name) for run in self.runs]


def fuse_enabled(fuse, device: str) -> bool:
    """Whether runs on `device` (a run config's auto/cpu/cuda) are fused under `fuse`
    (auto/true/false). auto: where they run on CUDA; with device auto, where this host sees a
    GPU (a cluster's planning host may have none: set fuse: true there)."""
    if fuse is True or fuse is False:
        return fuse
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def fused_groups(plan) -> list[FusedGroup]:
    """The plan's (a dgkd_core.experiment.plan.Plan) fused groups: the recorded ones still fitting, then
    new ones of the runs left; [] with fuse: false."""
    fuse = plan.config.get("fuse", False)
    if fuse is False:
        return []
    trained = [run for run in plan.runs() if plan.import_source(run) is None]
    grouper = _Grouper(plan, fuse)
    by_dir = {run.dir: run for run in trained}
    groups: list[list[Run]] = []
    placed: set[Run] = set()
    for run in trained:
        recorded = None if run in placed else _recorded_members(run)
        if recorded is None:
            continue
        members = [by_dir.get(d) for d in recorded]
        if not recorded:
            placed.add(run)  # trained alone: it stays train_model's
        elif None not in members and not placed & set(members) and grouper.fits(members):
            groups.append(members)
            placed.update(members)
    groups += grouper.new_groups([run for run in trained if run not in placed])
    groups.sort(key=lambda g: trained.index(g[0]))
    return [FusedGroup(tuple(g)) for g in groups]


class _Grouper:
    """The grouping rules: a key of what must be shared, and no member guiding another."""

    def __init__(self, plan, fuse):
        self.plan, self.fuse = plan, fuse
        self._ancestors: dict[Run, frozenset[Run]] = {}

    def key(self, run: Run) -> tuple | None:
        """What a group's runs share; None for a run that is not fused at all."""
        cfg = self.plan.run_config(run)
        if not fuse_enabled(self.fuse, cfg["device"]) or self._gpus(run) > 1:
            return None  # a data-parallel job (resources.gpus_per_job) trains alone
        return (run.dataset, run.model, self.plan.role(run), cfg["epochs"], cfg["batch_size"],
                cfg["device"])

    def _gpus(self, run: Run) -> int:
        return gpus_per_job(self.plan.config["resources"], self.plan.role(run), run.dataset)

    def ancestors(self, run: Run) -> frozenset[Run]:
        """Every run that guides `run`, directly or through others."""
        if run not in self._ancestors:
            found: set[Run] = set()
            for guide in self.plan.guides(run):
                found |= {guide, *self.ancestors(guide)}
            self._ancestors[run] = frozenset(found)
        return self._ancestors[run]

    def _independent(self, run: Run, group: list[Run]) -> bool:
        return not (self.ancestors(run) & set(group)) and not any(
            run in self.ancestors(member) for member in group)

    def fits(self, members: list[Run]) -> bool:
        keys = {self.key(run) for run in members}
        return (len(members) > 1 and len(keys) == 1 and None not in keys
                and all(self._independent(run, [m for m in members if m != run])
                        for run in members))

    def new_groups(self, runs: list[Run]) -> list[list[Run]]:
        """`runs` by key; within a key, each run joins the first group it is independent of."""
        by_key: dict[tuple, list[list[Run]]] = {}
        for run in runs:
            key = self.key(run)
            if key is None:
                continue
            groups = by_key.setdefault(key, [])
            home = next((g for g in groups if self._independent(run, g)), None)
            if home is None:
                groups.append([run])
            else:
                home.append(run)
        return [g for groups in by_key.values() for g in groups if len(g) > 1]


def _recorded_members(run: Run) -> list[str] | None:
    """The out_dirs of the group that trained `run` ([] for a run trained alone), or None when
    it has no readable metrics.json (not trained yet). Paths are the workflow's, relative to
    its working directory."""
    path = run.file("metrics.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            metrics = json.load(fh)
    except (OSError, ValueError):
        return None
    group = metrics.get("fused_group") if isinstance(metrics, dict) else None
    return list(group.get("members", [])) if isinstance(group, dict) else []
