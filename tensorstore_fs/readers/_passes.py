"""Which epoch a pass over a :class:`~tensorstore_fs.readers.torch.TorchDataset` reads.

A *pass* is one ``iter()`` of the dataset: in this process (``num_workers=0``) or in each
DataLoader worker. The process that owns the dataset object never sees its workers' passes
(DataLoader calls nothing on the dataset when it creates an iterator), and workers are fresh
copies each epoch unless they are persistent; a pass may also end anywhere: exhausted, stopped
after ``len(loader)`` batches (PyTorch Lightning) or broken off. So every copy of the dataset
shares one small board in shared memory (a torch tensor: shared with forked, spawned and
persistent workers alike), on which

* a *pin* — ``set_epoch`` or a rank-level ``load_state_dict`` in the owning process — says where
  the next pass starts (epoch and interrupted segments), and
* each worker slot records the last pass that worker started: its sequence number, the
  DataLoader's base seed of that pass (the same for all workers of one DataLoader iterator), its
  first epoch, and whether it started at the pin.

A worker starting a pass joins the newest pass if another worker of the same DataLoader iterator
(same base seed) started it and this worker has not; otherwise it starts a new one: at the pin if
no pass started there yet, else right after the newest pass (its first epoch plus the epochs one
pass covers). All workers of a pass start at the same time (DataLoader creates the iterator of
every worker before asking any for data; persistent workers acknowledge each new pass), and
workers that start together compute the same new pass, so the board needs no lock: a slot's
sequence number is written last, after the fields it vouches for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..plan import Segment

__all__ = ["IN_PROCESS", "MAX_SEGMENTS", "MAX_WORKERS", "PassBoard", "Pin", "Started", "View"]

MAX_WORKERS = 256  # DataLoader workers one dataset object can serve (a slot each)
MAX_SEGMENTS = 64  # interrupted segments a pinned (resumed) epoch may carry
IN_PROCESS = MAX_WORKERS  # the slot of passes read in the process itself (num_workers=0)

# header: the pin
_PIN_SEQ, _PIN_EPOCH, _PIN_UNFOLDED, _PIN_NSEG, _SEGS = 0, 1, 2, 3, 4
_HEADER = _SEGS + 3 * MAX_SEGMENTS
# one slot per worker (and one for in-process passes)
_SEQ, _SEED, _EPOCH, _PINSEQ, _PINPASS, _REACHED = range(6)
_FIELDS = 6


@dataclass(frozen=True)
class Pin:
    """Where the next pass starts after ``set_epoch`` / ``load_state_dict``: ``epoch`` after the
    interrupted segments ``history``; ``unfolded``: from a rank-level state (its last segment is
    the progress it saved)."""

    seq: int
    epoch: int
    history: tuple[Segment, ...]
    unfolded: bool


@dataclass(frozen=True)
class Started:
    """A pass as a worker (or this process) starts it: its sequence number, first epoch and, for
    a pass starting at the pin, the pin."""

    seq: int
    epoch: int
    pin: Pin | None


@dataclass(frozen=True)
class View:
    """The owning process's view: the pass in progress (or last started; the pin when none
    started since) and the first epoch of the next pass."""

    current_epoch: int
    current_pin: Pin | None
    next_epoch: int
    next_pin: Pin | None
    newest_seq: int


class PassBoard:
    """The shared board of one dataset object and all its copies (see the module docstring)."""

    def __init__(self) -> None:
        self._attach(torch.zeros(_HEADER + (MAX_WORKERS + 1) * _FIELDS, dtype=torch.int64).share_memory_())
        self.publish(0, (), unfolded=False)

    def _attach(self, t: torch.Tensor) -> None:
        self._t = t
        self._a = t.numpy()
        self._slots = self._a[_HEADER:].reshape(MAX_WORKERS + 1, _FIELDS)

    # pickled for spawned/forkserver workers by torch's reductions (the same shared memory);
    # a plain pickle or deepcopy gets its own board, moved to shared memory for its own workers
    def __getstate__(self) -> dict[str, Any]:
        return {"t": self._t}

    def __setstate__(self, state: dict[str, Any]) -> None:
        t = state["t"]
        self._attach(t if t.is_shared() else t.clone().share_memory_())

    # -- the pin --------------------------------------------------------------------------------
    @staticmethod
    def check_history(history: Sequence[Segment]) -> None:
        if len(history) > MAX_SEGMENTS:
            raise InvalidArgumentError(
                f"stream state has {len(history)} interrupted segments in one epoch; at most {MAX_SEGMENTS} are supported")

    def publish(self, epoch: int, history: Sequence[Segment], unfolded: bool) -> None:
        """Pin the next pass to ``epoch`` after ``history`` (fields first, the sequence last)."""
        self.check_history(history)
        a = self._a
        a[_PIN_EPOCH], a[_PIN_UNFOLDED], a[_PIN_NSEG] = epoch, int(unfolded), len(history)
        for i, s in enumerate(history):
            a[_SEGS + 3 * i: _SEGS + 3 * i + 3] = (s.world_size, s.num_workers, s.consumed_batches)
        a[_PIN_SEQ] = a[_PIN_SEQ] + 1

    def pin(self) -> Pin:
        a = self._a
        seq = int(a[_PIN_SEQ])
        n = int(a[_PIN_NSEG])
        segs = a[_SEGS: _SEGS + 3 * n].reshape(n, 3).tolist()
        return Pin(seq, int(a[_PIN_EPOCH]), tuple(Segment(*s) for s in segs), bool(a[_PIN_UNFOLDED]))

    # -- passes ---------------------------------------------------------------------------------
    def begin(self, slot: int, seed: int, epochs_per_pass: int, endless: bool,
              local_epoch: int | None = None) -> Started:
        """Start a pass in ``slot`` (a DataLoader worker id, or ``IN_PROCESS``) for a DataLoader
        iterator of base seed ``seed``; ``local_epoch``: this worker restores its own state (a
        worker-level state) and starts there."""
        slots = self._slots.copy()
        pin = self.pin()
        mine = int(slots[slot, _SEQ])
        top = int(slots[:, _SEQ].max())
        others = np.arange(len(slots)) != slot
        join = others & (slots[:, _SEQ] == top) & (slots[:, _SEED] == seed) & (top > mine) & (top > 0)
        started = slots[:, _SEQ] > 0
        if join.any() and slot != IN_PROCESS:
            row = slots[int(np.flatnonzero(join)[0])]
            at_pin = bool(row[_PINPASS]) and int(row[_PINSEQ]) == pin.seq
            seq, epoch, pin_pass = top, int(row[_EPOCH]), at_pin
        elif local_epoch is not None:
            seq, epoch, pin_pass = top + 1, local_epoch, False
        elif not (started & (slots[:, _PINSEQ] == pin.seq)).any():
            seq, epoch, pin_pass = top + 1, pin.epoch, True
        else:
            newest = slots[:, _SEQ] == top
            last = int(slots[newest, _REACHED].max()) if endless else int(slots[newest, _EPOCH][0]) + epochs_per_pass - 1
            seq, epoch, pin_pass = top + 1, last + 1, False
        if local_epoch is not None:
            epoch, pin_pass = local_epoch, False
        row = self._slots[slot]
        row[_SEED], row[_EPOCH], row[_PINSEQ], row[_PINPASS], row[_REACHED] = seed, epoch, pin.seq, int(pin_pass), epoch
        row[_SEQ] = seq
        return Started(seq, epoch, pin if pin_pass else None)

    def reach(self, slot: int, epoch: int) -> None:
        """The pass in ``slot`` reads ``epoch`` now (an endless pass's next one starts after it)."""
        self._slots[slot, _REACHED] = max(int(self._slots[slot, _REACHED]), epoch)

    def newest(self) -> int:
        return int(self._slots[:, _SEQ].max())

    def view(self, epochs_per_pass: int, endless: bool) -> View:
        slots = self._slots.copy()
        pin = self.pin()
        started = slots[:, _SEQ] > 0
        top = int(slots[:, _SEQ].max())
        if not (started & (slots[:, _PINSEQ] == pin.seq)).any():  # nothing started since the pin
            return View(pin.epoch, pin, pin.epoch, pin, top)
        newest = slots[:, _SEQ] == top
        first = int(slots[newest, _EPOCH][0])
        at_pin = bool(slots[newest, _PINPASS][0])
        last = int(slots[newest, _REACHED].max()) if endless else first + epochs_per_pass - 1
        return View(first, pin if at_pin else None, last + 1, None, top)
