"""Speed benchmark: the project's training step against a loop written the released code's way.

`python -m dgkd_core bench` measures, in one process, images/s at batch 128 of the product's
own trainer (dgkd_core.training.trainer.Trainer, set up as `train()` sets it up, its `run_step`
per batch, the run config's defaults but for `fast.fold_guides`) on
  - the DGKD student step (teacher resnet26, TAs resnet20/resnet14, student resnet8): with the
    guides not folded (`dgkd_student_resnet26-20-14-8`), folded (BN folded, pre-cast:
    `dgkd_student_prepared_guides`) and with guide tables (`dgkd_student_tables`);
  - teacher training (resnet26, cross-entropy);
against two baselines, then the guide-table build (`guide_table_build`, images x views per
second) and (unless --skip-workflow) the demo workflow's wall time. It writes
results/benchmarks/step.json and prints a table with the device name.

The released-code baseline follows docs/paper.md ("The released code's training loop"): a torch
DataLoader over a CIFAR-style dataset decoded per sample through PIL transforms
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), num_workers =
os.cpu_count(), pin_memory, fp32, NCHW, guides in eval mode with autograd on (as released),
nn.KLDivLoss, SGD. The careful baseline is the same loop written well: the guides under
no_grad and cudnn.benchmark on; what the project gains over it is what a user gains over a
well-written loop, not only over the released one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from dgkd_core import io
from dgkd_core.config import DEFAULT_RUN_CONFIG, resolve_run_config
from dgkd_core.data import CROP_PAD, load_prepared, prepare_dataset, views_per_image
from dgkd_core.device import resolve_device
from dgkd_core.method.models import build_model

_CHAIN = {"student": "resnet8", "guides": ["resnet26", "resnet20", "resnet14"]}
# guides: "inline" (not folded), "prepared" (dgkd_core.guides.prepared: folded) or "tables".
WORKLOADS = {
    "dgkd_student_resnet26-20-14-8": {**_CHAIN, "guide_path": "inline"},
    "dgkd_student_prepared_guides": {**_CHAIN, "guide_path": "prepared"},
    "dgkd_student_tables": {**_CHAIN, "guide_path": "tables"},
    "teacher_resnet26_ce": {"student": "resnet26", "guides": [], "guide_path": "inline"},
}
BATCH_SIZE = 128


class _PilCifar(torch.utils.data.Dataset):
    """What torchvision's CIFAR10.__getitem__ does: HWC uint8 array -> PIL -> transforms."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _baseline_loader(data):
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    images = data.train_images.permute(0, 2, 3, 1).contiguous().numpy()
    dataset = _PilCifar(images, data.train_labels.numpy(), transform)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True,
                                       num_workers=os.cpu_count(), pin_memory=True,
                                       persistent_workers=True, drop_last=True)


def _baseline_img_s(data, spec, device, steps, warmup, careful: bool = False):
    """The released code's step: everything fp32 eager, guides with autograd on. careful: the
    guides under no_grad and cudnn.benchmark on (the loop written well)."""
    saved_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = careful or saved_benchmark
    try:
        return _time_baseline(data, spec, device, steps, warmup, careful)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark


def _time_baseline(data, spec, device, steps, warmup, careful):
    torch.manual_seed(0)
    student = build_model(spec["student"], data.num_classes).to(device)
    guides = [build_model(g, data.num_classes).to(device).eval() for g in spec["guides"]]
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    ce, kl = nn.CrossEntropyLoss(), nn.KLDivLoss()
    loss_defaults = DEFAULT_RUN_CONFIG["loss"]
    temperature, lam = loss_defaults["temperature"], loss_defaults["lam"]
    loader = _baseline_loader(data)
    done, t0 = 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = student(x)
            loss = (1 - lam) * ce(out, y) if guides else ce(out, y)
            for guide in guides:
                with torch.no_grad() if careful else contextlib.nullcontext():
                    g_out = guide(x)
                loss = loss + lam * kl(nn.functional.log_softmax(out / temperature, 1),
                                       nn.functional.softmax(g_out / temperature, 1)) * temperature**2
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == warmup + steps:
                break
    _sync(device)
    return steps * BATCH_SIZE / (time.perf_counter() - t0)


