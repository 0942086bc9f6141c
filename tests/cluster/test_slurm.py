"""The slurm profile against a real one-node SLURM cluster (accounting via slurmdbd, one fake GPU).

`ci/slurm_cluster.sh up` brings the cluster up for the session (installing the Debian packages on
first use) and `down` stops it at the end, unless it was already running before the tests. Where
a cluster cannot be had (not root, no apt, packages not installable) the cluster tests are
skipped with that reason; with DGKD_REQUIRE_SLURM=1 (CI) they fail instead.

Every run works in a copy of the repository and types the user's command as written,
`snakemake --profile slurm results/table1.csv`, from the copy's root, plus a test overlay:
  - `--configfile config/demo.yaml tests/cluster/slurm_overlay.yaml`: the demo with one seed, one epoch
    and 256 images (7 training jobs), 1 thread, 1000 MB, 10-minute time limits;
  - `--default-resources slurm_partition=debug runtime=10 mem_mb=1000`: the partition placeholder
    filled in (this replaces the profile's default-resources as a whole, so it restates all);
  - faster status polling than the plugin's defaults (2 s instead of 40 s before the first check),
    which only shortens the waits.
Job counts stay small: each job costs status polling, and the one fake GPU runs one at a time
(its 4 shards run up to 4 jobs that ask for `gres: "shard:1"`, test (e)).

The tests that need no cluster (profile layout, dry run through the profile) run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "ci" / "slurm_cluster.sh"
VENV_BIN = Path(sys.executable).parent
DEMO = "config/demo.yaml"
OVERLAY = "tests/cluster/slurm_overlay.yaml"
PARTITION = os.environ.get("DGKD_SLURM_PARTITION", "debug")
REQUIRE = os.environ.get("DGKD_REQUIRE_SLURM") == "1"
# The user's command, exactly as the README gives it.
USER_COMMAND = ["snakemake", "--profile", "slurm", "results/table1.csv"]
# What the tests add to it (see the module docstring).
TEST_OVERLAY = [
    "--configfile", DEMO, OVERLAY,
    "--default-resources", f"slurm_partition={PARTITION}", "runtime=10", "mem_mb=1000",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2",
]
# Keys of metrics.json that describe the run rather than its result.
RUN_DESCRIPTION_KEYS = re.compile(r"time|host|resumed|wall|img_|per_s|date|duration", re.IGNORECASE)


# --------------------------------------------------------------------------- helpers


def env() -> dict:
    """The caller's environment with the venv first on PATH and no SLURM job variables."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def copy_repo(dest: Path) -> Path:
    """The repository's tracked content (no results, caches or venv), symlinks kept."""
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", ".snakemake", "__pycache__", "*.egg-info", ".pytest_cache"))
    assert (dest / "slurm").is_symlink() or (dest / "slurm").is_dir(), "no `slurm` at the root"
    return dest


def run(cmd, cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def start(cmd, cwd: Path, log: Path) -> subprocess.Popen:
    """Run `cmd` in the background, its output to `log`."""
    fh = open(log, "w")
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=fh, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(30)
        pytest.fail(f"{' '.join(map(str, proc.args))} did not finish in {timeout} s:\n"
                    f"{log.read_text()[-6000:]}")
    text = log.read_text()
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))} failed:\n{text[-8000:]}"
    return text


