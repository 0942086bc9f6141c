"""A campaign's state as one file (dgkd_core/campaign/state.py): `pack` collects it from a work
directory into a tar.xz, `unpack` verifies one and swaps it in for the state folder.

Packing copies files, never re-serialises them: a run unchanged since the previous state keeps
its bytes (git stores it once), and the archive itself is byte-stable (sorted members, no
times or owners). Prepared data, guide tables and logs are never packed.
"""

from __future__ import annotations

import datetime
import io as bytes_io
import json
import lzma
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from dgkd_core import io
from dgkd_core.campaign.state import (MANIFEST, MANIFEST_FORMAT, RESTORE_RECORD, WEIGHTS,
                                      CampaignError, check_manifest, done_files, files_of,
                                      found_status, git_commit, guiding_runs, read_manifest,
                                      repo_relative, run_key, state_files, untrusted_reason,
                                      windows_spent)
from dgkd_core.config import config_hash
from dgkd_core.experiment.paths import RESULTS, Run
from dgkd_core.experiment.plan import Plan
from dgkd_core.guides.checkpoints import file_fingerprint, weights_fingerprint
from dgkd_core.io import load_tensor_file
from dgkd_core.training.resume import RESUME_FILE

__all__ = ["pack", "unpack", "progress_line"]

# The most a state may unpack to. `unpack` reads every member into memory, so the declared
# sizes are added up as the members come and a small archive of huge content (an archive bomb)
# is refused before it fills the memory; `pack` refuses to write what `unpack` would refuse.
# Git stores the state: a real one (Table 1's runs' model.pt and logs) is some 100 MB.
MAX_STATE_BYTES = 4 * 2**30


# ------------------------------------------------------------------ pack


def pack(workdir, plan: Plan, out, *, campaign: str, configs, state_dir=None,
         window_s: float | None = None, window_training: str | None = None) -> dict:
    """Collect the campaign's state from `workdir` into `out` (tar.xz); returns the manifest.

    Per run: finished (state.done_files: a guide's model.pt, metrics.json, history.csv) or in
    flight (resume.pt), from the work directory, else carried over from the previous state
    `state_dir`; a run whose recorded config hash is not the plan's is left out (listed under
    `dropped`). window_s: the GPU window's seconds, and window_training: how it trained (fused
    or solo jobs, and why), added to the manifest's `windows`."""
    workdir = Path(workdir)
    state_dir = Path(state_dir) if state_dir is not None else None
    previous = (read_manifest(state_dir) if state_dir is not None else None) or {}
    old_runs = previous.get("runs", {})
    runs, members, dropped = {}, {}, {}
    refused: dict[Run, str] = {}
    guiding = guiding_runs(plan)
    for run in plan.runs():
        kept = done_files(run, guiding)
        source = _source_dir(run, workdir, state_dir, old_runs, kept)
        if source is None:
            continue
        folder, status = source
        why = untrusted_reason(plan, run, folder, status, refused)
        if why is not None:
            refused[run] = dropped[run_key(run)] = why
            continue
        files = {name: file_fingerprint(folder / name) for name in files_of(status, kept)}
        runs[run_key(run)] = _entry(plan, run, status, folder, files, old_runs.get(run_key(run)))
        members.update({f"{run_key(run)}/{name}": folder / name for name in files})
    manifest = {"format": MANIFEST_FORMAT, "campaign": campaign,
                "configs": [repo_relative(c) for c in configs], "runs": runs,
                "dropped": dropped, "retrained": _retrained(previous, workdir),
                "windows": [*previous.get("windows", []),
                            _window(runs, window_s, window_training)]}
    _write_archive(Path(out), manifest, members)
    return manifest


def _source_dir(run: Run, workdir: Path, state_dir: Path | None, old_runs: dict,
                kept: tuple[str, ...]) -> tuple[Path, str] | None:
    """Where the run's files are (the work directory first) and its status, or None."""
    status = found_status(workdir / run.dir, kept)
    if status is not None:
        return workdir / run.dir, status
    entry = old_runs.get(run_key(run))
    if entry is not None and state_dir is not None and \
            found_status(state_dir / run.dir, kept) == entry["status"]:
        return state_dir / run.dir, entry["status"]
    return None


