"""State_dicts saved by RepDistiller and mdistiller, renamed to this project's keys.

Their CIFAR ResNet, WRN and VGG are the same networks as ours (dgkd_core.method.models) under
other module names: ``conv1, bn1, layer1.0.conv1, …, fc`` (ResNet), ``conv1, block1.layer.0.bn1,
…, bn1, fc`` (WRN), ``block0.0, …, classifier`` (VGG). Both sides register their layers in the
forward order, so a state_dict in their key order maps onto ours entry by entry; each pair must
agree in tensor kind (weight, bias, running_mean, …) and shape, else the import is refused naming
the first differing layer. A file saved before PyTorch 0.4.1 has no BatchNorm
``num_batches_tracked``: ours are kept (they do not change the outputs in evaluation).
"""

from __future__ import annotations

import re

import torch

__all__ = ["PEER_LAYOUTS", "LayoutMismatch", "peer_layout", "renamed_to_ours"]

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_PARAM = r"(weight|bias)"

# family (dgkd_core.method.models.model_family) -> (what the layout is called, every key's pattern)
PEER_LAYOUTS: dict[str, tuple[str, re.Pattern]] = {
    "resnet": ("RepDistiller/mdistiller CIFAR ResNet", re.compile(
        rf"conv1\.weight|bn1\.{_BN}|fc\.{_PARAM}"
        rf"|layer[1-3]\.\d+\.(conv[12]\.weight|bn[12]\.{_BN}"
        rf"|downsample\.0\.weight|downsample\.1\.{_BN})")),
    "wrn": ("RepDistiller/mdistiller WRN", re.compile(
        rf"conv1\.weight|bn1\.{_BN}|fc\.{_PARAM}"
        rf"|block[1-3]\.layer\.\d+\.(conv[12]\.weight|bn[12]\.{_BN}|convShortcut\.weight)")),
    "vgg": ("RepDistiller/mdistiller VGG", re.compile(
        rf"block[0-4]\.\d+\.{_BN}|classifier\.{_PARAM}")),
}


class LayoutMismatch(ValueError):
    """A peer's state_dict does not map onto ours; the message names the first differing layer."""


def peer_layout(family: str, state: dict) -> str | None:
    """The name of the peer layout `state`'s keys follow for a model of `family`, or None."""
    known = PEER_LAYOUTS.get(family)
    if known is None or not state:
        return None
    name, pattern = known
    return name if all(pattern.fullmatch(key) for key in state) else None


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def renamed_to_ours(state: dict, ours: dict[str, torch.Tensor], layout: str) -> dict:
    """`state` (a peer's, in its saved order) under the keys of `ours` (our model's state_dict).

    Raises LayoutMismatch naming the first pair that differs in kind or shape, or the first
    layer one side has and the other lacks."""
    theirs_keys = list(state)
    has_counters = any(_kind(k) == "num_batches_tracked" for k in theirs_keys)
    our_keys = [k for k in ours if has_counters or _kind(k) != "num_batches_tracked"]
    for their_key, our_key in zip(theirs_keys, our_keys):
        mine, given = ours[our_key], state[their_key]
        if _kind(their_key) != _kind(our_key) or tuple(given.shape) != tuple(mine.shape):
            raise LayoutMismatch(
                f"its {layout} layer {their_key} {list(given.shape)} does not match the "
                f"model's {our_key} {list(mine.shape)}")
    if len(theirs_keys) != len(our_keys):
        extra = (f"has {theirs_keys[len(our_keys)]} beyond the model's last layer"
                 if len(theirs_keys) > len(our_keys)
                 else f"ends before the model's {our_keys[len(theirs_keys)]}")
        raise LayoutMismatch(f"its {layout} state_dict {extra} ({len(theirs_keys)} tensors, the "
                             f"model has {len(our_keys)})")
    renamed = dict(zip(our_keys, (state[k] for k in theirs_keys)))
    return {key: renamed.get(key, ours[key]) for key in ours}
