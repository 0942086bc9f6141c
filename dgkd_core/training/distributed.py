"""Data-parallel training over N processes with torch.distributed: who this process is, the
process group, DDP wrapping of the student, BatchNorm synchronisation and the collective
decisions the trainer needs (a stop agreed by every rank, summed metrics).

One process per GPU (or per CPU share), started by `torchrun --nproc_per_node N -m dgkd_core
train ...` locally, or by `srun` inside a SLURM job with N tasks. The rank and world size come
from the environment (`Distributed.from_environment`):

* torchrun (and any launcher that sets them): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT;
* srun: SLURM_PROCID, SLURM_STEP_NUM_TASKS (set by srun for each task of a job step, not in the
  batch script itself, which is one process even in a job with N tasks), SLURM_LOCALID; the
  rendezvous is MASTER_ADDR/MASTER_PORT where set, else the step's first node and a port
  derived from the job id.

Without those variables (or with one process) nothing here starts a process group and the
trainer runs exactly as a single process always has (`Distributed.single()`).

How the global batch is shared: the run config's `batch_size` is the global batch, every rank
walks the same (seed, epoch) order and takes its contiguous slice of each global batch
(`data.shards.shard_slice`), so per-rank batch = batch_size / world_size and the lr stays the config's.
DDP averages the gradients, which makes a step the single-process step on the global batch up
to float rounding, but for BatchNorm: per rank it normalises with the statistics of the rank's
own slice, unless `sync_bn` (then the global batch's, as one process would).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Mapping

import torch
import torch.nn as nn

from dgkd_core.schema import ConfigError
from dgkd_core.training.sync_batchnorm import convert_sync_batchnorm

__all__ = ["Distributed"]

log = logging.getLogger("dgkd_core.training.distributed")

# Seconds a collective may wait for the other ranks (process group start included) before the
# run fails, rather than hanging a job until its time limit.
COLLECTIVE_TIMEOUT_S = 1800


# What a collective's error says when a peer process is gone (gloo names the socket's fate;
# NCCL says the remote process exited): one line then replaces a page of transport text.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
              "Connection refused", "remote process exited")


def _slurm_master_addr(env: Mapping[str, str]) -> str | None:
    """The first host of the job step's node list ("node[01-04],gpu7" -> "node01"), or None."""
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodes)
    if not match:
        return None
    return match.group(1) + (match.group(2) or "")


