"""Model registry: parameter counts (docs/paper.md), output shapes, errors."""

import pytest
import torch

from dgkd_core.method.models import available_models, build_model, count_parameters, model_family

# (name, dataset, num_classes, parameters) -- from docs/paper.md "Architectures" (the codes' layouts).
REFERENCE_COUNTS = [
    ("resnet8", "cifar10", 10, 78_042),
    ("resnet8", "cifar100", 100, 83_892),
    ("resnet14", "cifar10", 10, 175_258),
    ("resnet14", "cifar100", 100, 181_108),
    ("resnet20", "cifar10", 10, 272_474),
    ("resnet20", "cifar100", 100, 278_324),
    ("resnet26", "cifar10", 10, 369_690),
    ("resnet26", "cifar100", 100, 375_540),
    ("resnet56", "cifar10", 10, 855_770),
    ("resnet56", "cifar100", 100, 861_620),
    ("resnet110", "cifar10", 10, 1_730_714),
    ("resnet110", "cifar100", 100, 1_736_564),
    ("plane2", "cifar10", 10, 13_082),
    ("plane2", "cifar100", 100, 215_172),
    ("plane4", "cifar10", 10, 37_338),
    ("plane4", "cifar100", 100, 475_652),
    ("plane6", "cifar10", 10, 82_778),
    ("plane6", "cifar100", 100, 1_107_204),
    ("plane8", "cifar10", 10, 327_962),
    ("plane8", "cifar100", 100, 1_246_276),
    ("plane10", "cifar10", 10, 2_487_850),
    ("plane10", "cifar100", 100, 2_931_460),
]

FAMILIES = {"resnet", "plane", "wrn", "vgg", "imagenet_resnet"}


def _input(name: str) -> torch.Tensor:
    size = 64 if model_family(name) == "imagenet_resnet" else 32
    return torch.randn(2, 3, size, size)


@pytest.mark.parametrize(("name", "dataset", "num_classes", "expected"), REFERENCE_COUNTS)
def test_parameter_counts_match_reference(name, dataset, num_classes, expected):
    assert count_parameters(build_model(name, num_classes, dataset)) == expected


def test_dataset_other_than_cifar10_uses_cifar100_layout():
    ref = count_parameters(build_model("plane6", 100, "cifar100"))
    for dataset in (None, "synthetic", "imagefolder"):
        assert count_parameters(build_model("plane6", 100, dataset)) == ref


def test_count_parameters_counts_only_trainable():
    model = build_model("resnet8", 10)
    total = count_parameters(model)
    model.fc.requires_grad_(False)
    assert count_parameters(model) == total - (64 * 10 + 10)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", available_models())
def test_every_model_builds_and_outputs_logits(name, num_classes):
    model = build_model(name, num_classes, "cifar10" if num_classes == 10 else "cifar100").eval()
    with torch.no_grad():
        out = model(_input(name))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet8", "plane4", "wrn_16_2", "vgg8"])
def test_channels_last_input_gives_same_logits(name):
    torch.manual_seed(0)
    model = build_model(name, 10, "cifar10").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["plane3", "plane5", "plane7", "plane9"])
def test_odd_plane_nets_respect_num_classes_on_cifar10(name):
    # The released code hard-wired 100 outputs for these on CIFAR-10.
    model = build_model(name, 10, "cifar10").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_plane_nets_accept_other_input_sizes():
    model = build_model("plane8", 10, "cifar10").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_deeper_resnet_has_more_parameters():
    depths = [8, 14, 20, 26, 32, 44, 56, 110]
    counts = [count_parameters(build_model(f"resnet{d}", 100)) for d in depths]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_plane_nets_grow_with_depth_on_cifar100():
    counts = [count_parameters(build_model(f"plane{n}", 100, "cifar100")) for n in (2, 4, 6, 8, 10)]
    assert counts == sorted(counts)


def test_available_models_sorted_and_complete():
    names = available_models()
    assert names == sorted(names)
    expected = {f"resnet{d}" for d in (8, 14, 20, 26, 32, 44, 56, 110)}
    expected |= {f"plane{n}" for n in range(2, 11)}
    expected |= {"wrn_16_2", "wrn_40_2", "vgg8", "vgg13", "resnet18", "resnet24", "resnet34"}
    assert set(names) == expected
    assert {model_family(n) for n in names} == FAMILIES


def test_resnet24_sits_between_resnet18_and_resnet34():
    """The ImageNet chain's TA: 24 weighted layers (23 3x3/7x7 convs on the main path + fc),
    parameters between its neighbours', [B,3,224,224] -> [B,num_classes]."""
    import torch.nn as nn

    models = {n: build_model(n, 1000, "imagenet") for n in ("resnet18", "resnet24", "resnet34")}
    counts = [count_parameters(m) for m in models.values()]
    assert counts == sorted(counts) and len(set(counts)) == 3
    main_path = [m for name, m in models["resnet24"].named_modules()
                 if isinstance(m, nn.Conv2d) and "downsample" not in name]
    assert len(main_path) + 1 == 24
    assert model_family("resnet24") == "imagenet_resnet"
    out = models["resnet24"].eval()(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 1000)


def test_model_family():
    assert model_family("resnet8") == "resnet"
    assert model_family("plane10") == "plane"
    assert model_family("wrn_40_2") == "wrn"
    assert model_family("vgg13") == "vgg"
    assert model_family("resnet34") == "imagenet_resnet"


def test_unknown_name_error_lists_available_models():
    with pytest.raises(ValueError) as err:
        build_model("resnet9", 10)
    for name in available_models():
        assert name in str(err.value)
    with pytest.raises(ValueError):
        model_family("nope")


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_too_few_classes_rejected(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet8", num_classes)


# ------------------------------------------------------------------ initialisation


def _second_conv(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]


def test_plain_cnns_start_from_pytorchs_default_init_as_in_the_released_code():
    """A 32->32 3x3 conv: PyTorch's default draws U(±1/sqrt(fan_in)), std 1/sqrt(3*288) = 0.0340;
    Kaiming-normal (fan_out) has std sqrt(2/288) = 0.0833 and zero bias (docs/paper.md)."""
    torch.manual_seed(0)
    conv = _second_conv(build_model("plane2", 100))  # CIFAR-100 layout: C32 MP C32
    assert conv.in_channels == conv.out_channels == 32
    assert abs(conv.weight.std().item() - 0.0340) < 0.003
    assert conv.bias.abs().sum() > 0
    torch.manual_seed(0)
    conv = _second_conv(build_model("plane2", 100, init="kaiming_normal"))
    assert abs(conv.weight.std().item() - 0.0833) < 0.006
    assert conv.bias.abs().sum() == 0


def test_resnets_keep_kaiming_normal_and_init_is_recorded():
    from dgkd_core.config import resolve_run_config

    torch.manual_seed(0)
    auto = build_model("resnet8", 10)
    torch.manual_seed(0)
    kaiming = build_model("resnet8", 10, init="kaiming_normal")
    assert all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(),
                                                 kaiming.state_dict().values()))
    assert resolve_run_config({"model": "resnet8"})["init"] == "kaiming_normal"
    assert resolve_run_config({"model": "plane4"})["init"] == "torch_default"
    assert resolve_run_config({"model": "plane4", "init": "kaiming_normal"})["init"] == (
        "kaiming_normal")
    with pytest.raises(ValueError, match="unknown init"):
        build_model("resnet8", 10, init="xavier")
    with pytest.raises(ValueError, match="ImageNet ResNets only"):
        build_model("resnet8", 10, init="torchvision")
