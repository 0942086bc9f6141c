"""The CUDA fast path: the captured step against the eager step it replays, and the trainer's
reproducibility on a GPU. Skipped where no CUDA device is visible (CI); run on a lent GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from dgkd_core.data import prepare_dataset
from dgkd_core.method.models import build_model
from dgkd_core.runtime import FAST_OFF, make_autocast
from dgkd_core.training.distiller import Distiller
from dgkd_core.training.step import CudaGraphStep, EagerStep
from dgkd_core.training.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LOSS = {"lam": 0.5, "temperature": 4.0, "convention": "paper"}


def _eager_and_graph(autocast, seed: int = 0):
    """The same resnet8 student (one resnet14 guide) twice: once behind the eager step, once
    behind the CUDA-graph step. Returns ((distiller, optimizer, step) for each, start weights)."""
    torch.manual_seed(seed)
    student = build_model("resnet8", 10).cuda()
    guide = build_model("resnet14", 10).cuda()
    made = []
    for _ in range(2):
        distiller = Distiller(copy.deepcopy(student), [copy.deepcopy(guide)], LOSS)
        opt = torch.optim.SGD(distiller.student.parameters(), lr=0.1, momentum=0.9,
                              weight_decay=5e-4, fused=True)
        made.append((distiller, opt, EagerStep(distiller, opt, autocast, distiller.term_names)))
    d_graph, o_graph, eager_inside = made[1]
    graph = CudaGraphStep.or_fallback(eager_inside, d_graph, o_graph, torch.device("cuda"))
    assert isinstance(graph, CudaGraphStep)
    made[1] = (d_graph, o_graph, graph)
    return made, [p.detach().clone() for p in student.parameters()]


def _batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 3, 32, 32, generator=g).cuda(),
             torch.randint(0, 10, (32,), generator=g).cuda(),
             torch.tensor([float(i % 2)])) for i in range(n)]  # the guide kept, dropped, ...


@pytest.fixture
def fp32_without_tf32():
    """Full fp32 convolutions and matmuls: TF32 (on by default for cuDNN) rounds to 10 bits, and
    the captured and eager steps may pick different convolution algorithms."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield make_autocast({"bf16": False})
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _assert_same_updates(start, eager_params, graph_params, what="weights"):
    """Each tensor's change over the run agrees to 1 % of its size. A step replayed with a stale
    lr, or a warm-up step left in the weights or momentum, changes it by tens of percent."""
    for i, (s0, a, b) in enumerate(zip(start, eager_params, graph_params)):
        delta_eager, delta_graph = a.detach() - s0, b.detach() - s0
        err = (delta_graph - delta_eager).norm() / delta_eager.norm().clamp_min(1e-12)
        assert err < 1e-2, f"{what} tensor {i}: relative difference {err:.2e} of its update"


def test_graph_step_replays_the_eager_step_through_an_lr_change(fp32_without_tf32):
    ((d_eager, o_eager, eager), (d_graph, o_graph, graph)), start = \
        _eager_and_graph(fp32_without_tf32)
    # lr 0.1 for three steps, then 0.01: the second lr must reach the captured optimizer
    for i, (x, y, keep) in enumerate(_batches(6)):
        lr = 0.1 if i < 3 else 0.01
        for opt in (o_eager, o_graph):
            for group in opt.param_groups:
                group["lr"] = lr
        t_eager = eager(x, y, keep, lr)
        t_graph = graph(x, y, keep, lr)
        assert graph.disabled_reason is None, graph.disabled_reason
        torch.testing.assert_close(t_graph, t_eager, rtol=1e-3, atol=1e-5)
    assert graph.graph_lr == 0.01
    _assert_same_updates(start, d_eager.student.parameters(), d_graph.student.parameters())
    # momentum buffers too: the warm-up before the first capture must leave no trace
    def momentum(distiller, opt):
        return [opt.state[p]["momentum_buffer"] for p in distiller.student.parameters()]

    _assert_same_updates([torch.zeros_like(p) for p in start], momentum(d_eager, o_eager),
                         momentum(d_graph, o_graph), what="momentum")


def test_graph_step_takes_a_ragged_last_batch_eagerly(fp32_without_tf32):
    ((d_eager, _, eager), (d_graph, _, graph)), start = _eager_and_graph(fp32_without_tf32, seed=3)
    batches = _batches(4, seed=5)
    x, y, keep = batches[2]
    batches[2] = (x[:7], y[:7], keep)  # smaller batch between full ones
    for x, y, keep in batches:
        torch.testing.assert_close(graph(x, y, keep, 0.1), eager(x, y, keep, 0.1),
                                   rtol=1e-3, atol=1e-5)
    _assert_same_updates(start, d_eager.student.parameters(), d_graph.student.parameters())


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.pt"
    prepare_dataset("synthetic", path, seed=0, synthetic_train=1024, synthetic_test=256)
    return path


def _cfg(**over):
    cfg = {"model": "resnet8", "seed": 7, "epochs": 3, "batch_size": 128,
           "optimizer": {"lr": 0.05}, "schedule": {"name": "cosine"}, "device": "cuda"}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def same_seed_runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [(train(_cfg(), tiny_data, root / name, progress=False), root / name / "model.pt")
            for name in ("a", "b")]


def test_fast_trainer_uses_the_graph_and_repeats_itself(same_seed_runs):
    (a, _), (b, _) = same_seed_runs
    assert a["device"].startswith("cuda")
    assert a["determinism"]["fast"] == {"bf16": True, "channels_last": True, "cuda_graph": True,
                                        "fold_guides": True}
    assert a["determinism"]["cuda_graph_fallback"] is None
    assert abs(a["top1_last"] - b["top1_last"]) <= 1.0


def test_fast_trainer_on_cuda_is_bit_identical_for_one_seed(same_seed_runs):
    """deterministic: true (the default) promises this on one GPU model and software stack."""
    (_, path_a), (_, path_b) = same_seed_runs
    sa = torch.load(path_a, weights_only=True)["state_dict"]
    sb = torch.load(path_b, weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fast_path_matches_plain_fp32(same_seed_runs, tiny_data, tmp_path):
    (a, _), _ = same_seed_runs
    plain = train(_cfg(fast=FAST_OFF),
                  tiny_data, tmp_path / "plain", progress=False)
    # bf16 changes the rounding, not the training: the accuracies stay close (256 test images)
    assert abs(a["top1_last"] - plain["top1_last"]) < 10.0


def test_guide_table_on_cuda_matches_the_inline_guide_in_the_graph(same_seed_runs, tiny_data,
                                                                   tmp_path):
    """A bf16 table built on the GPU, looked up inside the captured step, against the folded
    bf16 guide run inline in it: the same training to bf16 rounding."""
    from dgkd_core.guides.logit_tables import make_guide_table

    (_, guide), _ = same_seed_runs
    table = tmp_path / "guide_table.pt"
    record = make_guide_table(guide, tiny_data, table, _cfg())
    assert record["dtype"] == "bfloat16" and record["views_per_image"] == 162
    cfg = _cfg(method="kd", epochs=2)
    inline = train(cfg, tiny_data, tmp_path / "inline", [guide], progress=False)
    tabled = train(cfg, tiny_data, tmp_path / "tabled", [guide], progress=False,
                   guide_tables=[table])
    assert tabled["guide_tables"] == [True]
    assert tabled["determinism"]["cuda_graph_fallback"] is None
    assert abs(inline["top1_last"] - tabled["top1_last"]) < 10.0
