"""Which torch device a run-config's `device` names."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto" (or None) -> cuda where a CUDA device is visible, else cpu; anything else as is."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
