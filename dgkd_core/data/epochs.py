"""What every loader shares: which epoch, which batch comes next and the generator state of the
epoch's order, so that a loader resumes mid-epoch with the batches an uninterrupted run draws."""

from __future__ import annotations

import math

import torch

from dgkd_core.data.seeds import epoch_seed

__all__ = ["EpochLoader", "EpochState"]


class EpochState:
    """Shared bookkeeping: which epoch, which batch comes next, and the epoch generator state."""

    def __init__(self, num_samples: int, batch_size: int, generator_seed: int, drop_last: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.generator_seed = int(generator_seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.next_batch = 0
        self.gen_state: torch.Tensor | None = None  # None: derive from (seed, epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.next_batch, self.gen_state = int(epoch), 0, None

    def generator(self, stream: str) -> torch.Generator:
        g = torch.Generator()
        if self.gen_state is not None:
            g.set_state(self.gen_state)
        else:
            g.manual_seed(epoch_seed(self.generator_seed, self.epoch, stream))
        return g

    def state_dict(self, stream: str) -> dict:
        return {"epoch": self.epoch, "next_batch": self.next_batch,
                "generator_state": self.generator(stream).get_state(),
                "generator_seed": self.generator_seed, "num_samples": self.num_samples,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict, owner: str) -> None:
        for key in ("num_samples", "batch_size", "generator_seed"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"{owner} state has {key}={state[key]}, but this loader has "
                                 f"{getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self.next_batch = int(state["next_batch"])
        gs = state.get("generator_state")
        self.gen_state = gs.clone() if isinstance(gs, torch.Tensor) else None

    def finish_epoch(self) -> None:
        """Called when an epoch has been fully yielded: the next iteration starts the next epoch."""
        self.set_epoch(self.epoch + 1)


class EpochLoader:
    """What both loaders share: epoch bookkeeping in ``self._state`` (an :class:`EpochState`)."""

    _STREAM = ""
    _state: EpochState

    @property
    def batch_size(self) -> int:
        return self._state.batch_size

    @property
    def epoch(self) -> int:
        return self._state.epoch

    @property
    def drop_last(self) -> bool:
        return self._state.drop_last

    def __len__(self) -> int:
        return len(self._state)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch at the next iteration."""
        self._state.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where iteration stands: {"epoch", "next_batch", "generator_state", ...} (CPU values)."""
        return self._state.state_dict(self._STREAM)

    def load_state_dict(self, state: dict) -> None:
        """Resume at batch ``state["next_batch"]`` of ``state["epoch"]`` at the next iteration."""
        self._state.load_state_dict(state, type(self).__name__)