def _entry(plan: Plan, run: Run, status: str, folder: Path, files: dict,
           previous: dict | None) -> dict:
    """A run's manifest entry; its provenance is the previous one where its files are."""
    cfg = plan.run_config(run)
    entry = {"status": status, "role": plan.role(run), "method": run.method, "seed": run.seed,
             "model": run.model, "config_hash": config_hash(cfg), "epochs": cfg["epochs"]}
    if status == "done":
        metrics = json.loads((folder / "metrics.json").read_text())
        versions = metrics.get("versions") or {}
        group = metrics.get("fused_group")
        entry.update(epochs_done=metrics["epochs"], top1_last=metrics["top1_last"],
                     train_time_s=metrics["train_time_s"],
                     # horizontal ends within float rounding of alone, not bit for bit
                     trained="alone" if group is None else f"fused, {group['mechanism']}")
        device = {"device_name": versions.get("device_name"), "torch": versions.get("torch")}
    else:
        state = load_tensor_file(folder / RESUME_FILE)
        partial = state["train_time_s"] if state["step"] else 0.0  # the epoch under way
        entry.update(epochs_done=state["epoch"], step=state["step"],
                     train_time_s=sum(h["time_s"] for h in state["history"]) + partial)
        device = _this_device()
    entry["files"] = files
    previous = previous or {}
    if status == "done" and WEIGHTS not in files:  # a student: its weights identified, not kept
        entry["weights_sha256"] = (weights_fingerprint(folder / WEIGHTS)
                                   if (folder / WEIGHTS).is_file()
                                   else previous.get("weights_sha256"))
    old_files = previous.get("files", {})
    if "provenance" in previous and all(old_files.get(n) == d for n, d in files.items()):
        entry["provenance"] = previous["provenance"]
    else:
        entry["provenance"] = {"commit": git_commit(), **device, "packed": _now()}
    return entry


def _this_device() -> dict:
    import platform

    import torch

    name = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else platform.processor() or platform.machine())
    return {"device_name": name, "torch": torch.__version__}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retrained(previous: dict, workdir: Path) -> dict:
    """Every run a restore refused, and why: the previous list and this window's."""
    record = workdir / RESTORE_RECORD
    refused = json.loads(record.read_text())["refused"] if record.is_file() else {}
    return {**previous.get("retrained", {}), **refused}


def _window(runs: dict, window_s: float | None, training: str | None) -> dict:
    statuses = [entry["status"] for entry in runs.values()]
    return {"packed": _now(), "commit": git_commit(), **_this_device(),
            "seconds": None if window_s is None else round(float(window_s), 1),
            "training": training,
            "done": statuses.count("done"), "in_flight": statuses.count("in_flight")}


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A member without times or owners, so that equal content gives equal bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_archive(out: Path, manifest: dict, members: dict[str, Path]) -> None:
    total = sum(path.stat().st_size for path in members.values())
    if total > MAX_STATE_BYTES:
        raise CampaignError(f"the campaign state would hold {total} bytes, more than unpack "
                            f"accepts ({MAX_STATE_BYTES}, MAX_STATE_BYTES in {__file__}); "
                            f"nothing was written to {out}")
    buffer = bytes_io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", format=tarfile.PAX_FORMAT) as tar:
        text = (json.dumps(manifest, indent=2) + "\n").encode()
        tar.addfile(_tar_member(MANIFEST, len(text)), bytes_io.BytesIO(text))
        for name in sorted(members):
            data = members[name].read_bytes()
            tar.addfile(_tar_member(name, len(data)), bytes_io.BytesIO(data))
    io.atomic_write_bytes(out, buffer.getvalue())


def progress_line(manifest: dict, total: int) -> str:
    """`12 of 27 runs done, 3 in flight, 12 to do; 41.5 GPU-minutes in 5 windows`."""
    statuses = [entry["status"] for entry in manifest["runs"].values()]
    done, flight = statuses.count("done"), statuses.count("in_flight")
    return (f"{done} of {total} runs done, {flight} in flight, {total - done - flight} to do; "
            f"{windows_spent(manifest)}")


# ------------------------------------------------------------------ unpack


