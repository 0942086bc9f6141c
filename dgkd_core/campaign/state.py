"""A reproduction campaign: a workflow config built up across short GPU windows, nothing lost
between them. Its state lives in the repository, `docs/reproduction/<campaign>/`:

    manifest.json                      campaign, configs, per run: status, config hash, files
                                       (sha256), provenance; the windows run so far
    results/runs/<...>/metrics.json    a finished run: metrics.json, history.csv, model.pt
    results/runs/<...>/resume.pt       a run cut by a window's deadline (dgkd_core/training/resume.py)

Run files sit at the workflow's own paths (`Run.file`), so restoring is a copy. A window:
prepare the data, `restore` (copies the state into a fresh work directory, newer than the data),
Snakemake to Table 1 under a deadline (SIGTERM: the trainers write resume.pt), `pack` (one
tar.xz). Back home: `unpack` (verified, then swapped in whole) and `report`. Pack and unpack:
dgkd_core/campaign/pack.py; the report: dgkd_core/campaign/report.py.

A finished run keeps its model.pt only where a later run loads it (a guide: teacher or TA);
a student keeps metrics.json and history.csv, and the manifest records its weights' fingerprint
(`weights_sha256`, dgkd_core.guides.checkpoints.weights_fingerprint). Snakemake does not retrain
a restored student without its model.pt: Table 1 asks for its metrics.json and history.csv only,
and a job is rerun only for an output that something asked for is missing. Measured sizes
(CIFAR-10): resnet26 1.5 MB, resnet20 1.1 MB, resnet14 0.7 MB, resnet8 0.33 MB; so
cifar10_resnet_80ep holds 3 seeds x (teacher, TA20, two TA14s) = 12.4 MB of weights, not the
17.5 MB that keeping the 15 students' would make.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dgkd_core import io
from dgkd_core.config import config_hash
from dgkd_core.errors import DgkdError
from dgkd_core.experiment.paths import RUN_FILES, Run, data_file
from dgkd_core.guides.checkpoints import file_fingerprint
from dgkd_core.experiment.plan import Plan
from dgkd_core.io import UnreadableFile, load_tensor_file
from dgkd_core.reporting.reproduction import merged_config
from dgkd_core.training.resume import RESUME_FILE

__all__ = ["CAMPAIGNS", "MANIFEST", "WEIGHTS", "CampaignError", "RestoreResult",
           "campaign_configs", "critical_path_targets", "data_targets", "done_files",
           "git_commit", "guiding_runs", "load_plan", "read_manifest", "restore", "run_key",
           "window_seconds", "windows_spent"]

REPO = Path(__file__).resolve().parents[2]
# Each campaign's configs (repository-relative, merged in order as Snakemake's --configfile):
# the one place that says what a campaign trains.
CAMPAIGNS = {
    "cifar10_resnet_80ep": ("config/cifar10_repro.yaml",
                            "config/campaigns/cifar10_resnet_80ep.yaml"),
}
MANIFEST = "manifest.json"
WEIGHTS = "model.pt"
MANIFEST_FORMAT = 1
# What a window writes for restore's choices (read by pack, named by the report).
RESTORE_RECORD = "results/campaign_restore.json"
_SPACING_NS = 1_000_000  # restored outputs' mtimes step 1 ms along the plan: guides first


class CampaignError(DgkdError, ValueError):
    """A campaign command cannot go on; the message names the problem and the fix."""


def campaign_configs(name: str) -> list[str]:
    """The absolute config paths of campaign `name` (CAMPAIGNS)."""
    if name not in CAMPAIGNS:
        raise CampaignError(f"unknown campaign {name!r}; known: {', '.join(CAMPAIGNS)} "
                            "(add one to CAMPAIGNS in dgkd_core/campaign/state.py)")
    return [str(REPO / path) for path in CAMPAIGNS[name]]


def load_plan(config_files) -> Plan:
    return Plan(merged_config(config_files))


def repo_relative(path) -> str:
    """`path` relative to the repository where it lies inside it (as configs are recorded)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_key(run: Run) -> str:
    """A run's key in the manifest: its folder, as the workflow names it (results/runs/...)."""
    return run.dir


