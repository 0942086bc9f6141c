"""Where and how a run executes: device, fast-path settings, seeding and RNG state, the
environment record, and the stop flag (SIGTERM/SIGUSR1, or the workflow that started the run
gone)."""

from __future__ import annotations

import os
import platform
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from dgkd_core.config import TRAINING_CODE_VERSION
from dgkd_core.data import epoch_seed
from dgkd_core.device import resolve_device
from dgkd_core.errors import TrainingError

# Which fast-path parts `auto` turns on on the CPU. channels_last also helps oneDNN's CPU
# convolutions (about 2x for these ResNets on a 2-core x86 CPU); bf16 and CUDA graphs are
# CUDA-only; folded guides (fold_guides) change the CPU's fp32 rounding, so only `true` folds
# there.
FAST_ON_CPU = {"bf16": False, "channels_last": True, "cuda_graph": False, "fold_guides": False}
# Which parts `true` can turn on on the CPU.
_CPU_CAN = {"bf16": False, "channels_last": True, "cuda_graph": False, "fold_guides": True}
# Every part off: the plain fp32 eager path (parity checks, debugging).
FAST_OFF = {"bf16": False, "channels_last": False, "cuda_graph": False, "fold_guides": False}


def pick_device(cfg: dict) -> torch.device:
    """The run config's `device` (auto/cpu/cuda); cuda without a visible GPU is an error."""
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run-config 'device' is cuda but no CUDA device is visible; "
                            "set device: auto or cpu")
    return resolve_device(cfg["device"])


def fast_settings(cfg: dict, device: torch.device) -> dict[str, bool]:
    """Resolve `fast.*` (auto/true/false) to what runs on `device`: on CUDA auto and true are
    on; on the CPU auto is FAST_ON_CPU's choice and true is on where the CPU supports it."""
    if device.type == "cuda":
        return {k: v is True or v == "auto" for k, v in cfg["fast"].items()}
    return {k: (v is True and _CPU_CAN[k]) or (v == "auto" and FAST_ON_CPU[k])
            for k, v in cfg["fast"].items()}


def make_autocast(fast: dict[str, bool]):
    """bf16 autocast on CUDA when `fast["bf16"]`, else a no-op context (reusable)."""
    if not fast["bf16"]:
        return nullcontext()
    # The weight-cast cache must be off for CUDA-graph capture (PyTorch's CUDA graph notes).
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)


def job_time_budget_s(runtime_minutes: int) -> float | None:
    """A training job's time budget (s), or None. Inside a SLURM job the `runtime` resource is
    its --time: the trainer saves its resume state and exits before that runs out, and the
    retried job continues from it. Two minutes go to the Snakemake start-ups before the
    trainer's clock starts."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return max(60 * runtime_minutes - 120, 60)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, torch and numpy; with `deterministic`, also pin CUDA's algorithms."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    if deterministic and torch.cuda.is_available():
        # CPU kernels are deterministic already; this call also costs seconds of imports.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Filling every new allocation with NaN guards against reading uninitialised memory,
        # which this code never does; it would add a kernel per allocation to each step.
        torch.utils.deterministic.fill_uninitialized_memory = False


def rng_state() -> dict:
    """The global torch (CPU, and every CUDA device's) and Python RNG states, as uint8 tensors
    and plain lists: what `torch.load(weights_only=True)` reads back."""
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned (also its older form, Python's state as a tuple)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, 0-based epoch, stream)."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream))


def elapsed_s(device: torch.device, start: float) -> float:
    """Seconds from `start` (a `time.perf_counter()` reading) until `device` has finished the
    work queued on its current stream. CUDA runs kernels asynchronously: the clock is read
    after that stream's sync, else work still queued would go uncounted and training times come
    out short (img/s too high). The current stream, not the whole device: a fused member's
    epoch ends with its stream joined into the current one (dgkd_core.training.fused), and need not wait
    for the other members' queued steps. A sync per call: for once per segment, not per step."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return time.perf_counter() - start


def environment_info(device: torch.device) -> dict:
    """Versions, device name, thread count and host, as metrics.json records them."""
    import torchvision

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "training_code_version": TRAINING_CODE_VERSION,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    return info


class StopFlag:
    """Set by SIGTERM/SIGUSR1 while entered, or once process `watch_pid` is gone; the trainer
    checks `reason` after each step.

    watch_pid: the workflow that started this run (`workflow_ancestor_pid()`), or None. A
    trainer whose workflow was killed (SIGKILL reaches no child) stops as on SIGTERM, so that
    the rerun resumes it instead of retraining it. Reading `reason` looks at the process at most
    once per `poll_interval_s` seconds (a clock read otherwise)."""

    def __init__(self, watch_pid: int | None = None, poll_interval_s: float = 1.0):
        self._reason: str | None = None
        self.watch_pid = watch_pid
        self.poll_interval_s = poll_interval_s
        self._next_poll = 0.0  # time.monotonic() of the next look at watch_pid
        self._previous: dict[int, Any] = {}
        # Taken now, so that a new process given the same pid later does not count as alive.
        self._watch_start = _process_start_time(watch_pid) if watch_pid is not None else None

    @property
    def reason(self) -> str | None:
        """Why the run must stop ("signal SIGTERM", ...), or None."""
        if self._reason is None and self.watch_pid is not None:
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + self.poll_interval_s
                if not self._watched_alive():
                    self._reason = f"parent workflow (pid {self.watch_pid}) is gone"
        return self._reason

    @reason.setter
    def reason(self, value: str | None) -> None:
        self._reason = value

    def _watched_alive(self) -> bool:
        if not process_exists(self.watch_pid):
            return False
        start = _process_start_time(self.watch_pid)
        return self._watch_start is None or start is None or start == self._watch_start

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, _frame):
        self.reason = f"signal {signal.Signals(signum).name}"

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def process_exists(pid: int) -> bool:
    """True while process `pid` runs: it exists and (on Linux) is not a zombie, which is a dead
    process not yet reaped by its parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    stat = _proc_stat(pid)
    return stat is None or stat[0] != "Z"


def workflow_ancestor_pid() -> int | None:
    """The pid of the nearest ancestor process that is Snakemake, or None (none, or no /proc).

    Snakemake runs a script job as `python .snakemake/scripts/tmpXXXX.script.py`, sometimes
    under a shell, so this walks up the parents. A process counts as Snakemake when one of its
    command-line words (its program, script or `-m` module; not a `sh -c` command string, which
    holds spaces) has a base name starting with "snakemake": `.snakemake/scripts/...` in the
    trainer's own command line and its shell's does not count."""
    pid = os.getppid()
    while pid > 1:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if any(_is_snakemake_word(w.decode(errors="replace")) for w in words):
            return pid
        stat = _proc_stat(pid)
        if stat is None:
            return None
        pid = int(stat[1])
    return None


def _is_snakemake_word(word: str) -> bool:
    if not word or any(c.isspace() for c in word):
        return False
    return os.path.basename(word).lower().startswith("snakemake")


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from the 3rd (state, ppid, ...) on; None off Linux or if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the 2nd field, (comm), may hold spaces and ")"


def _process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot), or None where unknown."""
    stat = _proc_stat(pid)
    return stat[19] if stat is not None and len(stat) > 19 else None