class Distributed:
    """This process's place among the ranks of one training run, and its process group.

    rank: 0..world_size-1; local_rank: its index on its node (its GPU). is_main: rank 0, the
    only rank that writes files. `start(device)` joins the process group (only where
    world_size > 1) and returns this rank's device; `close()` leaves it."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 master: tuple[str, int] | None = None, launcher: str = "single"):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} of world size {world_size} is not a valid rank; "
                              "check RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_STEP_NUM_TASKS)")
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.master, self.launcher = master, launcher
        self.backend: str | None = None  # set by start() where a process group is made
        self._stop_group = None  # the CPU (gloo) group the per-step stop flag is reduced on

    @classmethod
    def single(cls) -> "Distributed":
        return cls()

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> "Distributed":
        """The ranks as torchrun or srun describe them in `env` (default os.environ)."""
        env = os.environ if env is None else env
        try:
            if "WORLD_SIZE" in env and "RANK" in env:
                world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
                local, launcher = int(env.get("LOCAL_RANK", rank)), "torchrun"
            elif int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
                world, rank = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_PROCID"])
                local, launcher = int(env.get("SLURM_LOCALID", "0")), "srun"
            else:
                return cls.single()
            if world == 1:
                return cls.single()
            addr = env.get("MASTER_ADDR") or (_slurm_master_addr(env) if launcher == "srun"
                                              else None)
            port = env.get("MASTER_PORT") or (
                str(20000 + int(env["SLURM_JOB_ID"]) % 20000) if "SLURM_JOB_ID" in env else None)
        except ValueError as err:
            raise ConfigError(f"a rank variable of the environment is not a number ({err}); "
                              "start the ranks with torchrun or srun") from None
        if not addr or not port:
            raise ConfigError(f"{world} ranks but no rendezvous: set MASTER_ADDR and MASTER_PORT "
                              "(torchrun sets both; under srun the job's first node is used)")
        return cls(rank, world, local, (addr, int(port)), launcher)

    @property
    def active(self) -> bool:
        """More than one rank: a process group, DDP and sharded loaders are in use."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world_size), as the loaders take it."""
        return self.rank, self.world_size

    def identity(self) -> dict:
        """What a resume state and metrics.json record of the ranks: {"world_size": N} with
        several (per-rank BatchNorm makes a step depend on N), nothing with one."""
        return {"world_size": self.world_size} if self.active else {}

    def peer_gone(self, err: BaseException) -> str | None:
        """"rank N is gone (gloo: Connection reset by peer)" where `err` is a collective's
        failure because another rank's process ended (killed, or crashed); else None."""
        if self.backend is None or not isinstance(err, RuntimeError):
            return None
        cause = next((text for text in _PEER_GONE if text in str(err)), None)
        if cause is None:
            return None
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        who = f"rank {others[0]}" if len(others) == 1 else "another rank"
        return f"{who} is gone ({self.backend}: {cause})"

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ConfigError(f"run-config 'batch_size' ({batch_size}) is the global batch and "
                              f"must divide among {self.world_size} ranks; set a multiple of "
                              f"{self.world_size}")

    # ------------------------------------------------------------------ process group

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on CPU) and return this rank's device
        (cuda:LOCAL_RANK on CUDA). With one rank: `device`, nothing started."""
        if not self.active:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"rank {self.rank} has local rank {self.local_rank} but "
                                  f"{torch.cuda.device_count()} GPUs are visible; start one "
                                  "process per GPU")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if not self.is_main:  # one log: the other ranks add their warnings and errors only
            logging.getLogger("dgkd_core").setLevel(logging.WARNING)
        addr, port = self.master
        timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        dist.init_process_group(self.backend, init_method=f"tcp://{addr}:{port}",
                                rank=self.rank, world_size=self.world_size, timeout=timeout)
        # The stop flag is reduced on the CPU after every step: on a GPU run a gloo group keeps
        # that from syncing the CUDA stream.
        self._stop_group = (dist.new_group(backend="gloo", timeout=timeout)
                            if self.backend == "nccl" else dist.group.WORLD)
        log.info("rank %d of %d (%s, local rank %d) joined the %s process group at %s:%d",
                 self.rank, self.world_size, self.launcher, self.local_rank, self.backend,
                 addr, port)
        return device

    def close(self) -> None:
        """Leave the process group, if this process joined one."""
        if self.backend is None:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.backend = None

    def barrier(self) -> None:
        if self.backend is not None:
            import torch.distributed as dist

            dist.barrier(group=self._stop_group)

    # ------------------------------------------------------------------ model

    def restrict_fast(self, fast: dict[str, bool]) -> dict[str, bool]:
        """The fast-path settings that work with DDP: no CUDA graph (DDP's gradient all-reduce
        is not captured by the trainer's graph step)."""
        return {**fast, "cuda_graph": False} if self.active else fast

    def wrap_student(self, distiller: nn.Module, sync_bn: bool) -> nn.Module:
        """Convert the student's BatchNorm (where `sync_bn`) and put it under DDP inside
        `distiller`; the guides stay plain modules, run on every rank. Returns the student
        (the unwrapped module, whose state_dict is what is saved). One rank: untouched."""
        student = distiller.student
        if not self.active:
            return student
        from torch.nn.parallel import DistributedDataParallel

        if sync_bn:
            student = convert_sync_batchnorm(student, self.backend)
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        distiller.student = DistributedDataParallel(student, device_ids=device_ids)
        return student

    # ------------------------------------------------------------------ collectives

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce `tensor` (on this rank's device) to its sum over ranks, in place."""
        if self.backend is not None:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree_stop(self, reason: str | None) -> str | None:
        """Every rank's `reason` to stop after this step (None: go on) -> one decision that all
        ranks share: stop where any rank would. Called once per step and at every epoch's end
        on every rank (one CPU all-reduce of one number), so all ranks stop after the same step."""
        if self.backend is None:
            return reason
        import torch.distributed as dist

        flag = torch.tensor([0 if reason is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._stop_group)
        if reason is None and int(flag) > 0:
            return "another rank stopped"
        return reason
