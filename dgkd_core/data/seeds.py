"""Seeds derived from labels: every random stream of the data is a pure function of its seed."""

from __future__ import annotations

import hashlib

__all__ = ["derived_seed", "epoch_seed"]


def derived_seed(label: str) -> int:
    """A 63-bit seed that is a pure function of `label` (sha256, first 8 bytes)."""
    digest = hashlib.sha256(label.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, stream)."""
    return derived_seed(f"dgkd-loader:{stream}:{int(seed)}:{int(epoch)}")
