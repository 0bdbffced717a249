"""Who is reading: rank and world size of a distributed job, DataLoader worker and worker count."""

from __future__ import annotations

import numbers
import os
import sys
from dataclasses import dataclass

from .errors import InvalidArgumentError

__all__ = ["World"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class World:
    """An immutable (rank, world_size, worker, num_workers).

    ``num_workers`` counts DataLoader worker processes of one rank; ``0`` workers (reading in the
    main process) is represented as ``num_workers=1, worker=0``.
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        for name, minimum in (("world_size", 1), ("num_workers", 1), ("rank", 0), ("worker", 0)):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum))
        if self.rank >= self.world_size:
            raise InvalidArgumentError(f"rank must be < world_size ({self.world_size}), got {self.rank}")
        if self.worker >= self.num_workers:
            raise InvalidArgumentError(f"worker must be < num_workers ({self.num_workers}), got {self.worker}")

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> "World":
        """Detect the world of the calling process.

        Rank and world size come from the arguments when given (Horovod, Lightning, tf.distribute
        or plain multi-process users pass their own), else from ``RANK``/``WORLD_SIZE`` (torchrun),
        else from ``torch.distributed`` when it is initialised, else ``(0, 1)``. The worker comes
        from ``torch.utils.data.get_worker_info()`` when torch is already imported.
        """
        if (rank is None) != (world_size is None):
            raise InvalidArgumentError("pass both rank= and world_size=, or neither")
        if rank is None:
            rank, world_size = _from_env()
        worker, num_workers = 0, 1
        torch = sys.modules.get("torch")
        if torch is not None:
            info = torch.utils.data.get_worker_info()
            if info is not None:
                worker, num_workers = info.id, info.num_workers
        assert world_size is not None
        return cls(rank, world_size, worker, num_workers)

    def with_workers(self, worker: int, num_workers: int) -> "World":
        return World(self.rank, self.world_size, worker, num_workers)


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
