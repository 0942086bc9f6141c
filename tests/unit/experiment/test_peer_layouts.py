"""Teachers saved by RepDistiller and mdistiller import (dgkd_core.experiment.peer_layouts).

The fixtures carry the peers' real key names, in the order their models register their layers
(RepDistiller's models/resnet.py, wrn.py, vgg.py; mdistiller's cifar models are the same), and
their containers: RepDistiller's `*_last.pth` {'opt': Namespace, 'model': sd, 'epoch', 'accuracy'}
and the mdistiller teacher files {'model': sd, ...}. Each is our model's state_dict renamed in the
peer's order; the imported model must compute the same outputs.
"""

from __future__ import annotations

import argparse
import types

import pytest
import torch

from dgkd_core.experiment.importing import ImportFailed, fitted_model, read_state_dict
from dgkd_core.method.models import build_model

META = {"num_classes": 10, "name": "synthetic"}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{kind}" for kind in BN]


def repdistiller_resnet_keys(depth: int) -> list[str]:
    """RepDistiller's ResNet(depth, [16, 16, 32, 64]) state_dict keys, in its order."""
    keys = ["conv1.weight", *_bn("bn1")]
    for stage in (1, 2, 3):
        for block in range((depth - 2) // 6):
            at = f"layer{stage}.{block}"
            keys += [f"{at}.conv1.weight", *_bn(f"{at}.bn1"), f"{at}.conv2.weight", *_bn(f"{at}.bn2")]
            if stage > 1 and block == 0:  # stride 2: downsample = Sequential(conv, bn)
                keys += [f"{at}.downsample.0.weight", *_bn(f"{at}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def repdistiller_wrn_keys(depth: int, widen: int) -> list[str]:
    """RepDistiller's WideResNet(depth, widen_factor=widen) state_dict keys, in its order."""
    keys = ["conv1.weight"]
    for group in (1, 2, 3):
        for block in range((depth - 4) // 6):
            at = f"block{group}.layer.{block}"
            keys += [*_bn(f"{at}.bn1"), f"{at}.conv1.weight", *_bn(f"{at}.bn2"), f"{at}.conv2.weight"]
            if block == 0 and (group > 1 or widen != 1):  # in_planes != out_planes
                keys.append(f"{at}.convShortcut.weight")
    return keys + [*_bn("bn1"), "fc.weight", "fc.bias"]


def repdistiller_vgg_keys(widths: list[list[int]]) -> list[str]:
    """RepDistiller's VGG state_dict keys: block<i> = [conv(bias), BN, ReLU]*, then classifier."""
    keys = []
    for i, block in enumerate(widths):
        for j in range(len(block)):
            keys += [f"block{i}.{3 * j}.weight", f"block{i}.{3 * j}.bias", *_bn(f"block{i}.{3 * j + 1}")]
    return keys + ["classifier.weight", "classifier.bias"]


PEERS = {
    "resnet8": repdistiller_resnet_keys(8),
    "resnet20": repdistiller_resnet_keys(20),
    "wrn_16_2": repdistiller_wrn_keys(16, 2),
    "vgg8": repdistiller_vgg_keys([[64], [128], [256], [512], [512]]),
}


def trained_looking(name: str) -> torch.nn.Module:
    """Our model with random BatchNorm statistics too, so that a misplaced tensor shows."""
    torch.manual_seed(0)
    model = build_model(name, 10, dataset="synthetic").eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model


def peer_state(model: torch.nn.Module, name: str) -> dict:
    ours = model.state_dict()
    assert len(PEERS[name]) == len(ours)
    return dict(zip(PEERS[name], ours.values()))


def repdistiller_last(sd: dict) -> dict:
    opt = argparse.Namespace(model="resnet56", dataset="cifar100", learning_rate=0.05,
                             lr_decay_epochs=[150, 180, 210], trial="0")
    return {"opt": opt, "model": sd, "epoch": 240, "accuracy": torch.tensor(72.34)}


def mdistiller_teacher(sd: dict) -> dict:
    return {"model": sd, "epoch": 240, "best_acc": 72.34}


@pytest.mark.parametrize("container", [repdistiller_last, mdistiller_teacher])
@pytest.mark.parametrize("name", list(PEERS))
def test_peer_checkpoint_imports_with_equal_outputs(name, container, tmp_path):
    model = trained_looking(name)
    path = tmp_path / f"ckpt_{name}_last.pth"
    torch.save(container(peer_state(model, name)), path)
    state, about = read_state_dict(path)
    imported = fitted_model(state, about, name, META, str(path)).eval()
    assert "RepDistiller/mdistiller" in about["layout"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(imported(x), model(x))


def test_a_file_from_before_batchnorm_counters_imports(tmp_path):
    model = trained_looking("resnet8")
    old = {k: v for k, v in peer_state(model, "resnet8").items()
           if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet8.pth"
    torch.save({"model": old}, path)
    imported = fitted_model(*read_state_dict(path), "resnet8", META, "f").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(imported(x), model(x))


def test_a_deeper_peer_resnet_is_refused_naming_the_first_differing_layer(tmp_path):
    path = tmp_path / "resnet20.pth"
    torch.save({"model": peer_state(trained_looking("resnet20"), "resnet20")}, path)
    with pytest.raises(ImportFailed, match=r"not a resnet8: .*layer1\.1\.conv1\.weight "
                                           r"\[16, 16, 3, 3\] does not match the model's "
                                           r"features\.4\.conv1\.weight"):
        fitted_model(*read_state_dict(path), "resnet8", META, str(path))


def test_a_wider_peer_is_refused_naming_the_layer(tmp_path):
    state = peer_state(trained_looking("resnet8"), "resnet8")
    state["conv1.weight"] = torch.zeros(32, 3, 3, 3)  # resnet8x4's stem
    path = tmp_path / "resnet8x4.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ImportFailed, match=r"conv1\.weight \[32, 3, 3, 3\] does not match"):
        fitted_model(*read_state_dict(path), "resnet8", META, str(path))


def test_a_peer_with_other_classes_is_a_class_count_error(tmp_path):
    model = build_model("vgg8", 100)
    path = tmp_path / "vgg8.pth"
    torch.save({"model": dict(zip(PEERS["vgg8"], model.state_dict().values()))}, path)
    with pytest.raises(ImportFailed, match="has 100 classes"):
        fitted_model(*read_state_dict(path), "vgg8", META, str(path))


def test_only_namespace_gets_through_the_safe_loader(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"opt": types.SimpleNamespace(lr=0.1), "model": {"w": torch.ones(1)}}, path)
    with pytest.raises(ImportFailed, match="refused unread"):
        read_state_dict(path)