def merged_config(*files: Path) -> dict:
    """What Snakemake makes of several --configfile files: nested dicts merged, the rest replaced."""
    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(dict(a[k]), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    out: dict = {}
    for f in files:
        out = merge(out, yaml.safe_load(Path(f).read_text()) or {})
    return out


def submitted_jobs(log_text: str) -> dict[str, str]:
    """SLURM job id -> Snakemake job id, from the plugin's "has been submitted" lines."""
    return {m.group(2): m.group(1) for m in re.finditer(
        r"Job (\d+) has been submitted with SLURM jobid (\d+)", log_text)}


SACCT_FIELDS = ["JobID", "JobName", "Comment", "State", "ExitCode", "Partition", "Timelimit",
                "AllocTRES", "ReqTRES", "Start", "End"]


def sacct(job_ids) -> list[dict]:
    """sacct's allocation lines (-X) for these jobs, once all have a final state."""
    ids = ",".join(sorted(job_ids, key=int))
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ids, "-o", ",".join(SACCT_FIELDS)],
                             capture_output=True, text=True, env=env())
        rows = [dict(zip(SACCT_FIELDS, line.split("|"))) for line in out.stdout.splitlines()
                if line.strip()]
        final = [r for r in rows if r["State"].split()[0] not in ("PENDING", "RUNNING", "REQUEUED")]
        if len(final) == len(job_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(2)


def comparable_metrics(path: Path) -> dict:
    """metrics.json without what describes the run (times, host, whether it resumed)."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not RUN_DESCRIPTION_KEYS.search(k)}
        return obj
    return strip(json.loads(path.read_text()))


def assert_same_table(a: Path, b: Path) -> None:
    """Row by row: the same columns, equal text, numbers equal within float tolerance."""
    ta, tb = pd.read_csv(a), pd.read_csv(b)
    assert list(ta.columns) == list(tb.columns)
    assert len(ta) == len(tb), f"{len(ta)} rows vs {len(tb)}"
    timing = [c for c in ta.columns if RUN_DESCRIPTION_KEYS.search(str(c))]
    for i in range(len(ta)):
        for col in ta.columns:
            if col in timing:
                continue
            x, y = ta.at[i, col], tb.at[i, col]
            if pd.isna(x) and pd.isna(y):
                continue
            if isinstance(x, float) or isinstance(y, float):
                assert float(x) == pytest.approx(float(y), rel=1e-6, abs=1e-6), \
                    f"row {i}, column {col!r}: {x} (SLURM) vs {y} (local)"
            else:
                assert x == y, f"row {i}, column {col!r}: {x!r} (SLURM) vs {y!r} (local)"


# --------------------------------------------------------------------------- no cluster needed


def test_profile_is_found_by_the_bare_name_from_the_repository_root(monkeypatch):
    """`--profile slurm` resolves ./slurm/config.yaml, which is profiles/slurm/config.yaml."""
    from snakemake.cli import get_profile_dir

    monkeypatch.chdir(REPO)
    profile_dir, config_file = get_profile_dir("slurm")
    assert config_file.resolve() == (REPO / "profiles" / "slurm" / "config.yaml").resolve()


def test_profile_settings():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1, "retries resume preempted training jobs"
    assert profile["latency-wait"] >= 60, "shared file systems need a generous latency-wait"
    assert int(profile["jobs"]) >= 1
    assert {"slurm_partition", "runtime", "mem_mb"} <= set(profile["default-resources"])
    train = profile["set-resources"]["train_model"]
    # the rule asks for the GPUs (resources.gpus_per_job): a `gpu` here would override it
    assert "gpu" not in train
    extra = train.get("slurm_extra", "")
    assert not re.search(r"--(gres|gpus|mem)\b", extra), "the plugin refuses these in slurm_extra"
    assert "B:" not in extra, "--signal=B:... signals the batch shell and ends the job at once"


def declared_localrules() -> set[str]:
    """The rule names listed in the workflow's `localrules:` directives."""
    names: set[str] = set()
    for f in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for block in re.findall(r"^localrules:((?:\s+\w+,?)+)", f.read_text(), re.M):
            names |= set(re.findall(r"\w+", block))
    return names


def test_dry_run_through_the_profile(tmp_path):
    """Data preparation, tables and figures run where Snakemake runs (the login node, which has
    the internet); each training job asks for one GPU. (A dry run prints local rules as `rule`,
    so locality is read from the `localrules:` directives here and checked for real on the
    cluster.)"""
    local = declared_localrules()
    for rule in ("prepare_data", "table1"):
        assert rule in local, f"rule {rule} should be in `localrules`"
    assert "train_model" not in local
    work = copy_repo(tmp_path / "repo")
    proc = run(USER_COMMAND + ["-n", "--configfile", DEMO, OVERLAY], cwd=work, timeout=300)
    text = proc.stdout + proc.stderr
    assert "Using profile slurm" in text
    train_blocks = re.findall(r"^rule train_model:$(.*?)^\s+resources: ([^\n]*)", text, re.M | re.S)
    assert train_blocks, text
    for _, resources in train_blocks:
        assert "gpu=1" in resources.split(", "), resources


def test_cluster_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


# --------------------------------------------------------------------------- the cluster


def _cannot_have_cluster() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the one-node SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root (it installs packages and starts daemons)"
    needed = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct")
    if not shutil.which("apt-get") and not all(shutil.which(p) or Path("/usr/sbin", p).exists()
                                               for p in needed):
        return "no apt-get to install SLURM, munge and MariaDB, and they are not installed"
    return None


def _skip(reason: str):
    if REQUIRE:
        pytest.fail(f"DGKD_REQUIRE_SLURM=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster; stopped at the end only if this fixture started it."""
    reason = _cannot_have_cluster()
    if reason:
        _skip(reason)
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode == 3:
        _skip(f"ci/slurm_cluster.sh cannot bring a cluster up here:\n{up.stderr[-3000:]}")
    assert up.returncode == 0, f"ci/slurm_cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
    print(f"\nSLURM cluster up in {time.monotonic() - t0:.1f} s "
          f"({'already running' if was_up else 'started'})")
    yield
    if not was_up:
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def demo_runs(slurm_cluster, tmp_path_factory):
    """The demo through the slurm profile, and the same config run locally, side by side."""
    base = tmp_path_factory.mktemp("slurm_demo")
    slurm_dir, local_dir = copy_repo(base / "slurm"), copy_repo(base / "local")
    local_log, slurm_log = base / "local.log", base / "slurm.log"
    local = start(["snakemake", "--profile", "profiles/local", "--cores", "2", "results/table1.csv",
                   "--configfile", DEMO, OVERLAY], local_dir, local_log)
    t0 = time.monotonic()
    slurm = start(USER_COMMAND + TEST_OVERLAY, slurm_dir, slurm_log)
    slurm_text = finish(slurm, slurm_log, timeout=720)
    slurm_seconds = time.monotonic() - t0
    local_text = finish(local, local_log, timeout=600)
    print(f"\ndemo through SLURM: {slurm_seconds:.0f} s")
    return {"slurm_dir": slurm_dir, "local_dir": local_dir, "slurm_log": slurm_text,
            "local_log": local_text}


@pytest.mark.slurm
def test_demo_runs_through_the_slurm_profile(demo_runs):
    """(a) The user's command, with the test overlay, runs the demo to results/table1.csv."""
    text = demo_runs["slurm_log"]
    assert (demo_runs["slurm_dir"] / "results" / "table1.csv").is_file()
    assert "SLURM run ID" in text, "the slurm executor was not used"
    jobs = submitted_jobs(text)
    assert jobs, "no job went to SLURM"
    # The cheap rules ran on the "login node", not as SLURM jobs.
    assert re.search(r"^localrule prepare_data:$", text, re.M)
    assert re.search(r"^localrule table1:$", text, re.M)
    assert not re.search(r"^rule (prepare_data|table1):$", text, re.M)


@pytest.mark.slurm
def test_slurm_table_equals_local_table(demo_runs):
    """(b) results/table1.csv from SLURM equals, row by row, the one from a local run."""
    assert_same_table(demo_runs["slurm_dir"] / "results" / "table1.csv",
                      demo_runs["local_dir"] / "results" / "table1.csv")


@pytest.mark.slurm
def test_sacct_lists_training_jobs_with_the_gpu(demo_runs):
    """(c) Every training job ran as a SLURM job with one GPU, in the overlay's partition and
    with the config's time limit; sacct (through slurmdbd) has them all as COMPLETED."""
    text = demo_runs["slurm_log"]
    jobs = submitted_jobs(text)
    n_train = len(list((demo_runs["slurm_dir"] / "results" / "runs").rglob("metrics.json")))
    assert n_train >= 1
    rows = sacct(jobs)
    assert len(rows) == len(jobs), f"sacct knows {len(rows)} of {len(jobs)} jobs: {rows}"
    train_rows = [r for r in rows if r["Comment"].startswith("rule_train_model")]
    assert len(train_rows) == len(rows), f"non-training jobs went to SLURM: {rows}"
    assert len(train_rows) == n_train, f"{len(train_rows)} SLURM jobs for {n_train} trained models"
    for r in train_rows:
        assert r["State"] == "COMPLETED", r
        assert "gres/gpu=1" in r["AllocTRES"].split(","), r
        assert r["Partition"] == PARTITION, r
        assert r["Timelimit"] == "00:10:00", r


@pytest.mark.slurm
def test_preempted_training_job_resumes_to_the_same_result(slurm_cluster, tmp_path):
    """(d) A training job gets SIGTERM mid-run (what SLURM sends on preemption or time-out, here
    by `scancel --signal=TERM`): it writes resume.pt and exits non-zero, the job fails, Snakemake
    submits it again, and the new job resumes and ends with the metrics of an uninterrupted run."""
    slurm_dir, local_dir = copy_repo(tmp_path / "slurm"), copy_repo(tmp_path / "local")
    # A teacher that trains long enough to be signalled after its first epoch.
    longer = tmp_path / "longer.yaml"
    longer.write_text(yaml.safe_dump({"hyperparameters": {"per_role": {"teacher": {"epochs": 8}}}}))
    configs = [DEMO, OVERLAY, str(longer)]
    cfg = merged_config(REPO / DEMO, REPO / OVERLAY, longer)
    from dgkd_core.experiment import paths

    dataset = next(iter(cfg["datasets"]))
    teacher = next(iter(cfg["chains"].values()))["teacher"]
    seed = cfg["seeds"][0]
    teacher_run = paths.make_run(dataset, seed, "nokd", [teacher])
    target = teacher_run.file("metrics.json")
    train_log = paths.train_log(dataset, seed, teacher_run.method_dir, teacher_run.lineage_str)

    local_log, slurm_log = tmp_path / "local.log", tmp_path / "slurm.log"
    local = start(["snakemake", "--profile", "profiles/local", "--cores", "1", target,
                   "--configfile", *configs], local_dir, local_log)
    overlay = TEST_OVERLAY[TEST_OVERLAY.index("--default-resources"):]
    slurm = start(["snakemake", "--profile", "slurm", target, "--configfile", *configs, *overlay],
                  slurm_dir, slurm_log)

    # Wait until the training job runs and has written its first resume state, then signal it.
    resume = slurm_dir / teacher_run.dir / "resume.pt"
    deadline, job_id = time.monotonic() + 300, None
    while time.monotonic() < deadline and slurm.poll() is None:
        if resume.exists():
            out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"], capture_output=True,
                                 text=True, env=env()).stdout
            running = [line.split("|")[0] for line in out.splitlines()
                       if "|rule_train_model" in line]
            if running:
                job_id = running[0]
                break
        time.sleep(0.2)
    assert job_id, f"no running training job with a resume state:\n{slurm_log.read_text()[-4000:]}"
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True, env=env())

    slurm_text = finish(slurm, slurm_log, timeout=600)
    finish(local, local_log, timeout=600)

    jobs = submitted_jobs(slurm_text)
    rows = sorted(sacct(jobs), key=lambda r: int(r["JobID"]))
    states = [r["State"].split()[0] for r in rows]
    assert job_id in jobs, f"the signalled job {job_id} was not one of Snakemake's: {jobs}"
    assert rows[0]["JobID"] == job_id and states[0] == "FAILED", rows
    assert states[-1] == "COMPLETED" and len(rows) >= 2, rows
    assert all(r["Comment"] == rows[0]["Comment"] for r in rows), rows
    # The signalled job saved and exited with the trainer's "resumable" status (75). Its SLURM
    # log is kept because it failed. (Snakemake empties the rule's own log file when it starts
    # the job again, so the trainer's "stopping early" line is gone from there.)
    failed_log = next((slurm_dir / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log"))
    assert "non-zero exit status 75" in failed_log.read_text(), \
        f"the trainer did not stop on the signal (finished first? raise the epochs):\n" \
        f"{failed_log.read_text()[-4000:]}"
    log_text = (slurm_dir / train_log).read_text()
    resumed = re.search(r"resumed from \S+ at epoch (\d+) step (\d+)", log_text)
    assert resumed, f"the retried job did not resume:\n{log_text}"
    assert int(resumed.group(1)) < cfg["hyperparameters"]["per_role"]["teacher"]["epochs"]
    assert not resume.exists(), "resume.pt is left after success"

    got = json.loads((slurm_dir / target).read_text())
    if "resumed" in got:
        assert got["resumed"], "metrics.json says the run did not resume"
    assert comparable_metrics(slurm_dir / target) == comparable_metrics(local_dir / target)
    hist_slurm = pd.read_csv(slurm_dir / teacher_run.file("history.csv"))
    hist_local = pd.read_csv(local_dir / teacher_run.file("history.csv"))
    cols = [c for c in hist_local.columns if not RUN_DESCRIPTION_KEYS.search(c)]
    pd.testing.assert_frame_equal(hist_slurm[cols], hist_local[cols])


@pytest.mark.slurm
def test_training_jobs_share_one_gpu_through_shards(demo_runs, tmp_path):
    """(e) Several training jobs on one GPU: with `gres: "shard:1"` instead of `gpu: 1` (the
    README's "Several trainings on one GPU"), independent training jobs run at the same time on
    the cluster's one GPU, each still its own SLURM job, and each ends with the metrics of the
    local run. (With `gpu: 1` the one GPU runs them one after the other.)"""
    from dgkd_core.experiment import paths

    cfg = merged_config(REPO / DEMO, REPO / OVERLAY)
    dataset = next(iter(cfg["datasets"]))
    chain = next(iter(cfg["chains"].values()))
    seed = cfg["seeds"][0]
    # The two trainings that need nothing but the data: the teacher and the NoKD student.
    runs = [paths.make_run(dataset, seed, "nokd", [model])
            for model in (chain["teacher"], chain["student"])]
    targets = [run.file("metrics.json") for run in runs]
    slurm_dir = copy_repo(tmp_path / "slurm")
    log = tmp_path / "slurm.log"
    # --set-resources replaces the profile's set-resources block: this is the whole of it here;
    # gpu=0 drops the rule's own GPU request (resources.gpus_per_job).
    proc = start(["snakemake", "--profile", "slurm", *targets, *TEST_OVERLAY,
                  "--set-resources", "train_model:gres=shard:1", "train_model:gpu=0"],
                 slurm_dir, log)
    text = finish(proc, log, timeout=600)

    jobs = submitted_jobs(text)
    rows = sacct(jobs)
    assert len(rows) == len(targets) == 2, rows
    for r in rows:
        assert r["State"] == "COMPLETED", r
        tres = r["AllocTRES"].split(",")
        assert "gres/shard=1" in tres and not any(t.startswith("gres/gpu") for t in tres), r
    (start_a, end_a), (start_b, end_b) = [(r["Start"], r["End"]) for r in rows]
    assert start_a < end_b and start_b < end_a, f"the two jobs did not overlap in time: {rows}"
    for target in targets:
        assert comparable_metrics(slurm_dir / target) == \
            comparable_metrics(demo_runs["local_dir"] / target)