def _project_img_s(data_path: Path, spec: dict, device, steps, warmup, root: Path):
    """The product's own trainer (dgkd_core.training.trainer.Trainer, set up as `train()` sets
    it up) stepping the workload: its `run_step` per batch.

    Returns (images/s, the CUDA graph's fallback reason or None)."""
    # The determinism settings `train()` runs under (they cost speed on a GPU), undone after so
    # the next baseline runs the released code's way.
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    try:
        return _time_trainer(_project_trainer(data_path, spec, device, root), steps, warmup)
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, enabled, warn_only,
         torch.utils.deterministic.fill_uninitialized_memory) = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _project_trainer(data_path: Path, spec: dict, device, root: Path):
    """The workload's Trainer, set up: untrained guide checkpoints, run inline (`inline`: not
    folded), folded (`prepared`) or looked up in guide tables (`tables`) of random logits of
    the real shape and dtype ([N, 162, C], bf16 on the CUDA fast path): a lookup costs the same
    whatever they hold. λ, T and the rest are the run config's defaults."""
    from dgkd_core.guides.checkpoints import save_checkpoint
    from dgkd_core.guides.logit_tables import save_guide_table
    from dgkd_core.runtime import fast_settings
    from dgkd_core.training.trainer import Trainer

    data = load_prepared(data_path)
    root.mkdir(parents=True)
    guides, tables = [], []
    dtype = torch.bfloat16 if fast_settings(DEFAULT_RUN_CONFIG, device)["bf16"] else torch.float32
    for name in spec["guides"]:
        guide = root / f"guide_{name}.pt"
        save_checkpoint(guide, build_model(name, data.num_classes),
                        resolve_run_config({"model": name}), data.meta,
                        {"method": "nokd", "guides": [], "top1_last": 0.0})
        guides.append(str(guide))
        if spec["guide_path"] == "tables":
            rows = torch.randn(data.train_images.shape[0], views_per_image(), data.num_classes)
            save_guide_table(root / f"table_{name}.pt", rows.to(dtype), guide_checkpoint=str(guide),
                             data_meta=data.meta, normalization={"mean": data.mean,
                                                                 "std": data.std},
                             pad=CROP_PAD, build_s=0.0)
            tables.append(str(root / f"table_{name}.pt"))
    cfg = {"model": spec["student"], "method": "dgkd" if guides else "nokd", "seed": 0,
           "epochs": 1000, "batch_size": BATCH_SIZE, "device": device.type,
           "fast": {"fold_guides": spec["guide_path"] != "inline"}}
    trainer = Trainer(cfg, data_path, root / "run", guides, progress=False, guide_tables=tables)
    trainer.setup()
    return trainer


def _time_trainer(trainer, steps: int, warmup: int):
    """(images/s of `steps` of the trainer's steps after `warmup`, the CUDA graph's fallback
    reason or None). A new epoch's bookkeeping is not what is timed."""
    device = trainer.device
    lr = trainer.begin_epoch()
    batches = iter(trainer.train_loader)
    done, t0 = 0, None
    while done < warmup + steps:
        batch = next(batches, None)
        if batch is None:
            trainer.state.step = 0
            lr = trainer.begin_epoch()
            batches = iter(trainer.train_loader)
            continue
        if done == warmup:
            _sync(device)
            t0 = time.perf_counter()
        trainer.run_step(batch, lr)
        done += 1
    _sync(device)
    # why the captured step fell back to eager, if it did (None: the graph was timed)
    return (steps * BATCH_SIZE / (time.perf_counter() - t0),
            getattr(trainer.step_fn, "disabled_reason", None))


