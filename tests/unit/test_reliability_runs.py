"""Issue 25, items 4, 5 and 11: two trainings never share a run folder (a lock that dies with
its process); a resume state of another number of ranks is set aside, named, never lost; a rank
killed mid-run leaves the survivor saying so in one line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dgkd_core.errors import TrainingError
from dgkd_core.training import trainer as train_module
from dgkd_core.training.trainer import train
from helpers import free_port, resume_state_before_outputs, run_config, train_args

REPO = Path(__file__).resolve().parents[2]

# A trainer slowed to 0.05 s a step (8 steps an epoch on tiny_data), so that a test can act
# while it runs; then the CLI, as a user starts it.
_SLOW_TRAIN = ("import sys, time\n"
               "import dgkd_core.training.trainer as t\n"
               "step = t.Trainer.run_step\n"
               "t.Trainer.run_step = lambda self, *a: (time.sleep(0.05), step(self, *a))[1]\n"
               "from dgkd_core.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")


def _start_slow(cfg: dict, data: Path, out: Path) -> subprocess.Popen:
    run_file = out.parent / f"{out.name}.yaml"
    run_file.write_text(yaml.safe_dump({**cfg, "data": str(data), "out_dir": str(out)}))
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_TRAIN, "--log-file", str(out.parent / f"{out.name}.log"),
         "train", "--config", str(run_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_resume_state(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not (out / "resume.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"the first run ended early: {proc.stdout.read()}")
        if time.time() > end:
            pytest.fail(f"{out / 'resume.pt'} never appeared")
        time.sleep(0.05)


class _Trained(Exception):
    """Raised where a second run got past its setup, which it must not."""


def test_second_run_in_a_live_runs_folder_is_refused_naming_its_pid(tiny_data, tmp_path,
                                                                   monkeypatch):
    cfg = run_config(epochs=12)
    out = tmp_path / "shared"
    first = _start_slow(cfg, tiny_data, out)
    try:
        _wait_for_resume_state(out, first)
        monkeypatch.setattr(train_module.Trainer, "run_epoch",
                            lambda self: (_ for _ in ()).throw(_Trained()))
        with pytest.raises(TrainingError) as caught:
            train(cfg, tiny_data, out, progress=False)
        message = str(caught.value)
        assert "\n" not in message and f"pid {first.pid}" in message, message
        assert str(out) in message and "another out_dir" in message
        assert first.poll() is None, "the first run was disturbed"
    finally:
        first.send_signal(signal.SIGKILL)  # the lock dies with it
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (out / "model.pt").exists(), "the first run finished before it was killed"
    monkeypatch.undo()
    metrics = train(cfg, tiny_data, out, progress=False)  # the restart takes the folder
    assert metrics["resumed"] is True
    assert not (out / ".run.lock").exists(), "a finished run leaves its lock file behind"


def test_the_lock_is_released_after_a_run_and_after_a_failed_one(tiny_data, tmp_path,
                                                                monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(train_module.Trainer, "run_epoch",
                        lambda self: (_ for _ in ()).throw(_Trained()))
    with pytest.raises(_Trained):
        train(run_config(epochs=1), tiny_data, out, progress=False)
    monkeypatch.undo()
    train(run_config(epochs=1), tiny_data, out, progress=False)  # the same process, again
    assert (out / "model.pt").is_file() and not (out / ".run.lock").exists()


@pytest.fixture(scope="module")
def left_state(tiny_data, tmp_path_factory):
    """A resume.pt's bytes as a one-process run leaves it when it dies before its outputs."""
    return resume_state_before_outputs(tiny_data, tmp_path_factory.mktemp("left"))


