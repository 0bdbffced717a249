"""Who is reading: the rank and world size of a distributed job."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ._checks import check_int
from .errors import InvalidArgumentError

__all__ = ["World"]


@dataclass(frozen=True)
class World:
    """An immutable (rank, world_size). DataLoader workers are not part of it: each adapter reads
    them from its framework where it iterates."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "world_size", check_int("world_size", self.world_size, 1))
        object.__setattr__(self, "rank", check_int("rank", self.rank, 0))
        if self.rank >= self.world_size:
            raise InvalidArgumentError(f"rank must be < world_size ({self.world_size}), got {self.rank}")

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> "World":
        """Detect the world of the calling process.

        Rank and world size come from the arguments when given (Horovod, Lightning, tf.distribute
        or plain multi-process users pass their own), else from ``RANK``/``WORLD_SIZE`` (torchrun),
        else from ``torch.distributed`` when it is initialised, else ``(0, 1)``.
        """
        if (rank is None) != (world_size is None):
            raise InvalidArgumentError("pass both rank= and world_size=, or neither")
        if rank is None or world_size is None:
            rank, world_size = _from_env()
        return cls(rank, world_size)


def _from_env() -> tuple[int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except ValueError:
            raise InvalidArgumentError(
                f"RANK={os.environ['RANK']!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r} are not integers"
            ) from None
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