def _table_build_views_s(data, device, images: int) -> float:
    """Images x views per second of building a resnet26 teacher's table on `images` images,
    with the fast path `train()` uses (prepared guide; bf16 on CUDA)."""
    from dgkd_core.data import Normalizer
    from dgkd_core.guides.prepared import prepare_guide
    from dgkd_core.guides.logit_tables import build_guide_table
    from dgkd_core.runtime import fast_settings

    fast = fast_settings(DEFAULT_RUN_CONFIG, device)
    guide = prepare_guide(build_model("resnet26", data.num_classes).to(device).eval(), fold=True,
                          channels_last=fast["channels_last"],
                          dtype=torch.bfloat16 if fast["bf16"] else torch.float32)
    normalize = Normalizer(data.mean, data.std, device, torch.float32, fast["channels_last"])
    subset = data.train_images[:images].to(device)
    batch = 8192 if device.type == "cuda" else 1024
    build_guide_table(guide, subset[:max(1, batch // 162)], normalize, batch_size=batch,
                      bf16=fast["bf16"])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    build_guide_table(guide, subset, normalize, batch_size=batch, bf16=fast["bf16"])
    _sync(device)
    return subset.shape[0] * views_per_image() / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _demo_workflow_wall_s() -> float:
    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
                        "--directory", tmp, "--configfile", str(repo / "config" / "demo.yaml"),
                        "--profile", str(repo / "profiles" / "local"), "--quiet"],
                       check=True, cwd=repo)
        return time.perf_counter() - t0


def _median_img_s(measure, repeat: int) -> tuple[float, list[float], object]:
    """measure() -> images/s or (images/s, extra), called `repeat` times: the median images/s,
    every value in call order, and the last call's extra (None where there is none)."""
    values, extra = [], None
    for _ in range(repeat):
        got = measure()
        img_s, extra = got if isinstance(got, tuple) else (got, None)
        values.append(round(img_s, 1))
    return statistics.median(values), values, extra


