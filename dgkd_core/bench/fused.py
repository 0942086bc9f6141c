"""Fused-training benchmark (`python -m dgkd_core bench --fused`): K same-shape trainings by each
fused mechanism against the same K trained alone, in one call.

Workloads (batch 128, synthetic CIFAR-sized data; untrained guides and random guide tables:
speed does not depend on the weights or the logits):
  - students_resnet8_k<K>, K in --k (default 1, 3, 5, 15): Table 1's resnet8 students with
    guide tables, methods DGKD, stochastic DGKD, KD (resnet26), TAKD (resnet14), NoKD for
    seed 20, then the same for seeds 31 and 55 (the first K of those 15);
  - teachers_resnet26_k<T>, T = --teachers (default 3; 0 skips it): resnet26 teachers, NoKD.

Mechanisms (--mechanisms, default all; timed in the order given, each for every workload
before the next, so a call cut short by a time cap has the first ones everywhere): `solo` (each member's steps
alone, one member after another: K solo runs), `sequential`, `cuda_streams` (CUDA only),
`horizontal` (on CUDA its stacked step replayed from a CUDA graph), `horizontal_eager` (CUDA
only: horizontal without the graph) and `horizontal_compile` (horizontal with `torch.compile`;
its compilation falls in the warm-up rounds). Every member is a real `Trainer` set up by a real `FusedTrainer`, and
what is timed is the product's own fused loop, `FusedTrainer.step_once` (dgkd_core.training.fused),
switched between mechanisms by `FusedTrainer.set_mechanism`: no copy of the training loop.

Each figure: `warmup` untimed rounds, then `steps` timed rounds (one step of each member),
repeated `repeat` times; the median of the repeats' seconds. Reported per workload and
mechanism: aggregate img/s (K x steps x 128 images / s), per-model img/s, the ratio of
aggregate img/s to the K solo runs', and `ops_per_round`: the computing aten ops one round
runs (torch.profiler; each op that computes and calls no op that does; views and
allocations left out), a device-independent proxy for the kernels it launches, which bound
small-model training on a GPU (a CUDA graph's replay runs none; for horizontal_compile,
whose inductor kernels are no aten ops, it is not counted). fused.json is rewritten after
every figure, so a call cut short by a time cap keeps what it measured; a mechanism that
raises is recorded as `failed` (its error; the traceback on stderr) and the other figures
are still taken.
"""

from __future__ import annotations

import contextlib
import datetime
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch

from dgkd_core import io
from dgkd_core.config import resolve_run_config
from dgkd_core.data import CROP_PAD, load_prepared, prepare_dataset, views_per_image
from dgkd_core.guides.checkpoints import save_checkpoint
from dgkd_core.guides.logit_tables import save_guide_table
from dgkd_core.method.models import build_model
from dgkd_core.runtime import fast_settings
from dgkd_core.training.fused import FusedTrainer

__all__ = ["MECHANISMS", "main", "run_fused", "workloads"]

MECHANISMS = ("solo", "sequential", "cuda_streams", "horizontal", "horizontal_eager",
              "horizontal_compile")
BATCH_SIZE = 128
_CHAIN = ["resnet26", "resnet20", "resnet14"]
# method, guides, keep_prob: one seed's five Table 1 students, the costliest first
_STUDENTS = [("dgkd", _CHAIN, None), ("sdgkd", _CHAIN, 0.75), ("kd", ["resnet26"], None),
             ("takd", ["resnet14"], None), ("nokd", [], None)]


def _seed(i: int) -> int:
    return (20, 31, 55)[i] if i < 3 else 100 + i


