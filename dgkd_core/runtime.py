"""Where and how a run executes: device, fast-path settings, seeding and RNG state, the
environment record, and the SIGTERM/SIGUSR1 stop flag."""

from __future__ import annotations

import os
import platform
import random
import signal
from contextlib import nullcontext
from typing import Any

import torch

from dgkd_core.checkpoints import TrainingError
from dgkd_core.config import TRAINING_CODE_VERSION
from dgkd_core.data import epoch_seed, resolve_device

# Which fast-path parts a device supports. channels_last also helps oneDNN's CPU convolutions
# (about 2x for these ResNets on a 2-core x86 CPU); bf16 and CUDA graphs are CUDA-only.
FAST_ON_CPU = {"bf16": False, "channels_last": True, "cuda_graph": False}
# Every part off: the plain fp32 eager path (parity checks, debugging).
FAST_OFF = {"bf16": False, "channels_last": False, "cuda_graph": False}


def pick_device(cfg: dict) -> torch.device:
    """The run config's `device` (auto/cpu/cuda); cuda without a visible GPU is an error."""
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run-config 'device' is cuda but no CUDA device is visible; "
                            "set device: auto or cpu")
    return resolve_device(cfg["device"])


def fast_settings(cfg: dict, device: torch.device) -> dict[str, bool]:
    """Resolve `fast.*` (auto/true/false) to what runs on `device`; auto = on where supported."""
    cuda = device.type == "cuda"
    return {k: (v is True or v == "auto") and (cuda or FAST_ON_CPU[k])
            for k, v in cfg["fast"].items()}


def make_autocast(fast: dict[str, bool]):
    """bf16 autocast on CUDA when `fast["bf16"]`, else a no-op context (reusable)."""
    if not fast["bf16"]:
        return nullcontext()
    # The weight-cast cache must be off for CUDA-graph capture (PyTorch's CUDA graph notes).
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)


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
    """The global torch (CPU, and every CUDA device's) and Python RNG states."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, 0-based epoch, stream)."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream))


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
    """Set by SIGTERM/SIGUSR1 while entered; the trainer checks `reason` after each step."""

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

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
