"""The recipe's settings (docs/recipe.md): the released-code preset, exact-k guide dropping,
normalisation, and the errors for settings that would otherwise be silently ignored."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from dgkd_core.config import resolve_run_config
from dgkd_core.data import load_prepared, make_loaders
from dgkd_core.experiment import paths
from dgkd_core.experiment.plan import Plan
from dgkd_core.schema import ConfigError
import dgkd_core.training.distiller as distiller_mod
from dgkd_core.training.trainer import train

REPO = Path(__file__).resolve().parents[3]
RELEASED = yaml.safe_load((REPO / "config" / "released_code.yaml").read_text())
TINY = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
CIFAR100_MEAN, CIFAR100_STD = [0.507, 0.487, 0.441], [0.267, 0.256, 0.276]


def tiny_run(**over) -> dict:
    cfg = {"model": "plane2", "seed": 3, "epochs": 1, "batch_size": 32, "eval_batch_size": 64,
           "optimizer": {"lr": 0.01}, "schedule": {"name": "constant"}, "device": "cpu"}
    cfg.update(over)
    return cfg


# ---------------------------------------------------------------------- the preset


def test_released_code_preset_is_the_released_codes_recipe():
    plan = Plan(RELEASED)
    assert len(plan.runs()) == 2 * 3 * (11 + 9)  # Table 1's layout
    sdgkd = [r for r in plan.table1_runs() if r.method == "sdgkd"]
    assert {r.method_dir for r in sdgkd} == {"sdgkd-d1"}
    cfg = plan.run_config(sdgkd[0])
    assert cfg["loss"] == {"convention": "released_code", "lam": 1.0, "temperature": 5.0,
                           "keep_prob": None, "drop_teacher": True, "drop_num": 1}
    assert cfg["augment"] is False
    assert cfg["normalize"] == {"mean": CIFAR100_MEAN, "std": CIFAR100_STD}
    by_model = {r.model: plan.run_config(r)["init"] for r in plan.runs()}
    assert by_model["plane10"] == "torch_default" and by_model["resnet26"] == "kaiming_normal"
    # nothing else drops: every other run has drop_num 0 and no keep probability
    for run in plan.runs():
        if run.method != "sdgkd":
            loss = plan.run_config(run)["loss"]
            assert loss["drop_num"] == 0 and loss["keep_prob"] is None, run


def test_a_drop_run_has_its_own_directory():
    run = paths.make_run("cifar10", 20, "sdgkd", ["a", "b", "c"], drop_num=1)
    assert run.method_dir == "sdgkd-d1"
    assert paths.run_from_path(run.file("model.pt")) == run
    with pytest.raises(ValueError, match="keep_prob or drop_num"):
        paths.make_run("cifar10", 20, "dgkd", ["a", "b", "c"], drop_num=1)


def test_released_preset_drops_exactly_one_guide_per_batch_teacher_included(
        tiny_data, tmp_path, monkeypatch):
    """A tiny CPU run with the preset's stochastic-DGKD settings: every batch's keep mask over
    3 guides has exactly one zero, and over the run every guide, the teacher too, is dropped."""
    guides = []
    for i, model in enumerate(("plane4", "plane3", "plane3")):
        out = tmp_path / f"guide{i}"
        train(tiny_run(model=model, seed=10 + i), tiny_data, out, progress=False)
        guides.append(out / "model.pt")
    plan = Plan(RELEASED)
    (sdgkd,) = [r for r in plan.table1_runs()
                if r.method == "sdgkd" and r.seed == 20 and r.model == "plane2"
                and r.dataset == "cifar100"]
    preset = plan.run_config(sdgkd)
    masks = []
    real_loss = distiller_mod.dgkd_loss

    def recording(*args, keep=None, **kwargs):
        masks.append(keep.detach().cpu().clone())
        return real_loss(*args, keep=keep, **kwargs)

    monkeypatch.setattr(distiller_mod, "dgkd_loss", recording)
    cfg = tiny_run(method="sdgkd", loss=preset["loss"], augment=preset["augment"],
                   normalize=preset["normalize"], epochs=2)
    train(cfg, tiny_data, tmp_path / "student", guide_checkpoints=guides, progress=False)
    assert len(masks) == 2 * (512 // 32)  # 2 epochs of tiny_data's 512 images, batch 32
    assert all(m.shape == (3,) and int(m.sum()) == 2 for m in masks)
    assert (torch.stack(masks) == 0).any(dim=0).all()  # each guide dropped at least once


# ---------------------------------------------------------------------- settings


def test_normalize_replaces_the_datasets_statistics(tiny_data):
    data = load_prepared(tiny_data)
    norm = {"mean": CIFAR100_MEAN, "std": CIFAR100_STD}
    _, test = make_loaders(data, batch_size=16, eval_batch_size=16, device="cpu", seed=0,
                           augment=False, normalization=norm)
    x, _ = next(iter(test))
    raw = data.test_images[:16].float() / 255.0
    expected = (raw - torch.tensor(CIFAR100_MEAN)[:, None, None]) / torch.tensor(
        CIFAR100_STD)[:, None, None]
    assert torch.allclose(x, expected, atol=1e-5)
    _, own = make_loaders(data, batch_size=16, eval_batch_size=16, device="cpu", seed=0,
                          augment=False)
    assert not torch.allclose(next(iter(own))[0], expected, atol=1e-3)


@pytest.mark.parametrize("loss, needle", [
    ({"keep_prob": 0.75, "drop_num": 1, "drop_teacher": True}, "both set"),
    ({"drop_num": 1}, "set loss.drop_teacher: true"),
])
def test_dropping_settings_that_would_be_ignored_are_errors(loss, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_run_config({"model": "plane2", "method": "sdgkd", "loss": loss})


@pytest.mark.parametrize("where", ["per_method.dgkd", "per_role.student", "defaults"])
def test_drop_num_belongs_to_stochastic_dgkd_only(where):
    cfg = copy.deepcopy(TINY)
    node = cfg["hyperparameters"]
    for part in where.split("."):
        node = node.setdefault(part, {})
    node.setdefault("loss", {})["drop_num"] = 1
    with pytest.raises(ConfigError, match=f"{where}.loss.drop_num.*per_method.sdgkd"):
        Plan(cfg)


def test_keep_prob_and_drop_num_together_for_sdgkd_is_an_error():
    cfg = copy.deepcopy(TINY)
    cfg["hyperparameters"]["per_method"]["sdgkd"]["loss"].update(drop_num=1, drop_teacher=True)
    with pytest.raises(ConfigError, match=r"hyperparameters for .*/sdgkd-p0\.75/.*: run-config "
                                          r"'loss.keep_prob' \(0\.75\) and 'loss.drop_num' "
                                          r"\(1\) are both set"):
        Plan(cfg)


def test_normalize_must_be_three_means_and_stds():
    with pytest.raises(ConfigError, match="normalize"):
        resolve_run_config({"model": "plane2", "normalize": {"mean": [0.5, 0.5]}})
    with pytest.raises(ConfigError, match="normalize.std.0"):
        resolve_run_config({"model": "plane2",
                            "normalize": {"mean": [0.5] * 3, "std": [0, 1, 1]}})
