"""Fused-training benchmark: K models stepped as one fused group against the same K trained one
after another, in one call (`python -m dgkd_core bench --fused`).

Workloads (batch 128, synthetic CIFAR-sized data, untrained guides: speed does not depend on
the weights):
  - fused_students_resnet8_k5: the five resnet8 students of one seed (NoKD; KD from resnet26;
    TAKD from resnet14; DGKD and stochastic DGKD from resnet26, resnet20, resnet14);
  - fused_seeds_resnet26_k3: the resnet26 teacher for three seeds.
Each member is a real `Trainer` (dgkd_core.training.trainer) set up as `train()` sets it up; "solo" times
each member's steps alone, "fused" times rounds of one step of each member, queued as
dgkd_core.training.fused queues them (each on its own CUDA stream on a GPU), and "horizontal" times rounds
of the members stacked into one model (dgkd_core.training.horizontal: one step of K-times-wider kernels).
Reported: aggregate img/s, per-model img/s and their ratio to the K solo runs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from dgkd_core.config import resolve_run_config
from dgkd_core.data import load_prepared, prepare_dataset
from dgkd_core.guides.checkpoints import save_checkpoint
from dgkd_core.method.models import build_model
from dgkd_core.training.fused import MemberStreams
from dgkd_core.training.trainer import Trainer
from dgkd_core.training.horizontal import HorizontalGroup

__all__ = ["FUSED_WORKLOADS", "run_fused"]

_CHAIN = ["resnet26", "resnet20", "resnet14"]
# workload -> members: (model, method, seed, guides, keep_prob)
FUSED_WORKLOADS = {
    "fused_students_resnet8_k5": [
        ("resnet8", "nokd", 20, [], None),
        ("resnet8", "kd", 20, ["resnet26"], None),
        ("resnet8", "takd", 20, ["resnet14"], None),
        ("resnet8", "dgkd", 20, _CHAIN, None),
        ("resnet8", "sdgkd", 20, _CHAIN, 0.75),
    ],
    "fused_seeds_resnet26_k3": [("resnet26", "nokd", seed, [], None) for seed in (20, 31, 55)],
}
BATCH_SIZE = 128


def _guide_files(data_path: Path, root: Path) -> dict[str, str]:
    """An untrained checkpoint of each guide architecture, on this data."""
    meta = load_prepared(data_path).meta
    files = {}
    for name in _CHAIN:
        path = root / f"guide_{name}.pt"
        save_checkpoint(path, build_model(name, int(meta["num_classes"])),
                        resolve_run_config({"model": name}), meta,
                        {"method": "nokd", "guides": [], "top1_last": 0.0})
        files[name] = str(path)
    return files


def _members(workload: str, data_path: Path, root: Path, device: str) -> list[Trainer]:
    guides = _guide_files(data_path, root)
    trainers = []
    for i, (model, method, seed, guide_models, keep_prob) in enumerate(FUSED_WORKLOADS[workload]):
        cfg = {"model": model, "method": method, "seed": seed, "epochs": 1000,
               "batch_size": BATCH_SIZE, "device": device, "optimizer": {"lr": 0.1},
               "loss": {"keep_prob": keep_prob}}
        trainer = Trainer(cfg, data_path, root / f"member{i}", [guides[g] for g in guide_models],
                          progress=False)
        trainer.setup()
        trainers.append(trainer)
    return trainers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stepper:
    """Endless training steps of each member (epoch after epoch), on a given stream."""

    def __init__(self, members: list[Trainer]):
        self.members = members
        self.lrs = [m.begin_epoch() for m in members]
        self.batches = [iter(m.train_loader) for m in members]

    def batch(self, i: int):
        """Member i's next batch (a new epoch where its loader ran out)."""
        member = self.members[i]
        batch = next(self.batches[i], None)
        if batch is None:  # a new epoch: its bookkeeping is not what is timed
            member.state.step = 0
            self.lrs[i] = member.begin_epoch()
            self.batches[i] = iter(member.train_loader)
            batch = next(self.batches[i])
        return batch

    def step(self, i: int) -> None:
        self.members[i].run_step(self.batch(i), self.lrs[i])


def _time_horizontal(members, steps: int, warmup: int) -> float:
    """Seconds for `steps` rounds of the members stepped as one stack (dgkd_core.training.horizontal)."""
    device = members[0].device
    stepper, group = _Stepper(members), HorizontalGroup(members)
    for n in range(warmup + steps):
        if n == warmup:
            _sync(device)
            t0 = time.perf_counter()
        batches = {i: stepper.batch(i) for i in range(len(members))}
        group.step(batches, dict(enumerate(stepper.lrs)))
    _sync(device)
    return time.perf_counter() - t0


def _time(members, steps: int, warmup: int, streams: MemberStreams, fused: bool) -> float:
    """Seconds for `steps` steps of every member: rounds of one step each (fused), or each
    member's steps on their own, one member after another (solo)."""
    device = members[0].device
    stepper = _Stepper(members)
    order = ([list(range(len(members)))] if fused else [[i] for i in range(len(members))])
    total = 0.0
    for indices in order:
        for n in range(warmup + steps):
            if n == warmup:
                streams.join(indices)
                _sync(device)
                t0 = time.perf_counter()
            streams.fork(indices)
            for i in indices:
                with streams.on(i):
                    stepper.step(i)
        streams.join(indices)
        _sync(device)
        total += time.perf_counter() - t0
    return total


def run_fused(device: torch.device, steps: int, warmup: int,
              train_images: int = 50_000) -> list[dict]:
    """The fused workloads' entries: aggregate and per-model img/s, fused and solo."""
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "bench.pt"
        prepare_dataset("synthetic", data_path, seed=0, synthetic_train=train_images,
                        synthetic_test=1_000)
        for workload in FUSED_WORKLOADS:
            root = Path(tmp) / workload
            k = len(FUSED_WORKLOADS[workload])
            mechanism = "cuda_streams" if device.type == "cuda" else "sequential"
            streams = MemberStreams(k, mechanism)
            images = steps * BATCH_SIZE * k
            solo_s = _time(_members(workload, data_path, root / "solo", str(device)), steps,
                           warmup, MemberStreams(k, "sequential"), fused=False)
            fused_s = _time(_members(workload, data_path, root / "fused", str(device)), steps,
                            warmup, streams, fused=True)
            horizontal_s = _time_horizontal(
                _members(workload, data_path, root / "horizontal", str(device)), steps, warmup)
            entries.append({"workload": workload, "members": k, "mechanism": mechanism,
                            "batch_size": BATCH_SIZE,
                            "fused_aggregate_img_s": round(images / fused_s, 1),
                            "fused_per_model_img_s": round(images / fused_s / k, 1),
                            "solo_aggregate_img_s": round(images / solo_s, 1),
                            "ratio_to_solo": round(solo_s / fused_s, 2),
                            "horizontal_aggregate_img_s": round(images / horizontal_s, 1),
                            "horizontal_per_model_img_s": round(images / horizontal_s / k, 1),
                            "horizontal_ratio_to_solo": round(solo_s / horizontal_s, 2)})
    return entries
