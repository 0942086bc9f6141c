"""The fused trainer's `horizontal` mechanism (dgkd_core.training.horizontal): members of one architecture
stacked into one model end at their solo weights (float rounding apart), resume as a straight
group does, write ordinary single-model outputs, and members of different architectures are
refused.

Float32 training of these small networks is chaotic: a 1e-7 change of the weights grows to
1e-4 within 8 steps at lr 0.05, and a grouped convolution sums in another order than a
convolution alone. So the end-to-end runs are "a few steps" (batch 64 on 128 training
images: 2 steps an epoch, 2 epochs, lr 0.005) compared to 1e-5, and the stacked step's maths
is pinned tighter in float64 (`test_stacked_steps_in_float64_equal_solo_steps`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import dgkd_core.training.trainer as train_mod
from dgkd_core.guides.checkpoints import load_checkpoint
from dgkd_core.errors import ConfigError, TrainingError
from dgkd_core.training.fused import FusedTrainer, train_fused
from dgkd_core.training.horizontal import HorizontalGroup, stacked_sgd_
from dgkd_core.method.models import build_model
from dgkd_core.training.trainer import EXIT_RESUMABLE, Trainer, TrainingInterrupted, train
from helpers import assert_no_outputs, history_without_timing, stopped_points
from horizontal_members import (STEP_LR, config, max_difference, members,  # noqa: F401
                                second_guide, small_data, teacher, teacher_table)

REPO = Path(__file__).resolve().parents[3]


def run_files(specs: list[dict], data: Path, root: Path) -> list[str]:
    files = []
    for spec in specs:
        path = root / f"{spec['out_dir'].name}.yaml"
        path.write_text(yaml.safe_dump({
            **spec["config"], "data": str(data), "out_dir": str(spec["out_dir"]),
            "guides": [str(g) for g in spec.get("guides", [])],
            **({"guide_tables": [str(t) for t in spec["guide_tables"]]}
               if "guide_tables" in spec else {})}))
        files.append(str(path))
    return files


def test_train_group_horizontal_ends_each_member_at_its_solo_weights(
        small_data, teacher, second_guide, teacher_table, tmp_path):
    specs = members(tmp_path / "group", teacher, second_guide, teacher_table)
    cmd = [sys.executable, "-m", "dgkd_core", "train-group", "--mechanism", "horizontal",
           *[arg for f in run_files(specs, small_data, tmp_path) for arg in ("--member", f)]]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    for spec in specs:
        out = spec["out_dir"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["fused_group"] == {"members": [str(s["out_dir"]) for s in specs],
                                          "mechanism": "horizontal"}
        assert not (out / "resume.pt").exists()
        solo = tmp_path / "solo" / out.name
        train(spec["config"], small_data, solo, spec.get("guides", ()), progress=False,
              guide_tables=spec.get("guide_tables", ()))
        assert max_difference(solo, out) < 1e-5, out.name
        group_rows, solo_rows = history_without_timing(out), history_without_timing(solo)
        assert [r["lr"] for r in group_rows] == [r["lr"] for r in solo_rows]
        # an ordinary single model: loads strictly into the registry's model
        checkpoint = load_checkpoint(out / "model.pt")
        model = build_model(checkpoint["model"], checkpoint["num_classes"],
                            dataset=checkpoint["dataset"])
        model.load_state_dict(checkpoint["state_dict"])
        assert (out / "model.pt").stat().st_size < 1.2 * (solo / "model.pt").stat().st_size
    assert metrics["guide_tables"] == [True]
    lrs = [float(r["lr"]) for r in history_without_timing(specs[0]["out_dir"])]
    assert lrs == pytest.approx([0.005, 0.001])  # the milestone was crossed
    # the members did differ: a mix-up of their slices would not go unseen
    assert max_difference(specs[0]["out_dir"], specs[1]["out_dir"]) > 1e-2


def test_stopped_horizontal_group_resumes_to_the_straight_result(
        small_data, teacher, second_guide, tmp_path, monkeypatch):
    """SIGTERM during epoch 2's first step, when the 1-epoch member has finished (the stack
    is down to two members): every member saves its resume state; the restart ends
    bit-identical to an uninterrupted horizontal group."""
    def specs_at(root):
        specs = [{**s, "data": small_data} for s in members(root, teacher, second_guide)]
        specs[1]["config"]["epochs"] = 1
        return specs

    reference = specs_at(tmp_path / "straight")
    train_fused(reference, progress=False, mechanism="horizontal")

    real_count = train_mod.Trainer.count_step
    calls = {"n": 0}

    def count_then_signal(self, terms, batch_size, finite):
        calls["n"] += 1
        if calls["n"] == 3 * 2 + 1:  # epoch 1 for all three, then epoch 2's first step
            os.kill(os.getpid(), signal.SIGTERM)
        return real_count(self, terms, batch_size, finite)

    stopped = specs_at(tmp_path / "stopped")
    monkeypatch.setattr(train_mod.Trainer, "count_step", count_then_signal)
    with pytest.raises(TrainingInterrupted) as caught:
        train_fused(stopped, progress=False, mechanism="horizontal")
    assert caught.value.code == EXIT_RESUMABLE and "SIGTERM" in caught.value.reason
    monkeypatch.setattr(train_mod.Trainer, "count_step", real_count)
    assert stopped_points(stopped) == [(1, 1), (1, 0), (1, 1)]

    resumed = train_fused(stopped, progress=False, mechanism="horizontal")
    for ref, spec, metrics in zip(reference, stopped, resumed):
        assert max_difference(ref["out_dir"], spec["out_dir"]) == 0.0
        assert history_without_timing(ref["out_dir"]) == history_without_timing(spec["out_dir"])
        assert metrics["resumed"] is True and metrics["fused_group"]["mechanism"] == "horizontal"
        assert not (spec["out_dir"] / "resume.pt").exists()


def test_members_of_different_architectures_are_refused(small_data, tmp_path):
    specs = [{"config": config(seed=3), "data": small_data, "out_dir": tmp_path / "a"},
             {"config": config(seed=4, model="plane3"), "data": small_data,
              "out_dir": tmp_path / "b"}]
    with pytest.raises(ConfigError, match="one architecture") as caught:
        train_fused(specs, progress=False, mechanism="horizontal")
    assert "\n" not in str(caught.value) and "sequential" in str(caught.value)
    for spec in specs:
        assert_no_outputs(spec["out_dir"])
        assert not (spec["out_dir"] / "resume.pt").exists()


def _set_up(specs: list[dict], data: Path, root: Path) -> list[Trainer]:
    """The members as Trainers, set up, their models (students and guides) in float64."""
    trainers = []
    for spec in specs:
        trainer = Trainer(spec["config"], data, root / spec["out_dir"].name,
                          spec.get("guides", ()), progress=False,
                          guide_tables=spec.get("guide_tables", ()))
        trainer.setup()
        trainer.distiller.double()
        trainers.append(trainer)
    return trainers


def test_stacked_steps_in_float64_equal_solo_steps(small_data, teacher, second_guide,
                                                   teacher_table, tmp_path):
    """Four steps of four members (their own seeds, lrs, guides or guide table, and keep
    masks) in float64, as one stack: each member's weights, BatchNorm statistics and momentum
    buffers are its solo steps' to 1e-7. The model's maths is float64; the loss is float32
    in both, and the stacked loss (dgkd_core.training.stacked_loss) sums in another order than
    each member's own, so its float32 rounding differs: measured 7e-9 at most here (1e-10 for
    the members at lr 0.005). At lr 0.05 a rounding difference grows to 2e-5 in 4 steps (the
    chaos of float training), so the faster member runs at 0.02. A wrong setting or formula
    (λ, T, a convention, a keep mask) differs by 1e-4 or more."""
    specs = members(tmp_path, teacher, second_guide, teacher_table)
    specs[1]["config"]["optimizer"] = {"lr": 0.02}  # the lrs differ within a step
    solo = _set_up(specs, small_data, tmp_path / "solo")
    stacked = _set_up(specs, small_data, tmp_path / "stacked")
    group = HorizontalGroup(stacked)
    lrs = {i: m.begin_epoch() for i, m in enumerate(stacked)}
    solo_lrs = [m.begin_epoch() for m in solo]
    stacks = set()
    as64 = lambda batch: (batch[0].double(), *batch[1:])  # noqa: E731
    for epoch in range(2):  # 2 steps an epoch; epoch 2: its batches, epoch 1's lrs, masks
        for member in (*solo, *stacked):
            member.train_loader.set_epoch(epoch)
            member.state.step = 0
        solo_batches = [iter(m.train_loader) for m in solo]
        stacked_batches = [iter(m.train_loader) for m in stacked]
        for _ in range(2):
            for member, batches, lr in zip(solo, solo_batches, solo_lrs):
                member.run_step(as64(next(batches)), lr)
            group.step({i: as64(next(b)) for i, b in enumerate(stacked_batches)}, lrs)
            stacks.add(id(group.stacked))  # one stack: members with and without views
    assert len(stacks) == 1
    group.write_back()
    for alone, fused in zip(solo, stacked):
        a, b = alone.distiller.student.state_dict(), fused.distiller.student.state_dict()
        print("DIFF", max(float((a[k].double() - b[k].double()).abs().max()) for k in a))
        for key in a:
            assert torch.allclose(a[key].double(), b[key].double(), rtol=0, atol=1e-7), key
        for p, q in zip(alone.distiller.student.parameters(),
                        fused.distiller.student.parameters()):
            assert torch.allclose(alone.optimizer.state[p]["momentum_buffer"],
                                  fused.optimizer.state[q]["momentum_buffer"],
                                  rtol=0, atol=1e-6)


def test_a_stacked_members_non_finite_loss_is_its_own(small_data, teacher, second_guide,
                                                       tmp_path):
    """The group tests every member's total at once: the member whose loss is NaN fails,
    naming its step, and the others record a finite step."""
    specs = members(tmp_path, teacher, second_guide)
    stacked = _set_up(specs, small_data, tmp_path / "stacked")
    with torch.no_grad():
        next(stacked[1].distiller.student.parameters()).fill_(float("nan"))
    group = HorizontalGroup(stacked)
    lrs = {i: m.begin_epoch() for i, m in enumerate(stacked)}
    batches = {i: next(group.epoch_batches(i)) for i in range(len(stacked))}
    batches = {i: (b[0].double(), *b[1:]) for i, b in batches.items()}
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 1, step 1 "):
        group.step(batches, lrs)
    group.write_back()  # the stacked bookkeeping too: each member's own, as a solo run's
    assert stacked[0].state.step == 1 and int(stacked[0].state.bad_step) == -1
    assert int(stacked[1].state.bad_step) == 0


def test_a_groups_members_share_one_copy_of_the_data_and_of_each_table(
        small_data, teacher, teacher_table, tmp_path):
    """Two KD members reading one teacher table: one placed table and one device copy of each
    data tensor for the group, not one per member (a 15-student CIFAR-100 group would else
    hold 24 copies of 1.6 GB tables); a copy's owner made by `replace` (the validation
    split) starts its own."""
    from dataclasses import replace

    specs = [{"config": config(seed=seed, method="kd"), "data": small_data,
              "out_dir": tmp_path / f"kd{seed}", "guides": [teacher],
              "guide_tables": [teacher_table]} for seed in (3, 4)]
    group = FusedTrainer(specs, progress=False, mechanism="horizontal")
    group.setup()
    a, b = group.members
    assert a.data is b.data and a.distiller.tables[0] is b.distiller.tables[0]
    assert a.train_loader.images is b.train_loader.images
    assert group.horizontal.together  # so their batches are made as one
    keys = list(a.data.device_copies)
    assert sum(k[0] == "guide_table" for k in keys) == 1
    assert sorted(k[0] for k in keys if k[0] != "guide_table") == [
        "test_images", "test_labels", "train_images", "train_labels"]
    meta = torch.device("meta")
    assert a.data.on_device("train_images", meta) is a.data.on_device("train_images", meta)
    assert replace(a.data, path=None).device_copies == {}
    for member in group.members:
        member.release_folder()


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("lrs", [(0.1, 0.1, 0.1), (0.1, 0.02, 0.1)])
def test_stacked_sgd_is_each_members_own_sgd(nesterov, lrs):
    """Three SGD steps of torch.optim.SGD (foreach) per member against `stacked_sgd_` on the
    stacked tensors: equal bit for bit, momentum buffers included."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,)]
    own = [[torch.randn(s, generator=gen, requires_grad=True) for s in shapes] for _ in lrs]
    optimizers = [torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=nesterov,
                                  foreach=True) for p, lr in zip(own, lrs)]
    stacked = [torch.stack([p[j].detach() for p in own]) for j in range(len(shapes))]
    bufs = [torch.zeros_like(s) for s in stacked]
    for _ in range(3):
        grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in lrs]
        for params, opt, g in zip(own, optimizers, grads):
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        stacked_sgd_(stacked, [torch.stack([g[j] for g in grads]) for j in range(len(shapes))],
                     bufs, list(lrs), momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    for j in range(len(shapes)):
        for k, (params, opt) in enumerate(zip(own, optimizers)):
            assert torch.equal(stacked[j][k], params[j].detach())
            assert torch.equal(bufs[j][k], opt.state[params[j]]["momentum_buffer"])


def test_stacked_resnet8_steps_in_float64_equal_solo_steps(small_data, tmp_path):
    """The Table 1 students' architecture (shortcuts, a global average pool run as a mean):
    two steps of two NoKD members at their own lrs, stacked, equal solo steps to 1e-10."""
    specs = [{"config": config(model="resnet8", seed=3), "out_dir": tmp_path / "a"},
             {"config": config(model="resnet8", seed=4, optimizer={"lr": 0.05}),
              "out_dir": tmp_path / "b"}]
    solo = _set_up(specs, small_data, tmp_path / "solo")
    stacked = _set_up(specs, small_data, tmp_path / "stacked")
    group = HorizontalGroup(stacked)
    lrs = {i: m.begin_epoch() for i, m in enumerate(stacked)}
    solo_lrs = [m.begin_epoch() for m in solo]
    solo_batches = [iter(m.train_loader) for m in solo]
    stacked_batches = [iter(m.train_loader) for m in stacked]
    for _ in range(2):
        for member, batches, lr in zip(solo, solo_batches, solo_lrs):
            x, y = next(batches)
            member.run_step((x.double(), y), lr)
        group.step({i: (b[0].double(), b[1]) for i, b in
                    ((i, next(it)) for i, it in enumerate(stacked_batches))}, lrs)
    group.write_back()
    for alone, fused in zip(solo, stacked):
        a, b = alone.distiller.student.state_dict(), fused.distiller.student.state_dict()
        print("DIFF", max(float((a[k].double() - b[k].double()).abs().max()) for k in a))
        for key in a:
            assert torch.allclose(a[key].double(), b[key].double(), rtol=0, atol=1e-10), key


def test_compile_is_opt_in_and_wraps_the_stacked_forward(small_data, tmp_path):
    """Off by default; on, the stacked forward goes through torch.compile (compiled lazily, at
    its first call: nothing compiles here)."""
    specs = [{"config": config(seed=3), "out_dir": tmp_path / "a"},
             {"config": config(seed=4), "out_dir": tmp_path / "b"}]
    trainers = _set_up(specs, small_data, tmp_path)
    assert not hasattr(HorizontalGroup(trainers)._forward, "_torchdynamo_orig_callable")
    assert hasattr(HorizontalGroup(trainers, compile=True)._forward,
                   "_torchdynamo_orig_callable")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C compiler")
def test_compiled_horizontal_group_ends_near_the_eager_groups_weights(small_data, tmp_path):
    """Two members, 2 epochs of 2 steps: compiled and eager stacked steps differ by float
    rounding only (inductor fuses kernels, so sums run in another order: 1.9e-5 here on
    2026-12-04, against 2e-6 for eager horizontal against solo). About 30 s on the 2-core CPU,
    most of it compiling plane2's stacked step."""
    def specs_at(root):
        return [{"config": config(seed=3, schedule=STEP_LR), "data": small_data,
                 "out_dir": root / "a"},
                {"config": config(seed=4), "data": small_data, "out_dir": root / "b"}]

    eager, compiled = specs_at(tmp_path / "eager"), specs_at(tmp_path / "compiled")
    train_fused(eager, progress=False, mechanism="horizontal")
    train_fused(compiled, progress=False, mechanism="horizontal", compile=True)
    for a, b in zip(eager, compiled):
        assert max_difference(a["out_dir"], b["out_dir"]) < 1e-4


def test_train_group_takes_the_compile_setting():
    from dgkd_core.cli import build_parser

    args = build_parser().parse_args(["train-group", "--member", "a.yaml", "--mechanism",
                                      "horizontal", "--compile"])
    assert args.compile is True and args.mechanism == "horizontal"
    assert build_parser().parse_args(["train-group", "--member", "a.yaml"]).compile is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_horizontal_group_ends_near_its_solo_runs(small_data, teacher, second_guide,
                                                       teacher_table, tmp_path):
    """On CUDA, fp32 without the fast path (no bf16: its rounding would hide a mix-up less
    well): each member within 1e-3 of its solo run (TF32 and grouped-convolution sums apart),
    while the members differ from each other by more than 1e-2 (the CPU test)."""
    from dgkd_core.runtime import FAST_OFF

    specs = members(tmp_path / "group", teacher, second_guide, teacher_table)
    for spec in specs:
        spec["config"] = {**spec["config"], "device": "cuda", "fast": FAST_OFF}
    metrics = train_fused([{**s, "data": small_data} for s in specs], progress=False,
                          mechanism="horizontal")
    assert all(m["fused_group"]["mechanism"] == "horizontal" for m in metrics)
    for spec in specs:
        solo = tmp_path / "solo" / spec["out_dir"].name
        train(spec["config"], small_data, solo, spec.get("guides", ()), progress=False,
              guide_tables=spec.get("guide_tables", ()))
        assert max_difference(solo, spec["out_dir"]) < 1e-3, spec["out_dir"].name
