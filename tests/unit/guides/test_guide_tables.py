"""Guide tables and prepared guides (dgkd_core.guides.logit_tables, dgkd_core.guides.prepared).

The tables are checked against the guide run inline on the loader's own batches, and the view
numbering against a crop and flip written out here by hand (pad, slice, torch.flip)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgkd_core.data import (Normalizer, TensorLoader, load_prepared, prepare_dataset, view_index,
                            view_params, views_per_image)
from dgkd_core.errors import TrainingError
from dgkd_core.guides.checkpoints import load_guide
from dgkd_core.guides.prepared import count_batchnorms, fold_batchnorm, prepare_guide
from dgkd_core.guides.logit_tables import (build_guide_table, load_guide_table, make_guide_table,
                                     save_guide_table, table_checksum)
from dgkd_core.method.losses import dgkd_loss
from dgkd_core.method.models import build_model
from dgkd_core.training.trainer import Trainer, TrainingInterrupted, train
from helpers import assert_same_weights, run_config

PAD = 4
SUBSET = 64  # training images here: 64 x 162 views build in seconds on a CPU


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "synthetic.pt"
    prepare_dataset("synthetic", path, seed=0, synthetic_train=SUBSET, synthetic_test=64)
    return path


@pytest.fixture(scope="module")
def small_teacher(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("small_teacher")
    train(run_config(model="plane4", epochs=1, batch_size=16), small_data, out, progress=False)
    return out / "model.pt"


@pytest.fixture(scope="module")
def subset(small_data, small_teacher):
    """(images uint8 [SUBSET,3,32,32], labels, normalizer, guide, table [SUBSET, 162, C])."""
    data = load_prepared(small_data)
    images, labels = data.train_images, data.train_labels
    normalize = Normalizer(data.mean, data.std, "cpu", torch.float32, channels_last=False)
    guide = load_guide(small_teacher, data.meta, torch.device("cpu")).eval()
    table = build_guide_table(guide, images, normalize, pad=PAD, batch_size=700)
    return images, labels, normalize, guide, table, data


def _view_by_hand(image: torch.Tensor, view: int) -> torch.Tensor:
    """Image [3,H,W] under view number `view`: zero-pad, cut the window, mirror."""
    side = 2 * PAD + 1
    flip, offset = view % 2, view // 2
    dy, dx = offset // side, offset % side
    h, w = image.shape[1:]
    window = F.pad(image, (PAD, PAD, PAD, PAD))[:, dy:dy + h, dx:dx + w]
    return torch.flip(window, dims=[2]) if flip else window


def test_view_numbering_round_trips_and_counts_162():
    assert views_per_image(PAD) == 162
    views = torch.arange(162)
    dy, dx, flip = view_params(views, PAD)
    assert int(dy.max()) == int(dx.max()) == 2 * PAD and int(dy.min()) == 0
    assert torch.equal(view_index(dy, dx, flip, PAD), views)
    assert len({(int(a), int(b), bool(c)) for a, b, c in zip(dy, dx, flip)}) == 162


def test_table_rows_are_the_views_made_by_hand(subset):
    images, _, normalize, guide, table, _ = subset
    assert table.shape == (SUBSET, 162, 10) and table.dtype == torch.float32
    views = [0, 1, 16, 17, 80, 81, 160, 161]  # corner offsets, the centre, both flips
    for i in (0, SUBSET - 1):
        batch = torch.stack([_view_by_hand(images[i], v) for v in views])
        with torch.no_grad():
            expected = guide(normalize(batch))
        torch.testing.assert_close(table[i, views], expected, rtol=1e-5, atol=1e-5)


def test_kd_terms_from_the_table_equal_the_inline_guide(subset):
    """The loader's own batches (edge offsets and flips included): the same logits and the
    same KD terms, looked up or computed, in fp32."""
    images, labels, _, guide, table, data = subset
    loader = TensorLoader(images, labels, batch_size=16, mean=data.mean, std=data.std,
                          train=True, augment=True, device="cpu", generator_seed=5,
                          with_views=True)
    rows_by_view = table.reshape(-1, table.shape[-1])
    seen_offsets, seen_flips = set(), set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, y, rows in loader:
            dy, dx, flip = view_params(rows % 162, PAD)
            seen_offsets |= set(dy.tolist()) | set(dx.tolist())
            seen_flips |= set(flip.tolist())
            with torch.no_grad():
                inline = guide(x)
                student = torch.randn(x.shape[0], 10)
            looked_up = rows_by_view.index_select(0, rows)
            torch.testing.assert_close(looked_up, inline, rtol=1e-5, atol=1e-5)
            _, terms_inline = dgkd_loss(student, [inline, inline * 0.5], y, lam=0.5,
                                        temperature=4.0)
            _, terms_table = dgkd_loss(student, [looked_up, looked_up * 0.5], y, lam=0.5,
                                       temperature=4.0)
            for name in terms_inline:
                torch.testing.assert_close(terms_table[name], terms_inline[name], rtol=1e-5,
                                           atol=1e-5)
    assert {0, 2 * PAD} <= seen_offsets and seen_flips == {False, True}


def test_rows_do_not_change_the_batches_and_resume_mid_epoch(subset):
    images, labels, _, _, _, data = subset
    common = dict(batch_size=8, mean=data.mean, std=data.std, train=True, augment=True,
                  device="cpu", generator_seed=2)
    plain, viewed = TensorLoader(images, labels, **common), TensorLoader(
        images, labels, with_views=True, **common)
    straight = list(viewed)
    for (x, y), (xv, yv, _) in zip(plain, straight):
        assert torch.equal(x, xv) and torch.equal(y, yv)
    resumed = TensorLoader(images, labels, with_views=True, **common)
    it = iter(resumed)
    next(it), next(it)
    state = resumed.state_dict()
    again = TensorLoader(images, labels, with_views=True, **common)
    again.load_state_dict(state)
    rest = list(again)
    assert len(rest) == len(straight) - 2
    for (_, _, a), (_, _, b) in zip(rest, straight[2:]):
        assert torch.equal(a, b)


def test_with_views_needs_the_crop_and_flip(subset):
    images, labels, _, _, _, data = subset
    with pytest.raises(ValueError, match="augment"):
        TensorLoader(images, labels, batch_size=8, mean=data.mean, std=data.std, train=True,
                     augment=False, device="cpu", with_views=True)


# --------------------------------------------------------------------------- prepared guides


@pytest.mark.parametrize("name", ["resnet8", "plane4", "vgg8", "wrn_16_2", "resnet18"])
def test_folded_guide_equals_the_unfolded_one(name):
    torch.manual_seed(0)
    model = build_model(name, 10, dataset="cifar10")
    for m in model.modules():  # statistics far from (0, 1), so that folding has work to do
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        got = folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    before = count_batchnorms(model)
    assert before > 0 and count_batchnorms(model) == before, "the original was changed"
    if not name.startswith("wrn"):  # WRN's blocks put BN before their convolutions
        assert count_batchnorms(folded) == 0


def test_prepared_guide_is_frozen_in_eval_and_channels_last(teacher, tiny_data):
    data = load_prepared(tiny_data)
    guide = prepare_guide(load_guide(teacher, data.meta, torch.device("cpu")), fold=True,
                          channels_last=True)
    assert not guide.training and not any(p.requires_grad for p in guide.parameters())
    conv = next(m for m in guide.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- table files


@pytest.fixture(scope="module")
def table_file(small_data, small_teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "guide_table.pt"
    record = make_guide_table(small_teacher, small_data, path, run_config(), batch_size=4096)
    return path, record


@pytest.fixture
def tiny_data(small_data):  # the table-file tests run on the small data set
    return small_data


@pytest.fixture
def teacher(small_teacher):
    return small_teacher


def test_table_file_records_what_it_was_built_from(table_file, tiny_data, teacher):
    path, record = table_file
    data = load_prepared(tiny_data)
    assert record["data_checksum"] == data.meta["checksum"]
    assert record["num_images"] == SUBSET and record["views_per_image"] == 162
    assert record["guide_model"] == "plane4" and record["views_per_s"] > 0
    table = load_guide_table(path, guide_checkpoint=teacher, data_meta=data.meta,
                             normalization={"mean": data.mean, "std": data.std}, pad=PAD,
                             device=torch.device("cpu"))
    assert table.rows_by_view.shape == (SUBSET * 162, 10)


def test_table_of_another_guide_dataset_or_normalisation_is_refused(
        table_file, tiny_data, teacher, tmp_path):
    path, _ = table_file
    data = load_prepared(tiny_data)
    norm = {"mean": data.mean, "std": data.std}
    other_guide = tmp_path / "other_guide"  # the same architecture, trained with another seed
    train(run_config(model="plane4", epochs=1, seed=9, batch_size=16), tiny_data, other_guide,
          progress=False)
    with pytest.raises(TrainingError, match=r"another guide \(plane4, seed 3.*seed 9"):
        load_guide_table(path, guide_checkpoint=other_guide / "model.pt", data_meta=data.meta,
                         normalization=norm, pad=PAD, device=torch.device("cpu"))
    other_data = tmp_path / "other.pt"
    prepare_dataset("synthetic", other_data, seed=1, synthetic_train=SUBSET, synthetic_test=64)
    with pytest.raises(TrainingError, match="built on dataset"):
        load_guide_table(path, guide_checkpoint=teacher, data_meta=load_prepared(other_data).meta,
                         normalization=norm, pad=PAD, device=torch.device("cpu"))
    with pytest.raises(TrainingError, match="normalised with"):
        load_guide_table(path, guide_checkpoint=teacher, data_meta=data.meta,
                         normalization={"mean": [0.5] * 3, "std": [0.25] * 3}, pad=PAD,
                         device=torch.device("cpu"))
    bad = tmp_path / "not_a_table.pt"
    shutil.copy(teacher, bad)
    with pytest.raises(TrainingError, match="not a dgkd_core guide table"):
        load_guide_table(bad, guide_checkpoint=teacher, data_meta=data.meta,
                         normalization=norm, pad=PAD, device=torch.device("cpu"))


def test_training_with_a_table_matches_the_inline_guide(table_file, tiny_data, teacher, tmp_path):
    path, _ = table_file
    # fp32 on the CPU (tests/gpu/test_cuda.py has the bf16 GPU version). Two steps: the table's
    # logits equal the inline guide's to float rounding (~1e-7 relative), and this little
    # network at lr 0.05 amplifies any such difference, the table's or random noise's alike,
    # to ~1e-3 within 8 steps; a wrong table is off by far more after the first step.
    cfg = run_config(method="kd", epochs=1, batch_size=32, device="cpu",
                     fast={"channels_last": False})
    inline = train(cfg, tiny_data, tmp_path / "inline", [teacher], progress=False)
    tabled = train(cfg, tiny_data, tmp_path / "tabled", [teacher], progress=False,
                   guide_tables=[path])
    assert tabled["guide_tables"] == [True] and inline["guide_tables"] == [False]
    a = torch.load(tmp_path / "inline" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "tabled" / "model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)
    history = [json.loads((tmp_path / d / "metrics.json").read_text())["top1_last"]
               for d in ("inline", "tabled")]
    assert abs(history[0] - history[1]) <= 1.0
    # The same check fails for a table whose rows are another image's logits.
    payload = torch.load(path, weights_only=True)
    payload["table"] = payload["table"].roll(1, dims=0)
    payload["table_sha256"] = table_checksum(payload["table"])  # its record as a build writes it
    torch.save(payload, tmp_path / "shifted.pt")
    train(cfg, tiny_data, tmp_path / "shifted", [teacher], progress=False,
          guide_tables=[tmp_path / "shifted.pt"])
    c = torch.load(tmp_path / "shifted" / "model.pt", weights_only=True)["state_dict"]
    assert max(float((c[k].double() - a[k].double()).abs().max()) for k in a) > 1e-2


class _StopAfter(Trainer):
    """A Trainer that is asked to stop (as by SIGTERM) after `steps` steps."""

    def __init__(self, *args, steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_left = steps

    def run_step(self, batch, lr):
        elapsed = super().run_step(batch, lr)
        self.steps_left -= 1
        if self.steps_left == 0:
            self.stop.reason = "test stop"
        return elapsed


def test_resumed_run_with_tables_is_bit_identical(table_file, tiny_data, teacher, tmp_path):
    path, _ = table_file
    cfg = run_config(method="kd", epochs=2, batch_size=8)
    train(cfg, tiny_data, tmp_path / "straight", [teacher], progress=False, guide_tables=[path])
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        _StopAfter(cfg, tiny_data, out, [teacher], False, guide_tables=[path], steps=5).run()
    assert torch.load(out / "resume.pt", weights_only=True)["step"] == 5
    metrics = train(cfg, tiny_data, out, [teacher], progress=False, guide_tables=[path])
    assert metrics["resumed"] is True
    assert_same_weights(tmp_path / "straight" / "model.pt", out / "model.pt")


def test_tables_for_some_guides_and_a_wrong_count(table_file, tiny_data, teacher, tmp_path):
    path, _ = table_file
    cfg = run_config(method="dgkd", epochs=1, batch_size=16)
    metrics = train(cfg, tiny_data, tmp_path / "mixed", [teacher, teacher], progress=False,
                    guide_tables=[path, None])
    assert metrics["guide_tables"] == [True, False]
    with pytest.raises(ValueError, match="one per guide"):
        train(cfg, tiny_data, tmp_path / "bad", [teacher, teacher], progress=False,
              guide_tables=[path])
    with pytest.raises(ValueError, match="augment: false"):
        train(run_config(method="kd", augment=False, batch_size=16), tiny_data, tmp_path / "noaug", [teacher],
              progress=False, guide_tables=[path])


def test_fused_members_with_tables_train_as_they_do_solo(table_file, tiny_data, teacher,
                                                         tmp_path):
    from dgkd_core.training.fused import train_fused

    path, _ = table_file
    cfg = run_config(method="kd", epochs=1, batch_size=16)
    members = [{"config": {**cfg, "seed": 1}, "data": tiny_data, "out_dir": tmp_path / "f1",
                "guides": [teacher], "guide_tables": [path]},
               {"config": {**cfg, "seed": 2}, "data": tiny_data, "out_dir": tmp_path / "f2",
                "guides": [teacher]}]
    fused = train_fused(members, progress=False)
    assert [m["guide_tables"] for m in fused] == [[True], [False]]
    for i, member in enumerate(members, start=1):
        train(member["config"], tiny_data, tmp_path / f"s{i}", [teacher], progress=False,
              guide_tables=member.get("guide_tables", ()))
        assert_same_weights(tmp_path / f"s{i}" / "model.pt", tmp_path / f"f{i}" / "model.pt")


def test_two_ranks_with_a_table_train_as_one_process(table_file, tiny_data, teacher, tmp_path):
    """Data-parallel ranks look up their own slices of each batch's rows (gloo, sync_bn)."""
    from helpers import one_process, torchrun

    path, _ = table_file
    extra = ["--set", "method=kd", "--set", "epochs=1", "--set", "batch_size=32",
             "--set", "sync_bn=true", "--set", f"guides=[{teacher}]",
             "--set", f"guide_tables=[{path}]"]
    one_process(tiny_data, tmp_path / "one", *extra)
    proc = torchrun(tiny_data, tmp_path / "two", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["guide_tables"] == [True]
