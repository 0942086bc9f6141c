"""Reproduction campaigns (dgkd_core/campaign/, ci/campaign_continue.sh): restore, pack and
unpack on hand-made run files (fast), and the tiny config built up across three cut windows,
ending bit-identical to a straight run (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from dgkd_core import cli
from dgkd_core.campaign.pack import pack, unpack
from dgkd_core.campaign.report import README_BEGIN, campaign_report, readme_box
from dgkd_core.campaign.state import (CAMPAIGNS, CampaignError, campaign_configs, data_targets,
                                      load_plan, read_manifest, restore, run_key)
from dgkd_core.config import config_hash
from dgkd_core.guides.checkpoints import weights_fingerprint
from helpers import assert_same_weights

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "config" / "repro_tiny.yaml"


def tiny_configs(tmp_path: Path, extra: str = "") -> list[str]:
    """config/repro_tiny.yaml, one seed, 3 epochs of 16 steps; `extra` YAML merged last."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("seeds: [1]\ndatasets:\n  synthetic:\n    options: {synthetic_train: 1024,"
                       " synthetic_test: 128}\nhyperparameters:\n  defaults:\n    epochs: 3\n")
    configs = [str(TINY), str(overlay)]
    if extra:
        (tmp_path / "extra.yaml").write_text(extra)
        configs.append(str(tmp_path / "extra.yaml"))
    return configs


def fake_workdir(workdir: Path, plan, in_flight=(), hashes=None) -> None:
    """Every planned run finished (or in flight, by run key), its files made by hand; `hashes`
    overrides a run's recorded config hash."""
    hashes = hashes or {}
    (workdir / data_targets(plan)[0]).parent.mkdir(parents=True, exist_ok=True)
    (workdir / data_targets(plan)[0]).write_bytes(b"data")
    for i, run in enumerate(plan.runs()):
        folder = workdir / run.dir
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashes.get(run_key(run), config_hash(plan.run_config(run)))
        if run_key(run) in in_flight:
            torch.save({"identity": {"config_hash": digest}, "epoch": 1, "step": 3,
                        "train_time_s": 0.5, "history": [{"time_s": 2.0}]}, folder / "resume.pt")
            continue
        torch.save({"state_dict": {"w": torch.full((3,), float(i))}, "model": run.model,
                    "num_classes": 10}, folder / "model.pt")
        (folder / "history.csv").write_text("epoch,time_s\n1,2.0\n2,2.0\n3,2.0\n")
        (folder / "metrics.json").write_text(json.dumps({
            "config_hash": digest, "epochs": 3, "top1_last": 50.0 + i, "top5_last": 90.0,
            "top1_best": 50.0 + i, "best_epoch": 3, "wall_time_s": 7.0, "train_time_s": 6.0,
            "versions": {"device_name": "cpu", "torch": torch.__version__}}))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny(tmp_path):
    configs = tiny_configs(tmp_path)
    return configs, load_plan(configs)


def packed_state(tmp_path, configs, plan, **kwargs) -> Path:
    """A state folder `state/tiny` unpacked from a pack of a hand-made work directory."""
    fake_workdir(tmp_path / "w0", plan, **kwargs)
    pack(tmp_path / "w0", plan, tmp_path / "s0.tar.xz", campaign="tiny", configs=configs)
    unpack(tmp_path / "s0.tar.xz", tmp_path / "state" / "tiny")
    return tmp_path / "state" / "tiny"


# ------------------------------------------------------------------ fast


def test_the_campaign_registry_names_existing_configs():
    for name in CAMPAIGNS:
        assert all(Path(c).is_file() for c in campaign_configs(name))
    plan = load_plan(campaign_configs("cifar10_resnet_80ep"))
    assert len(plan.runs()) == 27
    assert {plan.run_config(r)["epochs"] for r in plan.runs()} == {80}
    with pytest.raises(CampaignError, match="unknown campaign"):
        campaign_configs("nope")


