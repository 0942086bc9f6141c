"""Fused-training benchmark: K models stepped as one fused group against the same K trained one
after another, in one call (`python -m dgkd_core bench --fused`).

Workloads (batch 128, synthetic CIFAR-sized data, untrained guides: speed does not depend on
the weights):
  - fused_students_resnet8_k5: the five resnet8 students of one seed (NoKD; KD from resnet26;
    TAKD from resnet14; DGKD and stochastic DGKD from resnet26, resnet20, resnet14);
  - fused_seeds_resnet26_k3: the resnet26 teacher for three seeds.
The members are the product's fused group (dgkd_core.training.fused.FusedTrainer, each member a
`Trainer` set up as `train()` sets it up), stepped through the group's own step
(`FusedTrainer.step_member`): "solo" times each member's steps alone, "fused" times rounds of
one step of each member (each on its own CUDA stream on a GPU), and "horizontal" times rounds of
the members stacked into one model (the group's dgkd_core.training.horizontal step: one step of
K-times-wider kernels).
Reported: aggregate img/s, per-model img/s and their ratio to the K solo runs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from dgkd_core.config import resolve_run_config
from dgkd_core.data import load_prepared, prepare_dataset
from dgkd_core.guides.checkpoints import save_checkpoint
from dgkd_core.method.models import build_model
from dgkd_core.training.fused import FusedTrainer

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


def _group(workload: str, data_path: Path, root: Path, device: str,
           mechanism: str) -> FusedTrainer:
    """The workload's members as the product's fused group (dgkd_core.training.fused), set up."""
    guides = _guide_files(data_path, root)
    specs = []
    for i, (model, method, seed, guide_models, keep_prob) in enumerate(FUSED_WORKLOADS[workload]):
        cfg = {"model": model, "method": method, "seed": seed, "epochs": 1000,
               "batch_size": BATCH_SIZE, "device": device, "optimizer": {"lr": 0.1},
               "loss": {"keep_prob": keep_prob}}
        specs.append({"config": cfg, "data": data_path, "out_dir": root / f"member{i}",
                      "guides": [guides[g] for g in guide_models]})
    group = FusedTrainer(specs, progress=False, mechanism=mechanism)
    group.setup()
    return group


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless_batches(member) -> Iterator:
    """A set-up member's batches, epoch after epoch; a new epoch's bookkeeping is not what is
    timed, and its epoch count stays (so does its lr). Call `begin_epoch()` first."""
    while True:
        yield from member.train_loader
        member.state.step = 0
        member.begin_epoch()


def _time_horizontal(group: FusedTrainer, steps: int, warmup: int) -> float:
    """Seconds for `steps` rounds of the members stepped as one stack (dgkd_core.training.horizontal)."""
    device = group.members[0].device
    lrs = {i: m.begin_epoch() for i, m in enumerate(group.members)}
    batches = [_endless_batches(m) for m in group.members]
    for n in range(warmup + steps):
        if n == warmup:
            _sync(device)
            t0 = time.perf_counter()
        group.horizontal.step({i: next(b) for i, b in enumerate(batches)}, lrs)
    _sync(device)
    return time.perf_counter() - t0


def _time(group: FusedTrainer, steps: int, warmup: int, fused: bool) -> float:
    """Seconds for `steps` steps of every member through the group's own step
    (FusedTrainer.step_member): rounds of one step each (fused), or each member's steps on
    their own, one member after another (solo)."""
    members, streams = group.members, group.streams
    device = members[0].device
    lrs = [m.begin_epoch() for m in members]
    batches = [_endless_batches(m) for m in members]
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
                group.step_member(i, batches[i], lrs[i])
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
            images = steps * BATCH_SIZE * k

            def group(name, mechanism):
                return _group(workload, data_path, root / name, str(device), mechanism)

            solo_s = _time(group("solo", "sequential"), steps, warmup, fused=False)
            fused_s = _time(group("fused", mechanism), steps, warmup, fused=True)
            horizontal_s = _time_horizontal(group("horizontal", "horizontal"), steps, warmup)
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
