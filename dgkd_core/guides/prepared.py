"""Prepared guides: a frozen guide with each BatchNorm folded into the convolution before it,
its weights in the step's memory format and, on CUDA, already in bf16.

A guide in eval mode computes conv -> BN(running statistics) -> ..., and BN with fixed
statistics is an affine map per channel, so it can be folded into the convolution's weights and
bias once, when the guide is loaded (`torch.nn.utils.fusion.fuse_conv_bn_eval`). That removes a
BN kernel per convolution from every step, and storing the weights in bf16 removes the weight
casts that autocast would otherwise repeat per step (its cast cache is off while a CUDA graph is
captured). The logits equal the unfolded guide's to fp32 rounding (tests/unit/guides/test_guide_tables.py).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["count_batchnorms", "fold_batchnorm", "prepare_guide"]

log = logging.getLogger("dgkd_core.guides.prepared")

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers `model` still has."""
    return sum(isinstance(m, _BATCHNORMS) for m in model.modules())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of eval-mode `model` with every BatchNorm that directly follows a Conv2d folded
    into it; the original is left as it is.

    Models torch.fx can trace (the ResNets, WRNs, torchvision's) are folded by torch's own pass
    (`torch.fx.experimental.optimization.fuse`), which follows the data flow. A model with
    shape-dependent control flow (the plain CNNs, VGG) is folded where a Conv2d and its
    BatchNorm2d are neighbours in an nn.Sequential, which is how those models are built."""
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    try:
        return fuse(model, inplace=False)
    except Exception as err:  # noqa: BLE001 - any tracing failure: fold what is certain
        log.debug("torch.fx cannot trace %s (%s); folding within nn.Sequential",
                  type(model).__name__, err)
    folded = copy.deepcopy(model)
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            _fold_in_sequential(module)
    return folded


def _fold_in_sequential(seq: nn.Sequential) -> None:
    """Fold each (Conv2d, BatchNorm2d) neighbour pair of `seq` in place: the convolution becomes
    the folded one and the BatchNorm an Identity, so indices and names stay as they were."""
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, bn = seq._modules[first], seq._modules[second]
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats and bn.running_mean is not None):
            seq._modules[first] = fuse_conv_bn_eval(conv, bn)
            seq._modules[second] = nn.Identity()


def prepare_guide(guide: nn.Module, *, fold: bool, channels_last: bool,
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    """The guide a step runs: eval mode, frozen, BN folded (`fold`), in channels_last
    (`channels_last`) and with its floating-point weights in `dtype` (bf16 on the CUDA fast
    path, where autocast would cast them to bf16 anyway). Inputs: [B,3,H,W] normalised images;
    output: logits [B, num_classes] (in `dtype`, or autocast's, under autocast)."""
    guide = guide.eval()
    if fold:
        guide = fold_batchnorm(guide)
    guide.requires_grad_(False)
    if channels_last:
        guide = guide.to(memory_format=torch.channels_last)
    return guide.to(dtype=dtype)
