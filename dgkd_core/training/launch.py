"""Starting one training job as N data-parallel ranks (dgkd_core.training.distributed), for the
workflow's `resources.gpus_per_job`.

A job with N > 1 GPUs asks SLURM for N GPUs and N tasks (rules/train.smk: `gpu`, `tasks`,
`tasks_per_gpu` and `mpi`, which makes the executor plugin run the job in the batch shell rather
than under `srun -n1`), and the job's adapter starts the ranks:

* inside a SLURM job: `srun --ntasks N python -m dgkd_core train --config <run file>`: each task
  one rank (SLURM_PROCID, SLURM_STEP_NUM_TASKS);
* elsewhere: `torchrun --standalone --nproc_per_node N -m dgkd_core train --config <run file>`.

With N = 1 the adapter calls `train()` in its own process, as it always has.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from dgkd_core import io

__all__ = ["RUN_FILE", "gpus_per_job", "rank_command", "run_ranks", "slurm_resources"]

RUN_FILE = ".ranks-run.yaml"  # in the run's folder while its ranks run


def gpus_per_job(resources: dict, role: str, dataset: str) -> int:
    """GPUs (and ranks) of one training job from the workflow config's `resources`:
    `gpus_per_job.default` (1), replaced by `per_role.<role>`, then by `per_dataset.<dataset>`.
    0 asks SLURM for no `--gpus` (GPUs given another way, e.g. `gres: shard:1`) and runs 1 rank."""
    spec = resources.get("gpus_per_job") or {}
    n = spec.get("default", 1)
    n = (spec.get("per_role") or {}).get(role, n)
    return int((spec.get("per_dataset") or {}).get(dataset, n))


def slurm_resources(gpus: int) -> dict:
    """The job's resources for the SLURM executor plugin: {gpu, tasks, tasks_per_gpu, mpi}.
    Several GPUs: N tasks, one per GPU, and `mpi` so that the plugin leaves the starting of the
    tasks to the job (without `tasks` it may start the script once per GPU). One: `--gpus=1`
    as before; 0: no GPU request (a profile's `gres` gives it)."""
    if gpus > 1:
        return {"gpu": gpus, "tasks": gpus, "tasks_per_gpu": 1, "mpi": "srun"}
    # None: the resource is not set at all (the jobstep plugin looks for the key `mpi`).
    return {"gpu": gpus or None, "tasks": None, "tasks_per_gpu": None, "mpi": None}


def rank_command(ranks: int, run_file: str | os.PathLike, log_file: str | None,
                 env: dict | None = None) -> list[str]:
    """The command that starts `ranks` processes of `python -m dgkd_core train --config
    run_file`: srun inside a SLURM job (SLURM_JOB_ID set), torchrun elsewhere."""
    env = os.environ if env is None else env
    train = ["-m", "dgkd_core", *(["--log-file", log_file] if log_file else []), "train",
             "--config", str(run_file)]
    if "SLURM_JOB_ID" in env:
        # --kill-on-bad-exit=0: a rank that exits 75 after saving must not have SLURM kill the
        # others before they have exited 75 too.
        return ["srun", f"--ntasks={ranks}", "--kill-on-bad-exit=0", sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={ranks}", *train]


def run_ranks(ranks: int, run_config: dict, data: str, out_dir: str | os.PathLike,
              guides: Sequence[str], log_file: str | None = None,
              guide_tables: Sequence[str | None] = ()) -> int:
    """Train one model as `ranks` processes; returns their exit status (0, 75 when stopped to
    be resumed, or another failure). SIGTERM and SIGUSR1 sent to this process are passed on to
    the launcher, which passes them to the ranks."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file = out_dir / RUN_FILE
    import yaml

    io.atomic_write_text(yaml.safe_dump({**run_config, "data": str(data),
                                         "out_dir": str(out_dir), "guides": list(guides),
                                         "guide_tables": list(guide_tables) or None}),
                         run_file)
    proc = subprocess.Popen(rank_command(ranks, run_file, log_file))
    previous = {sig: signal.signal(sig, lambda signum, _f: proc.send_signal(signum))
                for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        run_file.unlink(missing_ok=True)
    return code