def workloads(ks: list[int], teachers: int) -> dict[str, list[tuple]]:
    """name -> members: (model, method, seed, guides, keep_prob)."""
    students = [("resnet8", method, _seed(s), guides, keep)
                for s in range(max(ks, default=0) // len(_STUDENTS) + 1)
                for method, guides, keep in _STUDENTS]
    found = {f"students_resnet8_k{k}": students[:k] for k in ks}
    if teachers > 0:
        found[f"teachers_resnet26_k{teachers}"] = [("resnet26", "nokd", _seed(i), [], None)
                                                   for i in range(teachers)]
    return found


def _guides(data_path: Path, root: Path, device: torch.device) -> dict[str, tuple[str, str]]:
    """guide model -> (an untrained checkpoint, a guide table of random logits for it), in the
    dtype training reads (bf16 where the fast path is, float32 otherwise)."""
    data = load_prepared(data_path)
    meta = data.meta
    fast = fast_settings(resolve_run_config({"model": "resnet26", "device": device.type}),
                         device)
    dtype = torch.bfloat16 if fast["bf16"] else torch.float32
    gen = torch.Generator().manual_seed(0)
    files = {}
    for name in _CHAIN:
        checkpoint, table_path = root / f"guide_{name}.pt", root / f"table_{name}.pt"
        save_checkpoint(checkpoint, build_model(name, int(meta["num_classes"])),
                        resolve_run_config({"model": name}), meta,
                        {"method": "nokd", "guides": [], "top1_last": 0.0})
        table = torch.randn(int(meta["num_train"]), views_per_image(), int(meta["num_classes"]),
                            generator=gen).to(dtype)
        save_guide_table(table_path, table, guide_checkpoint=str(checkpoint), data_meta=meta,
                         normalization={"mean": data.mean, "std": data.std}, pad=CROP_PAD,
                         build_s=0.0)
        files[name] = (str(checkpoint), str(table_path))
    return files


def _group(members: list[tuple], data_path: Path, root: Path, device: torch.device,
           guides: dict) -> FusedTrainer:
    """The members as the product's fused group, set up (sequential to start with)."""
    specs = []
    for i, (model, method, seed, guide_models, keep_prob) in enumerate(members):
        cfg = {"model": model, "method": method, "seed": seed, "epochs": 1000,
               "batch_size": BATCH_SIZE, "device": device.type, "optimizer": {"lr": 0.1},
               "loss": {"keep_prob": keep_prob}}
        specs.append({"config": cfg, "data": data_path, "out_dir": root / f"member{i}",
                      "guides": [guides[g][0] for g in guide_models],
                      "guide_tables": [guides[g][1] for g in guide_models]})
    fused = FusedTrainer(specs, progress=False, mechanism="sequential")
    fused.setup()
    return fused


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fused: FusedTrainer, phases: list[list[int]], steps: int, warmup: int,
             around=contextlib.nullcontext) -> float:
    """Seconds of `steps` rounds of `fused.step_once` over each phase's members (after
    `warmup` untimed rounds), the phases one after another; each member starts an epoch at
    step 0 (untimed) that outlasts the rounds. around(): entered around each timed round."""
    device, total = fused.members[0].device, 0.0
    for stepping in phases:
        lrs = {}
        for i in stepping:
            fused.members[i].state.step = 0
            lrs[i] = fused.members[i].begin_epoch()
        fused.streams.fork(stepping)
        batches = {i: fused.epoch_batches(i) for i in stepping}
        live = list(stepping)
        for n in range(warmup + steps):
            if n == warmup:
                fused.streams.join(stepping)
                _sync(device)
                start = time.perf_counter()
            with around() if n >= warmup else contextlib.nullcontext():
                fused.step_once(live, batches, lrs)
        fused.streams.join(stepping)
        _sync(device)
        total += time.perf_counter() - start
        assert live == stepping, "an epoch ran out inside the timed rounds"
    return total


def _skip_reason(mechanism: str, device: torch.device) -> str | None:
    if mechanism == "cuda_streams" and device.type != "cuda":
        return "cuda_streams needs CUDA (on a CPU there are no streams to overlap)"
    if mechanism == "horizontal_eager" and device.type != "cuda":
        return "horizontal_eager is horizontal without its CUDA graph: the same off CUDA"
    if mechanism == "horizontal_compile" and not hasattr(torch, "compile"):
        return f"this torch ({torch.__version__}) has no torch.compile"
    return None


def _phases(fused: FusedTrainer, mechanism: str) -> list[list[int]]:
    """The members stepping together: one at a time for solo, else all."""
    k = len(fused.members)
    return [[i] for i in range(k)] if mechanism == "solo" else [list(range(k))]


