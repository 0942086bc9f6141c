"""Evaluation: top-1/top-5 accuracy of a model over a loader."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn as nn

from dgkd_core.config import resolve_run_config
from dgkd_core.data import load_prepared, make_loaders
from dgkd_core.device import resolve_device
from dgkd_core.guides.checkpoints import load_checkpoint, load_guide
from dgkd_core.runtime import fast_settings


def evaluate(model: nn.Module, loader, *, bf16: bool = False,
             sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> dict[str, float]:
    """Accuracy in percent over every sample of `loader` (yields ([B,3,H,W] float, [B] int64)).

    sum_over_ranks: in a data-parallel run, where each rank's loader yields its shard of the
    test set, a function summing a float64 tensor [4] over the ranks in place
    (`Distributed.sum_`): the counts are then the whole test set's, on every rank.
    Returns {"top1", "top5", "loss", "n"}; top-5 equals top-1's definition with k = min(5, C)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # [top-1 hits, top-5 hits, summed loss (nats)], kept on the device: one sync per evaluation,
    # not three per batch. float64 adds the float32 batch losses as the Python floats once
    # did, and counts exactly (below 2**53).
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    n = 0
    # Unlike the training step's autocast (`runtime.make_autocast`) the weight-cast cache stays
    # on: nothing here is captured in a CUDA graph.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), autocast:
        for images, targets in loader:
            totals += _batch_totals(model(images).float(), targets)
            n += targets.shape[0]
    model.train(was_training)
    if sum_over_ranks is not None:
        totals = torch.cat([totals, totals.new_tensor([n])])
        c1, c5, loss_sum, n = sum_over_ranks(totals).tolist()
        n = int(n)
    else:
        c1, c5, loss_sum = totals.tolist()
    correct1, correct5 = int(c1), int(c5)
    if n == 0:
        raise ValueError("evaluation loader yielded no samples")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n,
            "n": n}


def _batch_totals(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float64 [3] on the logits' device: the batch's top-1 hits, top-5 hits (k = min(5, C))
    and summed cross-entropy (nats). logits: float32 [B, C]; targets: int64 [B]."""
    k = min(5, logits.shape[1])
    hits = logits.topk(k, dim=1).indices.eq(targets[:, None])
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
    return torch.stack([hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                        loss.double()])


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_path: str | os.PathLike, *,
                        batch_size: int | None = None, device: str = "auto") -> dict:
    """Evaluate a saved model checkpoint on the test split of a prepared data file.

    Precision, memory format and batch size follow the run config stored in the checkpoint, as
    in training's own evaluation: on the same device this reproduces `metrics.json`'s top1_last
    exactly (bf16 on a GPU can flip a near-tied prediction against an fp32 evaluation)."""
    dev = resolve_device(device)
    data = load_prepared(data_path)
    ckpt = load_checkpoint(checkpoint)
    model = load_guide(checkpoint, data.meta, dev, ckpt=ckpt)
    # Every checkpoint train() writes holds its run config; one from elsewhere gets the defaults.
    cfg = resolve_run_config(ckpt.get("config") or {"model": ckpt["model"]})
    result = evaluate_on_test(model, data, cfg, dev, batch_size=batch_size)
    result.update({"checkpoint": str(checkpoint), "data": str(data_path)})
    return result


def evaluate_on_test(model: nn.Module, data, cfg: dict, device: torch.device, *,
                     batch_size: int | None = None) -> dict:
    """Accuracy in percent of `model` (on `device`) over the test split of `data` (a
    PreparedData), with the precision, memory format, normalisation and evaluation batch size
    of run config `cfg`, as training evaluates. Returns evaluate()'s dict plus the fast path."""
    fast = fast_settings(cfg, device)
    batch_size = batch_size or cfg["eval_batch_size"]
    if fast["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    _, test_loader = make_loaders(data, batch_size=batch_size, eval_batch_size=batch_size,
                                  device=device, seed=0, augment=False,
                                  channels_last=fast["channels_last"],
                                  normalization=cfg["normalize"])
    result = evaluate(model, test_loader, bf16=fast["bf16"])
    result.update({"bf16": fast["bf16"], "channels_last": fast["channels_last"]})
    return result