def _resume_from(state: dict, tiny_data, out: Path, caplog, cfg: dict) -> tuple[dict, str, bytes]:
    out.mkdir()
    torch.save(state, out / "resume.pt")
    saved = (out / "resume.pt").read_bytes()
    with caplog.at_level(logging.WARNING, logger="dgkd_core"):
        metrics = train(cfg, tiny_data, out, progress=False)
    warnings = [r.getMessage() for r in caplog.records if "resume state" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    return metrics, warnings[0], saved


def test_a_state_of_two_ranks_resumed_by_one_says_why_and_is_kept(left_state, tiny_data,
                                                                  tmp_path, caplog):
    # What rank 0 of a 2-rank run writes: its identity records the number of ranks.
    state = {**left_state, "identity": {**left_state["identity"], "world_size": 2}}
    out = tmp_path / "out"
    metrics, warning, saved = _resume_from(state, tiny_data, out, caplog, run_config(epochs=1))
    assert metrics["resumed"] is False and (out / "model.pt").is_file()
    aside = out / "resume.pt.from-2-ranks"
    assert aside.read_bytes() == saved, sorted(p.name for p in out.iterdir())
    assert "saved by 2 ranks and this run has 1" in warning, warning
    assert str(aside) in warning and "start 2 ranks" in warning


def test_a_state_of_other_settings_is_kept_and_named(left_state, tiny_data, tmp_path, caplog):
    out = tmp_path / "out"
    metrics, warning, saved = _resume_from(left_state, tiny_data, out, caplog,
                                           run_config(epochs=1, seed=4))
    assert metrics["resumed"] is False
    assert (out / "resume.pt.other-settings").read_bytes() == saved
    assert "belongs to other settings than this run's" in warning, warning


@pytest.mark.parametrize("killed", [1, 0])
def test_a_rank_killed_mid_run_leaves_the_survivor_saying_so_in_one_line(tiny_data, tmp_path,
                                                                        killed):
    out, port = tmp_path / "out", str(free_port())
    ranks = []
    for rank in range(2):  # as torchrun starts them, without its agent (which would end both)
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        ranks.append(subprocess.Popen(
            [sys.executable, *train_args(tiny_data, out, "--set", "epochs=50"), "--log-file",
             str(tmp_path / f"rank{rank}.log")], env=env, cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    try:
        _wait_for_resume_state(out, ranks[0], timeout=300)
        ranks[killed].send_signal(signal.SIGKILL)
        survivor = ranks[1 - killed]
        output = survivor.communicate(timeout=120)[0]
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert survivor.returncode == 2, output
    lines = output.strip().splitlines()  # the log lines go to --log-file
    assert len(lines) == 1, output
    assert lines[0].startswith(f"error: rank {killed} is gone (gloo: "), lines[0]
    assert "the run resumes on restart" in lines[0] and str(out / "resume.pt") in lines[0]
    assert (out / "resume.pt").is_file()
    from dgkd_core.training.folder_lock import RunFolderLock

    RunFolderLock.acquire(out).release()  # the folder is free for the restart, either way


def test_a_forked_worker_does_not_keep_a_dead_runs_lock(tmp_path):
    """A DataLoader worker is forked with the lock's descriptor; were it to keep it, a run
    killed with SIGKILL would hold its folder until its workers noticed."""
    from dgkd_core.training.folder_lock import RunFolderLock

    lock = RunFolderLock.acquire(tmp_path)
    started, tell = os.pipe()
    child = os.fork()
    if child == 0:  # the worker (its fork hooks have run): it outlives its parent's lock
        os.write(tell, b"1")
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(started, 1) == b"1"
        os.close(lock._fd)  # the parent's end, as when it is killed
        again = RunFolderLock.acquire(tmp_path)  # at once, while the worker lives
        assert f"pid {os.getpid()}" in (tmp_path / ".run.lock").read_text()
        again.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(started)
        os.close(tell)


def test_every_rank_of_a_second_data_parallel_run_stops_in_one_line(tiny_data, tmp_path):
    from dgkd_core.training.folder_lock import RunFolderLock

    out = tmp_path / "out"
    out.mkdir()
    held = RunFolderLock.acquire(out)  # a live run's lock (this process's)
    port, ranks = str(free_port()), []
    try:
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
            ranks.append(subprocess.Popen([sys.executable, *train_args(tiny_data, out)], env=env,
                                          cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outputs = [proc.communicate(timeout=300)[0] for proc in ranks]
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
        held.release()
    assert [proc.returncode for proc in ranks] == [2, 2], outputs
    # each rank's one error line (rank 0 logs its joining of the group before it)
    errors = [[line for line in output.splitlines() if line.startswith("error: ")]
              for output in outputs]
    assert [len(found) for found in errors] == [1, 1], outputs
    assert f"pid {os.getpid()}" in errors[0][0] and "in use by another run" in errors[1][0]
    assert "Traceback" not in "".join(outputs)
    assert not (out / "resume.pt").exists()
