"""The one model registry: CIFAR ResNets, plain CNNs, WRN, VGG and ImageNet ResNets.

Every CIFAR model takes a normalised float batch ``[B, 3, 32, 32]`` and returns logits
``[B, num_classes]``; ``resnet18``/``resnet24``/``resnet34`` (torchvision's ResNet) take
``[B, 3, H, W]`` with H, W >= 32 (224 for ImageNet). All models accept ``torch.channels_last`` inputs.

Layouts and parameter counts follow the released codes (``docs/paper.md``, "Architectures");
``tests/unit/method/test_models.py`` pins the counts.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import partial
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["available_models", "build_model", "count_parameters", "model_family"]


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """3x3 pad-1 conv *with* bias + BN + ReLU (the plain CNN and VGG unit)."""
    return [_conv3x3(cin, cout, bias=True), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def kaiming_normal_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, ReLU) convs with zero bias; BN weight 1, bias 0; Linear default.

    For the CIFAR ResNets this is the released DGKD/TAKD code's normal(0, sqrt(2/n)), n = k²·C_out
    (and RepDistiller's for WRN and VGG)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# --------------------------------------------------------------------------- CIFAR ResNet


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU; 1x1 conv + BN shortcut on shape change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: [B,3,32,32] normalised float -> logits [B,num_classes]."""

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        layers: list[nn.Module] = [_conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# --------------------------------------------------------------------------- WideResNet


class WideBlock(nn.Module):
    """Pre-activation block (BN-ReLU-conv x2); 1x1 conv shortcut on the activated input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.shortcut = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act)), inplace=True))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """CIFAR WRN-depth-k (RepDistiller/CRD layout, dropout 0): [B,3,32,32] -> [B,num_classes]."""

    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        layers: list[nn.Module] = [_conv3x3(3, 16)]
        cin = 16
        for cout, stride in ((16 * widen, 1), (32 * widen, 2), (64 * widen, 2)):
            for i in range(n):
                layers.append(WideBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# --------------------------------------------------------------------------- VGG


class CifarVGG(nn.Module):
    """CIFAR VGG with BN (RepDistiller): [B,3,32,32] -> logits [B,num_classes].

    Five conv blocks; 2x2 max-pool after blocks 0-2 (and after block 3 for inputs larger than
    32x32, as RepDistiller does for 64x64); adaptive average pool to 1x1; Linear(512, classes).
    """

    def __init__(self, cfg: list[list[int]], num_classes: int) -> None:
        super().__init__()
        blocks, cin = [], 3
        for widths in cfg:
            layers: list[nn.Module] = []
            for cout in widths:
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool_block3 = x.shape[-2] > 32
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < 3 or (i == 3 and pool_block3):
                x = F.max_pool2d(x, 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- plain CNNs

# The released codes' layouts (docs/paper.md): (CIFAR-10 layout, CIFAR-100 layout).
# "C<w>": conv+BN+ReLU, "MP": 2x2 max-pool, "FC<w>": hidden Linear+ReLU; the final
# Linear(num_classes) is always appended.
_C = "C32 C32 MP C64 C64 MP C128 C128 MP"
_PLANE_LAYOUTS: dict[str, tuple[str, str]] = {
    "plane2": ("C16 MP C16 MP", "C32 MP C32 MP"),
    "plane3": ("C32 C32 MP C64 MP",) * 2,
    "plane4": ("C16 C16 MP C32 C32 MP", "C32 C32 MP C64 C64 MP"),
    "plane5": ("C32 C32 MP C64 C64 MP C128",) * 2,
    "plane6": ("C16 C16 MP C32 C32 MP C64 C64 MP", "C32 C32 MP C64 C64 MP C128 C128"),
    "plane7": (f"{_C} C256 MP FC64",) * 2,
    "plane8": ("C16 C16 MP C32 C32 MP C64 C64 MP C128 C128 MP FC64", f"{_C} C256 C256 MP FC64"),
    "plane9": (f"{_C} C256 C256 C256 MP FC512",) * 2,
    "plane10": (f"{_C} C256 C256 C256 C256 MP FC128", f"{_C} C256 C256 C256 C256 MP FC512"),
}


class PlainCNN(nn.Module):
    """Plain CNN from a layout string: [B,3,32,32] normalised float -> logits [B,num_classes].

    The first Linear's input size is computed for 32x32 inputs. Other input sizes are
    average-pooled to that feature-map size before flattening (no extra parameters; a no-op and
    skipped at 32x32).
    """

    def __init__(self, layout: str, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        cin, size = 3, image_size
        tokens = layout.split()
        for tok in tokens:
            if tok == "MP":
                convs.append(nn.MaxPool2d(2))
                size //= 2
            elif tok.startswith("C"):
                convs += _conv_bn_relu(cin, int(tok[1:]))
                cin = int(tok[1:])
        self.features = nn.Sequential(*convs)
        self.feature_size = (size, size)
        widths = [cin * size * size] + [int(t[2:]) for t in tokens if t.startswith("FC")]
        fcs: list[nn.Module] = []
        for a, b in pairwise(widths):
            fcs += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*fcs, nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if tuple(x.shape[-2:]) != self.feature_size:
            x = F.adaptive_avg_pool2d(x, self.feature_size)
        return self.classifier(torch.flatten(x, 1))


def _plane(name: str, num_classes: int, dataset: str | None) -> nn.Module:
    cifar10 = dataset is not None and dataset.lower().replace("-", "").replace("_", "") == "cifar10"
    return PlainCNN(_PLANE_LAYOUTS[name][0 if cifar10 else 1], num_classes)


# --------------------------------------------------------------------------- ImageNet ResNet


def _torchvision(name: str, num_classes: int, dataset: str | None) -> nn.Module:
    """torchvision ResNet, random init: [B,3,H,W] (224x224 on ImageNet) -> [B,num_classes]."""
    import torchvision.models as tvm

    return getattr(tvm, name)(weights=None, num_classes=num_classes)


# Blocks per stage of the torchvision-style ResNets that torchvision does not build itself.
# resnet24 is the ImageNet chain's TA (config/imagenet.yaml): between resnet18 [2,2,2,2] and
# resnet34 [3,4,6,3] stage by stage, about halfway in depth and multiply-adds (1.81G < 2.51G <
# 3.66G at 224x224) and between them in parameters (11.7M < 14.3M < 21.8M); BasicBlocks, as
# both ends. (The depths 26 and 32 that would sit closer in parameters are CIFAR ResNet names.)
_TORCHVISION_STYLE_LAYERS = {"resnet24": [2, 3, 4, 2]}


def _torchvision_style(name: str, num_classes: int, dataset: str | None) -> nn.Module:
    """torchvision's ResNet class with BasicBlocks and `_TORCHVISION_STYLE_LAYERS[name]`: the
    same stem, stages and head as resnet18/34 ([B,3,H,W] -> [B,num_classes]), random init."""
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, _TORCHVISION_STYLE_LAYERS[name], num_classes=num_classes)


# --------------------------------------------------------------------------- registry

# A builder takes (num_classes, dataset); only the plain CNNs look at the dataset.
_Builder = Callable[[int, "str | None"], nn.Module]


def _fixed(cls: type[nn.Module], *args: object) -> _Builder:
    """Builder for a layout that does not depend on the dataset: ``cls(*args, num_classes)``."""
    return lambda num_classes, _dataset: cls(*args, num_classes)


_VGG_CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}

# name -> (family, builder)
_REGISTRY: dict[str, tuple[str, _Builder]] = {
    **{f"resnet{d}": ("resnet", _fixed(CifarResNet, d)) for d in (8, 14, 20, 26, 32, 44, 56, 110)},
    **{name: ("plane", partial(_plane, name)) for name in _PLANE_LAYOUTS},
    "wrn_16_2": ("wrn", _fixed(WideResNet, 16, 2)),
    "wrn_40_2": ("wrn", _fixed(WideResNet, 40, 2)),
    **{name: ("vgg", _fixed(CifarVGG, cfg)) for name, cfg in _VGG_CFGS.items()},
    **{name: ("imagenet_resnet", partial(_torchvision, name)) for name in ("resnet18", "resnet34")},
    **{name: ("imagenet_resnet", partial(_torchvision_style, name))
       for name in _TORCHVISION_STYLE_LAYERS},
}


# The initialisation each family gets by default (`init: auto`): what the released DGKD code
# does (docs/paper.md): PyTorch's default layers for the plain CNNs, Kaiming-normal for the ResNets
# (and RepDistiller's WRN and VGG); torchvision's own for its ImageNet ResNets.
INITS = ("auto", "torch_default", "kaiming_normal", "torchvision")
_FAMILY_INIT = {"resnet": "kaiming_normal", "plane": "torch_default", "wrn": "kaiming_normal",
                "vgg": "kaiming_normal", "imagenet_resnet": "torchvision"}


def default_init(name: str) -> str:
    """What `init: auto` means for model `name` (see _FAMILY_INIT)."""
    return _FAMILY_INIT[model_family(name)]


def _initialise(model: nn.Module, init: str) -> nn.Module:
    own_layers = isinstance(model, (CifarResNet, WideResNet, CifarVGG, PlainCNN))
    if init == "torchvision" and own_layers:
        raise ValueError("init torchvision applies to torchvision's ImageNet ResNets only; use "
                         "auto, torch_default or kaiming_normal")
    if init == "kaiming_normal":
        return kaiming_normal_init(model)
    if init == "torch_default" and own_layers:
        return model  # built from PyTorch's layers, whose constructors initialise them
    if init == "torch_default":  # torchvision's models apply their own init: undo it
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
    return model


def available_models() -> list[str]:
    """All registry names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[str, _Builder]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def model_family(name: str) -> str:
    """Family of a registry name: resnet, plane, wrn, vgg or imagenet_resnet.

    Raises ValueError for an unknown name.
    """
    return _lookup(name)[0]


def build_model(name: str, num_classes: int, dataset: str | None = None,
                init: str = "auto") -> nn.Module:
    """Build a freshly initialised model returning logits ``[B, num_classes]``.

    CIFAR models take normalised float ``[B, 3, 32, 32]``. ``dataset`` only selects the plain-CNN
    layout: "cifar10" gives the codes' CIFAR-10 column (docs/paper.md), anything else
    (cifar100, None, synthetic, imagefolder, ...) the CIFAR-100 column. ``num_classes`` always sets the output size.
    ``init``: one of ``INITS``; auto is the family's default (:func:`default_init`).
    """
    _, builder = _lookup(name)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    try:
        num_classes = operator.index(num_classes)
    except TypeError:
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}") from None
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return _initialise(builder(num_classes, dataset), default_init(name) if init == "auto" else init)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