def test_pack_unpack_restore_round_trip_keeps_bytes(tmp_path, tiny):
    configs, plan = tiny
    flight = run_key(plan.table1_runs()[-1])
    state = packed_state(tmp_path, configs, plan, in_flight={flight})
    manifest = read_manifest(state)
    assert manifest["runs"][flight]["status"] == "in_flight"
    assert manifest["runs"][flight]["epochs_done"] == 1
    assert sum(e["status"] == "done" for e in manifest["runs"].values()) == 6
    assert not list(state.rglob("*/data/*"))  # prepared data is never packed
    guiding = {g for r in plan.runs() for g in plan.guides(r)}
    for run in plan.runs():  # weights kept where a later run loads them; students' identified
        entry = manifest["runs"][run_key(run)]
        if entry["status"] == "done":
            assert ("model.pt" in entry["files"]) == (run in guiding), run_key(run)
            assert ("weights_sha256" in entry) == (run not in guiding), run_key(run)
    student = plan.table1_runs()[0]
    assert manifest["runs"][run_key(student)]["weights_sha256"] == \
        weights_fingerprint(tmp_path / "w0" / student.file("model.pt"))
    for run in plan.runs():  # copied, not re-serialised
        for name in manifest["runs"][run_key(run)]["files"]:
            assert (state / run.dir / name).read_bytes() == \
                (tmp_path / "w0" / run.dir / name).read_bytes()

    work = tmp_path / "w1"
    fake_workdir(work, plan, in_flight=set(), hashes={})  # the data file, then replaced below
    shutil.rmtree(work / "results" / "runs")
    result = restore(state, work, plan)
    assert result.refused == {} and len(result.restored) == 7
    assert tree(work / "results" / "runs") == tree(state / "results" / "runs")
    pack(work, plan, tmp_path / "s1.tar.xz", campaign="tiny", configs=configs, state_dir=state)
    again = read_manifest(state)  # the state unpacked again is the same but for the windows
    unpack(tmp_path / "s1.tar.xz", state)
    assert read_manifest(state)["runs"] == again["runs"]
    assert len(read_manifest(state)["windows"]) == 2


def test_restored_outputs_are_newer_than_the_data_and_their_guides(tmp_path, tiny):
    configs, plan = tiny
    state = packed_state(tmp_path, configs, plan)
    work = tmp_path / "w1"
    (work / data_targets(plan)[0]).parent.mkdir(parents=True)
    (work / data_targets(plan)[0]).write_bytes(b"data")
    restore(state, work, plan)
    data_mtime = (work / data_targets(plan)[0]).stat().st_mtime_ns
    for run in plan.runs():
        mtime = (work / run.file("metrics.json")).stat().st_mtime_ns
        assert mtime > data_mtime
        for guide in plan.guides(run):
            assert (work / guide.file("model.pt")).stat().st_mtime_ns < mtime


def test_a_run_whose_config_changed_is_not_restored_nor_what_it_guides(tmp_path, tiny):
    configs, plan = tiny
    state = packed_state(tmp_path, configs, plan)
    changed = tiny_configs(tmp_path, "hyperparameters:\n  per_role:\n    ta:\n      loss: "
                                     "{lam: 0.7}\n")
    new_plan = load_plan(changed)
    work = tmp_path / "w1"
    result = restore(state, work, new_plan)
    ta = next(r for r in new_plan.runs() if new_plan.role(r) == "ta")
    assert "other settings" in result.refused[run_key(ta)]
    guided = [r for r in new_plan.runs() if ta in new_plan.guides(r)]
    for run in guided:  # what the TA guides retrains too
        assert result.refused[run_key(run)] == f"its guide {ta.dir} is retrained"
        assert not (work / run.file("metrics.json")).exists()
    assert len(result.restored) == 7 - 1 - len(guided)
    assert (work / new_plan.runs()[0].file("metrics.json")).exists()
    record = json.loads((work / "results" / "campaign_restore.json").read_text())
    assert record["refused"] == result.refused
    # packed again (nothing retrained yet): the stale runs are left out, and the report says so
    pack(work, new_plan, tmp_path / "s1.tar.xz", campaign="tiny", configs=changed,
         state_dir=state)
    unpack(tmp_path / "s1.tar.xz", state)
    manifest = read_manifest(state)
    assert run_key(ta) not in manifest["runs"] and run_key(ta) in manifest["dropped"]
    text, _ = campaign_report(state, changed)
    assert f"Not restored, retrained: `{run_key(ta)}`: it was trained with other settings" \
        in text


def test_pack_leaves_out_a_run_recorded_under_other_settings(tmp_path, tiny):
    configs, plan = tiny
    ta = next(r for r in plan.runs() if plan.role(r) == "ta")
    state = packed_state(tmp_path, configs, plan, hashes={run_key(ta): "0123456789abcdef"})
    manifest = read_manifest(state)
    assert "other settings" in manifest["dropped"][run_key(ta)]
    assert run_key(ta) not in manifest["runs"] and len(manifest["runs"]) == 3  # NoKD, KD, teacher