def _measure(fused: FusedTrainer, mechanism: str, steps: int, warmup: int,
             repeat: int) -> list[float]:
    """Each repeat's seconds for the members by `mechanism`."""
    fused.set_mechanism({"solo": "sequential", "horizontal_compile": "horizontal",
                         "horizontal_eager": "horizontal"}.get(mechanism, mechanism),
                        compile=mechanism == "horizontal_compile",
                        cuda_graph=mechanism != "horizontal_eager")
    return [_seconds(fused, _phases(fused, mechanism), steps, warmup) for _ in range(repeat)]


# aten ops that only make views, allocate or read a scalar: no kernel of their own
_NOT_COMPUTING = frozenset(f"aten::{name}" for name in (
    "empty empty_strided empty_like as_strided view view_as _reshape_alias reshape _unsafe_view "
    "expand expand_as permute t transpose unsqueeze squeeze select slice narrow split unbind "
    "detach alias lift_fresh result_type resize_ set_ item _local_scalar_dense is_nonzero "
    "flatten movedim contiguous to _to_copy").split())
_ROUND = "bench_round"


def _ops_per_round(fused: FusedTrainer, mechanism: str) -> int | None:
    """The computing aten ops (leaf ops, _NOT_COMPUTING left out) of one round of the members
    by `mechanism` (already set by _measure), after one untimed round; None for
    horizontal_compile."""
    if mechanism == "horizontal_compile":
        return None
    from torch.profiler import ProfilerActivity, profile, record_function

    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _seconds(fused, _phases(fused, mechanism), 1, 1,
                     around=lambda: record_function(_ROUND))
    except Exception:  # noqa: BLE001 - the timing stands without the count
        traceback.print_exc()
        return None

    def in_round(event) -> bool:
        while event is not None and event.name != _ROUND:
            event = event.cpu_parent
        return event is not None

    return sum(1 for e in prof.events() if _lowest_computing(e) and in_round(e))


def _lowest_computing(event) -> bool:
    """An aten op that computes (not in _NOT_COMPUTING) and calls no op that does: the one
    that runs the kernel (aten::index, whose children only allocate, counts; aten::linear,
    which calls aten::addmm, does not)."""
    return (event.name.startswith("aten::") and event.name not in _NOT_COMPUTING
            and not any(_lowest_computing(child) for child in event.cpu_children))


def _entry(workload: str, members: list[tuple], mechanism: str, runs_s: list[float],
           steps: int, ops: int | None) -> dict:
    k = len(members)
    img_s = steps * BATCH_SIZE * k / statistics.median(runs_s)
    return {"workload": workload, "model": members[0][0], "members": k, "mechanism": mechanism,
            "aggregate_img_s": round(img_s, 1), "per_model_img_s": round(img_s / k, 1),
            "ratio_to_solo": None, "ops_per_round": ops,
            "repeats_s": [round(s, 4) for s in runs_s]}