def unpack(archive, state_dir) -> dict:
    """Verify `archive` (pack's tar.xz) and replace `state_dir` with its content; returns the
    manifest. A corrupt, truncated or unsafe archive raises CampaignError in one line and
    leaves the state folder as it was."""
    archive, state_dir = Path(archive), Path(state_dir)
    contents = _read_archive(archive)
    manifest = _verified_manifest(contents, archive, state_dir)
    _replace_state(state_dir, contents)
    return manifest


def _read_archive(archive: Path) -> dict[str, bytes]:
    """name -> content of every member, each checked (_check_member)."""
    unchanged = "; the state is left unchanged"
    contents: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(archive, "r:xz") as tar:
            for member in tar:
                _check_member(member, archive, contents)
                total += member.size
                if total > MAX_STATE_BYTES:
                    raise CampaignError(f"{archive} unpacks to more than {MAX_STATE_BYTES} "
                                        f"bytes (member {member.name[:80]!r} takes it to "
                                        f"{total}), more than any campaign state; refused"
                                        f"{unchanged}")
                contents[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, lzma.LZMAError) as err:
        raise CampaignError(f"{archive} is truncated or corrupt ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}){unchanged}") from None
    except OSError as err:
        raise CampaignError(f"cannot read {archive}: {err.strerror or err}{unchanged}") from None
    return contents


def _check_member(member: tarfile.TarInfo, archive: Path, seen: dict) -> None:
    path = PurePosixPath(member.name)
    safe = (member.isreg() and not path.is_absolute() and ".." not in path.parts
            and "\\" not in member.name and member.name not in seen
            and (member.name == MANIFEST or path.parts[0] == RESULTS))
    if not safe:
        raise CampaignError(f"{archive} holds {member.name!r}, which is not a campaign state file "
                            "(a regular file, manifest.json or under results/, no absolute path "
                            "or '..', each once); the state is left unchanged")


def _verified_manifest(contents: dict[str, bytes], archive: Path, state_dir: Path) -> dict:
    unchanged = "; the state is left unchanged"
    if MANIFEST not in contents:
        raise CampaignError(f"{archive} has no {MANIFEST}{unchanged}")
    try:
        manifest = json.loads(contents[MANIFEST])
    except ValueError as err:
        raise CampaignError(f"{archive}: {MANIFEST} does not parse ({err}){unchanged}") from None
    check_manifest(manifest, f"{archive}: {MANIFEST}")
    if manifest["campaign"] != state_dir.name:
        raise CampaignError(f"{archive} is campaign {manifest['campaign']!r}, but the state "
                            f"folder is {state_dir}; give --state .../{manifest['campaign']}")
    listed = state_files(manifest)
    for name, digest in listed.items():
        if name not in contents:
            raise CampaignError(f"{archive} lacks {name}, which its manifest lists{unchanged}")
        if _sha256(contents[name]) != digest:
            raise CampaignError(f"{archive}: {name} differs from its manifest's sha256{unchanged}")
    extra = sorted(set(contents) - set(listed) - {MANIFEST})
    if extra:
        raise CampaignError(f"{archive} holds {extra[0]}, which its manifest does not list"
                            f"{unchanged}")
    return manifest


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _replace_state(state_dir: Path, contents: dict[str, bytes]) -> None:
    """Write the new state beside the old one, then swap: the old folder is kept until the new
    one is complete. Files of the old folder that are no run's (notes) move over."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{state_dir.name}.new-", dir=state_dir.parent))
    old = state_dir.parent / f".{state_dir.name}.old-{os.getpid()}"
    try:
        for name, data in contents.items():
            io.atomic_write_bytes(new / name, data)
        _carry_notes(state_dir, new)
        if state_dir.exists():
            os.rename(state_dir, old)
        try:
            os.rename(new, state_dir)
        except OSError:
            if old.exists():
                os.rename(old, state_dir)
            raise
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _carry_notes(state_dir: Path, new: Path) -> None:
    if not state_dir.is_dir():
        return
    for path in state_dir.rglob("*"):
        relative = path.relative_to(state_dir)
        if path.is_file() and relative.parts[0] != RESULTS and str(relative) != MANIFEST:
            io.atomic_write_bytes(new / relative, path.read_bytes())