def _bad_archives(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    out = {"truncated": data[: len(data) // 2], "garbage": b"not an archive at all"}
    paths = {name: tmp_path / f"{name}.tar.xz" for name in (*out, "evil", "unlisted")}
    for name, content in out.items():
        paths[name].write_bytes(content)
    with tarfile.open(good) as src, tarfile.open(paths["evil"], "w:xz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        dst.addfile(info, __import__("io").BytesIO(b"x"))
    with tarfile.open(good) as src, tarfile.open(paths["unlisted"], "w:xz") as dst:
        for member in src:
            content = src.extractfile(member).read()
            if member.name.endswith("model.pt"):
                content = content[:-1]  # a changed file: its sha256 is no longer the manifest's
            member.size = len(content)
            dst.addfile(member, __import__("io").BytesIO(content))
    return paths


def test_a_corrupt_or_unsafe_archive_leaves_the_state_untouched(tmp_path, tiny, capsys):
    configs, plan = tiny
    state = packed_state(tmp_path, configs, plan)
    before = tree(state)
    for name, path in _bad_archives(tmp_path, tmp_path / "s0.tar.xz").items():
        with pytest.raises(CampaignError) as err:
            unpack(path, state)
        assert "\n" not in str(err.value) and "unchanged" in str(err.value), name
        assert tree(state) == before, name
        assert cli.main(["campaign", "unpack", str(path), "--state", str(state)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, lines)
    assert not [p for p in state.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_an_archive_of_another_campaign_is_refused(tmp_path, tiny):
    configs, plan = tiny
    packed_state(tmp_path, configs, plan)
    with pytest.raises(CampaignError, match="give --state"):
        unpack(tmp_path / "s0.tar.xz", tmp_path / "state" / "other")
    assert not (tmp_path / "state" / "other").exists()


def test_readme_box_is_inserted_once_then_replaced():
    readme = "# Title\n\nIntro line.\n\n## Section\n\ntext\n"
    once = readme_box(readme, "first")
    assert once.startswith("# Title\n\nIntro line.\n\n" + README_BEGIN)
    twice = readme_box(once, "second")
    assert twice.count(README_BEGIN) == 1 and "second" in twice and "first" not in twice
    assert twice.endswith("## Section\n\ntext\n")


def test_report_of_an_empty_campaign_says_nothing_yet(tmp_path):
    text, box = campaign_report(tmp_path / "cifar10_resnet_80ep",
                                campaign_configs("cifar10_resnet_80ep"))
    assert "0 of 27 done" in text and "80 epochs" in text
    assert box.endswith("nothing yet: 0 of 27 runs done.")


# ------------------------------------------------------------------ slow: real windows


def window(tmp_path: Path, n: int, configs, deadline_s: int, **extra_env: str) -> str:
    """One ci/campaign_continue.sh call in a fresh work directory, given only the state folder
    (unpacked from the previous window's archive); then its archive is unpacked."""
    env = {**os.environ, **extra_env, "CAMPAIGN": "tiny", "STATE_DIR": str(tmp_path / "state" / "tiny"),
           "CAMPAIGN_CONFIGS": " ".join(configs), "WORKDIR": str(tmp_path / f"win{n}"),
           "OUT": str(tmp_path / f"out{n}"), "DEADLINE_S": str(deadline_s), "CORES": "2",
           "GPU_JOBS": "2", "PYTHON": sys.executable, "PACK_RESERVE_S": "2",
           "MIN_TRAIN_S": "3"}
    proc = subprocess.run(["bash", str(REPO / "ci" / "campaign_continue.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    unpack(tmp_path / f"out{n}" / "campaign_tiny.tar.xz", tmp_path / "state" / "tiny")
    return proc.stdout


@pytest.mark.slow
def test_three_cut_windows_end_bit_identical_to_a_straight_run(tmp_path):
    """About 4 minutes on 2 cores: a straight run, two or more windows cut early (training is cut
    where the deadline falls, mid-epoch as a rule) and a last one that finishes."""
    # 4096 images (64 steps an epoch): training outlasts a window, so windows cut runs
    configs = tiny_configs(tmp_path, "datasets:\n  synthetic:\n    options: {synthetic_train: "
                                     "4096, synthetic_test: 128}\n")
    plan = load_plan(configs)
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "snakemake", "results/table1.csv", "--snakefile",
                    str(REPO / "Snakefile"), "--directory", str(straight), "--profile",
                    "profiles/local", "--cores", "2", "--resources", "gpu_jobs=2",
                    "--configfile", *configs], cwd=REPO, check=True, capture_output=True)
    # Short windows until one is cut while a run trains, then one long enough to finish. Where
    # the deadline falls depends on the machine: each Snakemake start costs 3 s here, 12 s once
    # SLURM's tools are installed (its executor plugin queries them at import), and a window
    # starts Snakemake twice before any training (data, then the workflow).
    in_flight, n = 0, 0
    while n < 2 or (in_flight == 0 and n < 5):
        n += 1
        window(tmp_path, n, configs, 50)
        in_flight += sum(e["status"] == "in_flight"
                         for e in read_manifest(tmp_path / "state" / "tiny")["runs"].values())
    last = window(tmp_path, n + 1, configs, 240)
    assert last.strip().splitlines()[-1].startswith("campaign tiny: 7 of 7 runs done")
    assert in_flight > 0, "no window was cut while a run trained"
    state = tmp_path / "state" / "tiny"
    manifest = read_manifest(state)
    for run in plan.runs():
        if "model.pt" in manifest["runs"][run_key(run)]["files"]:  # a guide
            assert_same_weights(straight / run.file("model.pt"), state / run.file("model.pt"))
        else:  # a student: its weights identified, not kept
            assert manifest["runs"][run_key(run)]["weights_sha256"] == \
                weights_fingerprint(straight / run.file("model.pt"))
    assert sum("model.pt" in e["files"] for e in manifest["runs"].values()) == 2  # teacher, TA
    assert (tmp_path / f"win{n + 1}" / "results" / "table1.csv").read_bytes() == \
        (straight / "results" / "table1.csv").read_bytes()
    assert not list(state.rglob("resume.pt")) and not list(state.rglob("*.log"))


@pytest.mark.slow
def test_a_window_whose_fused_workflow_fails_trains_the_rest_alone(tmp_path):
    """About 1 minute: FUSE_OVERLAY asks for horizontal; the two teachers stack and finish, the
    students' group cannot stack (NoKD's weight decay differs), so that job fails and the
    window goes on with solo jobs, the fused teachers kept, not retrained."""
    configs = tiny_configs(tmp_path, "seeds: [1, 2]\nhyperparameters:\n  defaults:\n"
                                     "    epochs: 1\n  per_method:\n    nokd:\n      "
                                     "optimizer: {weight_decay: 5.0e-4}\n")
    overlay = tmp_path / "fuse.yaml"
    overlay.write_text("fuse: true\nfuse_mechanism: horizontal\n")
    out = window(tmp_path, 1, configs, 300, FUSE_OVERLAY=str(overlay),
                 FUSE_NOTE="fuse: horizontal (test)")
    assert out.strip().splitlines()[-1].startswith("campaign tiny: 14 of 14 runs done")
    plan, work = load_plan(configs), tmp_path / "win1"
    mechanisms = {run.model: set() for run in plan.runs()}
    for run in plan.runs():
        group = json.loads((work / run.file("metrics.json")).read_text()).get("fused_group")
        mechanisms[run.model].add(group and group["mechanism"])
    assert mechanisms == {"plane4": {"horizontal"}, "plane3": {"horizontal"}, "plane2": {None}}
    log = (work / "results" / "campaign_snakemake.log").read_text()
    assert "fused mechanism horizontal needs members with one optimizer settings" in log
    manifest = read_manifest(tmp_path / "state" / "tiny")
    assert manifest["windows"][-1]["training"] == ("fuse: horizontal (test); the fused "
                                                   "workflow failed (exit 1), then solo jobs")
    assert {e["model"]: e["trained"] for e in manifest["runs"].values()} == {
        "plane4": "fused, horizontal", "plane3": "fused, horizontal", "plane2": "alone"}
    report, _ = campaign_report(tmp_path / "state" / "tiny", configs)
    assert "- Trained: 10 alone, 4 fused, horizontal (metrics.json's `fused_group`)." in report
    assert "trained with fuse: horizontal (test); the fused workflow failed" in report