def run(device: torch.device, steps: int, warmup: int, with_workflow: bool,
        train_images: int = 50_000, repeat: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # The data's content does not matter for speed; 50,000 images like CIFAR's train split.
        path = Path(tmp) / "bench.pt"
        prepare_dataset("synthetic", path, seed=0, synthetic_train=train_images,
                        synthetic_test=1_000)
        data = load_prepared(path)
        entries = _step_entries(data, path, Path(tmp), device, steps, warmup, repeat)
    build_images = 2_000 if device.type == "cuda" else 16
    views_s = _table_build_views_s(data, device, build_images)
    entries.append({"workload": "guide_table_build", "device": _device_name(device),
                    "guide": "resnet26", "images": build_images,
                    "views_per_image": views_per_image(), "views_per_s": round(views_s, 1)})
    result = {"date": datetime.date.today().isoformat(), "device": _device_name(device),
              "torch": torch.__version__, "timed_steps": steps, "repeat": repeat,
              "workloads": entries}
    if with_workflow:
        result["demo_workflow_wall_s"] = round(_demo_workflow_wall_s(), 1)
    return result


def _step_entries(data, data_path: Path, root: Path, device, steps, warmup, repeat) -> list:
    """One entry per workload: the baselines' and the product's images/s."""
    entries, baselines, runs = [], {}, iter(range(10 ** 9))
    for workload, spec in WORKLOADS.items():
        key = (spec["student"], tuple(spec["guides"]))  # the baselines run guides inline
        if key not in baselines:
            baselines[key] = (
                _median_img_s(lambda: _baseline_img_s(data, spec, device, steps, warmup), repeat),
                _median_img_s(lambda: _baseline_img_s(data, spec, device, steps, warmup,
                                                      careful=True), repeat))
        (base, base_runs, _), (careful, careful_runs, _) = baselines[key]
        proj, proj_runs, graph_fallback = _median_img_s(
            lambda: _project_img_s(data_path, spec, device, steps, warmup,
                                   root / f"project{next(runs)}"), repeat)
        entries.append({"workload": workload, "device": _device_name(device),
                        "batch_size": BATCH_SIZE, "baseline_img_s": round(base, 1),
                        "project_img_s": round(proj, 1), "ratio": round(proj / base, 2),
                        "careful_baseline_img_s": round(careful, 1),
                        "ratio_careful": round(proj / careful, 2),
                        "repeats": {"baseline": base_runs, "careful": careful_runs,
                                    "project": proj_runs},
                        "cuda_graph_fallback": graph_fallback})
    return entries


def format_table(result: dict) -> str:
    lines = [f"device: {result['device']}  (torch {result['torch']}, batch {BATCH_SIZE}, "
             f"{result['timed_steps']} timed steps, median of {result.get('repeat', 1)})",
             f"{'workload':34s} {'released img/s':>15s} {'careful img/s':>14s} "
             f"{'project img/s':>14s} {'vs released':>11s} {'vs careful':>10s}"]
    for e in result["workloads"]:
        if "views_per_s" in e:
            lines.append(f"{e['workload']:34s} {e['views_per_s']:.0f} images x views/s "
                         f"({e['guide']}, {e['images']} images)")
            continue
        lines.append(f"{e['workload']:34s} {e['baseline_img_s']:15.0f} "
                     f"{e['careful_baseline_img_s']:14.0f} {e['project_img_s']:14.0f} "
                     f"{e['ratio']:10.2f}x {e['ratio_careful']:9.2f}x")
    if "demo_workflow_wall_s" in result:
        lines.append(f"demo workflow end to end: {result['demo_workflow_wall_s']:.0f} s")
    return "\n".join(lines)


PARITY_SEEDS = (20, 31, 55)


def parity(data_path: str, *, model: str, epochs: int, device: str, out_root: Path) -> dict:
    """Top-1 of the fast path against the plain fp32 eager path over the same 3 seeds.

    Both go through `train()`; only `fast.*` differs (on a CPU `auto` means channels_last only,
    so there the two differ in memory format alone)."""
    from dgkd_core.runtime import FAST_OFF
    from dgkd_core.training.trainer import train

    runs = {"fast": [], "fp32_eager": []}
    for seed in PARITY_SEEDS:
        for label, fast in (("fast", {}), ("fp32_eager", FAST_OFF)):
            cfg = {"model": model, "seed": seed, "epochs": epochs, "device": device,
                   "schedule": {"name": "cosine"}, "optimizer": {"lr": 0.05}}
            if fast:
                cfg["fast"] = fast
            metrics = train(cfg, data_path, out_root / f"{label}-seed{seed}", progress=False)
            runs[label].append(metrics["top1_last"])
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    return {"model": model, "epochs": epochs, "seeds": list(PARITY_SEEDS), "top1": runs,
            "mean_top1": mean, "difference": mean["fast"] - mean["fp32_eager"],
            "within_0.5": abs(mean["fast"] - mean["fp32_eager"]) <= 0.5}


def main(args) -> int:
    device = resolve_device(args.device)
    if getattr(args, "stream", False):  # the ImageNet stream path's decoding (stream.py)
        from dgkd_core.bench.stream import format_stream_table, stream_bench

        result = stream_bench(args.stream_folder)
        io.atomic_write_json(result, Path(args.out).with_name("stream.json"))
        print(format_stream_table(result))
        return 0
    if args.parity:
        with tempfile.TemporaryDirectory() as tmp:
            data = args.parity_data
            if data is None:
                data = str(Path(tmp) / "synthetic.pt")
                prepare_dataset("synthetic", data, seed=0)
            result = parity(data, model=args.parity_model, epochs=args.parity_epochs,
                            device=str(device), out_root=Path(tmp))
        result["device"] = _device_name(device)
        out = Path(args.out).with_name("parity.json")
        io.atomic_write_json(result, out)
        print(json.dumps(result, indent=1))
        return 0
    if getattr(args, "fused", False):  # the fused-training workloads (dgkd_core.bench.fused)
        from dgkd_core.bench.fused import main as fused_main

        return fused_main(args, device, _device_name(device))
    steps = args.steps or (400 if device.type == "cuda" else 15)
    warmup = 20 if device.type == "cuda" else 3
    repeat = 1 if args.repeat is None else args.repeat
    if repeat < 1:
        raise SystemExit(f"bench: --repeat {repeat} must be at least 1")
    result = run(device, steps, warmup, not args.skip_workflow,
                 args.train_images or 50_000, repeat)
    io.atomic_write_json(result, Path(args.out))
    print(format_table(result))
    print(f"written: {args.out}")
    return 0
