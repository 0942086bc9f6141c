"""Which part of a global batch one rank of a data-parallel run takes (dgkd_core.training.distributed)."""

from __future__ import annotations

__all__ = ["shard_slice"]


def shard_slice(lo: int, hi: int, rank: int, world_size: int) -> tuple[int, int]:
    """The part [a, b) of positions [lo, hi) that rank `rank` of `world_size` takes: contiguous,
    in rank order, sizes differing by at most one (the lower ranks get the larger ones). With one
    rank: (lo, hi) itself."""
    base, extra = divmod(hi - lo, world_size)
    a = lo + rank * base + min(rank, extra)
    return a, a + base + (1 if rank < extra else 0)