def window_seconds(manifest: dict) -> float:
    """The device seconds of the windows packed so far."""
    return sum(w.get("seconds") or 0 for w in manifest.get("windows", []))


def windows_spent(manifest: dict) -> str:
    """`41.5 GPU-minutes in 5 windows`: the device time of the windows packed so far."""
    count = len(manifest.get("windows", []))
    return (f"{window_seconds(manifest) / 60:.1f} GPU-minutes in {count} "
            f"window{'' if count == 1 else 's'}")


def data_targets(plan: Plan) -> list[str]:
    """The prepared data files: made before `restore`, so that restored outputs are newer."""
    return [data_file(name) for name in plan.config["datasets"]]


def critical_path_targets(plan: Plan) -> list[str]:
    """model.pt of every teacher and TA: Snakemake's --prioritize, so that the chain that every
    student waits for trains first, all seeds of a stage together."""
    return [run.file("model.pt") for run in plan.table1_guide_runs()]


# ------------------------------------------------------------------ the manifest


def read_manifest(state_dir) -> dict | None:
    """The state's manifest, checked; None where the state folder has none (a new campaign)."""
    path = Path(state_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CampaignError(f"{path} is unreadable ({err}); restore it with git checkout") from None
    check_manifest(manifest, str(path))
    return manifest


def check_manifest(manifest, where: str) -> None:
    """CampaignError unless `manifest` has the layout pack writes."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CampaignError(f"{where} is not a campaign manifest of format {MANIFEST_FORMAT}")
    runs = manifest.get("runs")
    if not isinstance(runs, dict) or not isinstance(manifest.get("campaign"), str):
        raise CampaignError(f"{where} lacks `campaign` or `runs`")
    for key, entry in runs.items():
        files = entry.get("files") if isinstance(entry, dict) else None
        if entry.get("status") not in ("done", "in_flight") or not isinstance(files, dict):
            raise CampaignError(f"{where}: run {key} has no status done/in_flight or no files")


def state_files(manifest: dict) -> dict[str, str]:
    """Every file the manifest lists, as its path in the state -> sha256."""
    return {f"{key}/{name}": digest for key, entry in manifest["runs"].items()
            for name, digest in entry["files"].items()}


# ------------------------------------------------------------------ what a run holds


def recorded_hash(run_dir: Path, status: str) -> str | None:
    """The config hash a run's own files record: metrics.json's (done) or resume.pt's
    identity (in flight); None where the file is missing or unreadable."""
    try:
        if status == "done":
            return json.loads((run_dir / "metrics.json").read_text())["config_hash"]
        return load_tensor_file(run_dir / RESUME_FILE)["identity"]["config_hash"]
    except (OSError, ValueError, KeyError, TypeError, UnreadableFile):
        return None


def guiding_runs(plan: Plan) -> set[Run]:
    """The runs whose model.pt some planned run loads: the ones whose weights the state keeps."""
    return {guide for run in plan.runs() for guide in plan.guides(run)}


def done_files(run: Run, guiding: set[Run]) -> tuple[str, ...]:
    """What the state keeps of finished `run`: all of RUN_FILES for a guide (`guiding`, from
    guiding_runs), else metrics.json and history.csv."""
    return RUN_FILES if run in guiding else tuple(n for n in RUN_FILES if n != WEIGHTS)


def found_status(run_dir: Path, kept: tuple[str, ...]) -> str | None:
    """done (every file of `kept`, done_files), in_flight (resume.pt) or None."""
    if all((run_dir / name).is_file() for name in kept):
        return "done"
    return "in_flight" if (run_dir / RESUME_FILE).is_file() else None


def files_of(status: str, kept: tuple[str, ...]) -> tuple[str, ...]:
    return kept if status == "done" else (RESUME_FILE,)


def untrusted_reason(plan: Plan, run: Run, run_dir: Path, status: str,
                     refused: dict[Run, str]) -> str | None:
    """Why the files in `run_dir` may not stand for `run` under this plan, or None."""
    want, got = config_hash(plan.run_config(run)), recorded_hash(run_dir, status)
    if got is None:
        return f"its {'metrics.json' if status == 'done' else RESUME_FILE} is unreadable"
    if got != want:
        return f"it was trained with other settings (config hash {got}, the plan's is {want})"
    bad_guides = [g.dir for g in plan.guides(run) if g in refused]
    if bad_guides:
        return f"its guide {bad_guides[0]} is retrained"
    return None


# ------------------------------------------------------------------ restore


@dataclass
class RestoreResult:
    """What restore did: run keys restored per status, and those refused with why."""

    restored: dict[str, str] = field(default_factory=dict)  # key -> done | in_flight
    refused: dict[str, str] = field(default_factory=dict)  # key -> why it is retrained
    kept: list[str] = field(default_factory=list)  # the work directory's own (differing) files

    def summary(self) -> str:
        done = sum(s == "done" for s in self.restored.values())
        return (f"restored {done} finished and {len(self.restored) - done} in-flight runs; "
                f"{len(self.refused)} refused (retrained)")


def restore(state_dir, workdir, plan: Plan) -> RestoreResult:
    """Copy each trusted run's state files into `workdir` at the workflow's paths; set the
    restored outputs' mtimes to now, guides before what they guide, so that Snakemake (run
    after the data was prepared) sees them up to date. A run is trusted when its recorded config
    hash is the plan's and every guide of it is trusted; the others are left out (retrained),
    printed and recorded in `workdir`/results/campaign_restore.json."""
    state_dir, workdir = Path(state_dir), Path(workdir)
    manifest = read_manifest(state_dir) or {"runs": {}}
    result, refused = RestoreResult(), {}
    for run in plan.runs():
        entry = manifest["runs"].get(run_key(run))
        if entry is None:
            continue
        why = _missing_files(state_dir, run, entry) or untrusted_reason(
            plan, run, state_dir / run.dir, entry["status"], refused)
        if why is not None:
            refused[run] = result.refused[run_key(run)] = why
            continue
        _copy_run(state_dir, workdir, run, entry, result)
        result.restored[run_key(run)] = entry["status"]
    for key in sorted(set(manifest["runs"]) - {run_key(r) for r in plan.runs()}):
        result.refused[key] = "the plan has no such run"
    _touch_outputs(workdir, plan, result)
    _warn_on_missing_data(workdir, plan)
    io.atomic_write_json({"refused": result.refused, "kept": result.kept},
                         workdir / RESTORE_RECORD)
    return result


def _missing_files(state_dir: Path, run: Run, entry: dict) -> str | None:
    for name, digest in entry["files"].items():
        path = state_dir / run.dir / name
        if not path.is_file():
            return f"its {name} is missing from the state"
        if file_fingerprint(path) != digest:
            return f"its {name} differs from the manifest's record (sha256)"
    return None


def _copy_run(state_dir: Path, workdir: Path, run: Run, entry: dict,
              result: RestoreResult) -> None:
    """Copy the run's files (atomic, byte for byte); a differing file already in the work
    directory is kept, never overwritten."""
    for name in entry["files"]:
        source, target = state_dir / run.dir / name, workdir / run.dir / name
        if target.exists():
            if file_fingerprint(target) != entry["files"][name]:
                result.kept.append(str(target))
            continue
        io.atomic_write_bytes(target, source.read_bytes())


def _touch_outputs(workdir: Path, plan: Plan, result: RestoreResult) -> None:
    """Restored outputs newer than the data and than their guides' (Snakemake's mtime check)."""
    start_ns = time.time_ns()
    done = [r for r in plan.runs() if result.restored.get(run_key(r)) == "done"]
    for i, run in enumerate(done):
        for name in RUN_FILES:  # a student's model.pt is not restored (done_files)
            if (workdir / run.file(name)).is_file():
                os.utime(workdir / run.file(name), ns=(start_ns + i * _SPACING_NS,) * 2)


def _warn_on_missing_data(workdir: Path, plan: Plan) -> None:
    missing = [t for t in data_targets(plan) if not (workdir / t).is_file()]
    if missing:
        print(f"warning: {missing[0]} is not prepared yet: prepare it before restoring "
              "(Snakemake would otherwise retrain every restored run)")


# ------------------------------------------------------------------ provenance


def git_commit() -> str:
    """GIT_COMMIT where set (a copied tree without .git), else HEAD of this checkout."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"

