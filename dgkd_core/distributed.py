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

from dgkd_core.config import ConfigError

__all__ = ["AllReduceBatchNorm2d", "Distributed", "convert_sync_batchnorm"]

log = logging.getLogger("dgkd_core.distributed")

# Seconds a collective may wait for the other ranks (process group start included) before the
# run fails, rather than hanging a job until its time limit.
COLLECTIVE_TIMEOUT_S = 1800


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


def convert_sync_batchnorm(module: nn.Module, backend: str | None) -> nn.Module:
    """`module` with every BatchNorm2d synchronised over the ranks: torch's SyncBatchNorm on
    NCCL; on gloo (CPU, which SyncBatchNorm refuses) `AllReduceBatchNorm2d`. Parameters and
    buffers are the same tensors, so an optimizer built before still holds them."""
    if backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, AllReduceBatchNorm2d.from_batchnorm(child))
        else:
            convert_sync_batchnorm(child, backend)
    return module


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's, summed over the ranks with
    all-reduces, as one process computes them over the whole batch: torch's SyncBatchNorm, for
    gloo (CPU, which SyncBatchNorm refuses); on GPUs SyncBatchNorm itself is used.

    input [B,C,H,W] -> same shape. Evaluation uses the running statistics, as BatchNorm2d."""

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "AllReduceBatchNorm2d":
        out = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device=bn.weight.device if bn.affine else None)
        if bn.affine:
            out.weight, out.bias = bn.weight, bn.bias
        out.running_mean, out.running_var = bn.running_mean, bn.running_var
        out.num_batches_tracked = bn.num_batches_tracked
        out.train(bn.training)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        weight = self.weight if self.affine else torch.ones(x.shape[1], dtype=x.dtype)
        bias = self.bias if self.affine else torch.zeros(x.shape[1], dtype=x.dtype)
        out, mean, var, count = _GlobalBatchNorm.apply(x, weight, bias, self.eps)
        if self.track_running_stats:
            self._update_running_stats(mean, var, count)
        return out

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        """As F.batch_norm does: the unbiased variance, momentum (None: a cumulative average)."""
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
            self.running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
            self.running_var.mul_(1.0 - factor).add_(var * (n / max(n - 1.0, 1.0)),
                                                     alpha=factor)


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation over the images of every rank: x [B,C,H,W] (this rank's) -> (out
    [B,C,H,W], mean [C], biased var [C], global count). Sums are taken in float64, and the
    backward is BatchNorm's closed form (SyncBatchNorm's): two summed per-channel reductions,
    not autograd through the statistics, whose terms cancel badly in float32."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        import torch.distributed as dist

        dims = (0, 2, 3)
        stats = torch.cat([x.sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)])
        dist.all_reduce(stats)
        count = float(stats[-1])
        mean = stats[:-1] / count
        centred = x - mean.to(x.dtype)[None, :, None, None]
        var = centred.square().sum(dims, dtype=torch.float64)
        dist.all_reduce(var)
        var = var / count
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        normed = centred * invstd[None, :, None, None]
        ctx.save_for_backward(normed, invstd, weight)
        ctx.count = count
        ctx.mark_non_differentiable(mean, var)
        out = normed * weight[None, :, None, None] + bias[None, :, None, None]
        return out, mean.to(x.dtype), var.to(x.dtype), count

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var, _grad_count):
        import torch.distributed as dist

        normed, invstd, weight = ctx.saved_tensors
        dims = (0, 2, 3)
        sum_g = grad_out.sum(dims, dtype=torch.float64)
        sum_gn = (grad_out * normed).sum(dims, dtype=torch.float64)
        grad_weight, grad_bias = sum_gn.to(weight.dtype), sum_g.to(weight.dtype)  # this rank's
        totals = torch.stack([sum_g, sum_gn])
        dist.all_reduce(totals)  # the gradient of every rank's loss reaches the statistics
        mean_g = (totals[0] / ctx.count).to(normed.dtype)[None, :, None, None]
        mean_gn = (totals[1] / ctx.count).to(normed.dtype)[None, :, None, None]
        grad_x = (grad_out - mean_g - normed * mean_gn) * (invstd * weight)[None, :, None, None]
        return grad_x, grad_weight, grad_bias, None