def run_fused(device: torch.device, steps: int, warmup: int, *, ks=(1, 3, 5, 15),
              teachers: int = 3, mechanisms=MECHANISMS, repeat: int = 3,
              train_images: int = 50_000, report=None) -> list[dict]:
    """One entry per mechanism and workload, mechanism by mechanism in the order given, so
    that a call cut short has the first mechanisms of every workload (a skipped one: its
    `skipped` reason). report: called with the entries so far after each one."""
    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown:
        raise SystemExit(f"bench --fused: unknown mechanism {unknown[0]!r}; use "
                         f"{', '.join(MECHANISMS)}")
    entries: list[dict] = []
    # every timed round within one epoch: no epoch end (evaluation, saving) inside the timing
    train_images = max(train_images, (warmup + steps) * BATCH_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "bench.pt"
        prepare_dataset("synthetic", data_path, seed=0, synthetic_train=train_images,
                        synthetic_test=BATCH_SIZE)
        guides = _guides(data_path, Path(tmp), device)
        groups: dict[str, FusedTrainer] = {}  # set up at first use: the first figure sooner
        for mechanism in mechanisms:
            for workload, members in workloads(list(ks), teachers).items():
                if workload not in groups:
                    groups[workload] = _group(members, data_path, Path(tmp) / workload, device,
                                              guides)
                entries.append(_one(groups[workload], workload, members, mechanism, steps,
                                    warmup, repeat))
                _fill_ratios(entries)
                if report is not None:
                    report(entries)
    return entries


def _fill_ratios(entries: list[dict]) -> None:
    """Each measured entry's ratio of aggregate img/s to its workload's solo runs (None until
    those are measured)."""
    solo = {e["workload"]: e["aggregate_img_s"] for e in entries
            if e["mechanism"] == "solo" and "aggregate_img_s" in e}
    for e in entries:
        if "aggregate_img_s" in e and e["mechanism"] != "solo" and e["workload"] in solo:
            e["ratio_to_solo"] = round(e["aggregate_img_s"] / solo[e["workload"]], 2)


def _one(fused, workload, members, mechanism, steps, warmup, repeat) -> dict:
    """The entry of one mechanism on one workload: measured, `skipped` (cannot run here) or
    `failed` (raised: its traceback goes to stderr, and the other figures are still taken,
    since a GPU window is too short to lose them to one mechanism)."""
    head = {"workload": workload, "model": members[0][0], "members": len(members),
            "mechanism": mechanism}
    reason = _skip_reason(mechanism, fused.members[0].device)
    if reason is not None:
        return {**head, "skipped": reason}
    try:
        runs_s = _measure(fused, mechanism, steps, warmup, repeat)
    except Exception as err:  # noqa: BLE001 - reported in the entry, not fatal
        traceback.print_exc()
        lines = str(err).strip().splitlines() or [""]
        return {**head, "failed": f"{type(err).__name__}: {lines[0][:300]}"}
    return _entry(workload, members, mechanism, runs_s, steps, _ops_per_round(fused, mechanism))


def format_table(result: dict) -> str:
    lines = [f"device: {result['device']}  (torch {result['torch']}, batch {BATCH_SIZE}, "
             f"{result['timed_steps']} timed rounds after {result['warmup']}, median of "
             f"{result['repeat']})",
             f"{'workload':26s} {'K':>3s} {'mechanism':19s} {'aggregate img/s':>16s} "
             f"{'per-model img/s':>16s} {'vs solo':>8s} {'ops/round':>10s}"]
    for e in result["workloads"]:
        head = f"{e['workload']:26s} {e['members']:3d} {e['mechanism']:19s}"
        if "skipped" in e:
            lines.append(f"{head} skipped: {e['skipped']}")
            continue
        if "failed" in e:
            lines.append(f"{head} FAILED: {e['failed']}")
            continue
        ratio = "" if e["ratio_to_solo"] is None else f"{e['ratio_to_solo']:.2f}x"
        ops = "" if e.get("ops_per_round") is None else str(e["ops_per_round"])
        lines.append(f"{head} {e['aggregate_img_s']:16.1f} {e['per_model_img_s']:16.1f} "
                     f"{ratio:>8s} {ops:>10s}")
    return "\n".join(lines)


def main(args, device: torch.device, device_name: str) -> int:
    """`bench --fused` (the bench command's args) on `device`, named `device_name` in the
    result: writes fused.json next to --out after every figure, prints the table."""
    steps = args.steps or (50 if device.type == "cuda" else 5)
    warmup = 5 if device.type == "cuda" else 2
    repeat = 3 if args.repeat is None else args.repeat
    ks = [int(k) for k in str(args.k).split(",") if k.strip()]
    mechanisms = (MECHANISMS if not args.mechanisms
                  else tuple(m.strip() for m in args.mechanisms.split(",")))
    if repeat < 1 or steps < 1 or any(k < 1 for k in ks):
        raise SystemExit("bench --fused: --repeat, --steps and each --k must be at least 1")
    out = Path(args.out).with_name("fused.json")
    result = {"date": datetime.date.today().isoformat(), "device": device_name,
              "torch": torch.__version__, "timed_steps": steps, "warmup": warmup,
              "repeat": repeat, "batch_size": BATCH_SIZE, "workloads": []}

    def report(entries: list[dict]) -> None:
        result["workloads"] = entries
        io.atomic_write_json(result, out)
        e = entries[-1]
        print(e["workload"], e["mechanism"],
              e.get("aggregate_img_s", e.get("skipped", e.get("failed"))), flush=True)

    run_fused(device, steps, warmup, ks=ks, teachers=args.teachers, mechanisms=mechanisms,
              repeat=repeat, report=report,
              train_images=args.train_images or (10_000 if device.type == "cuda" else 0))
    print(format_table(result))
    print(f"written: {out}")
    return 0
