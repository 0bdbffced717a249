"""Exactly-once read plans: a pure function of (row counts, spec, world, epoch, resume history).

Vocabulary
----------
* **unit** — a range of consecutive eligible rows (pass the filter/predicate) inside one row
  group: the whole row group, or with ``shuffle`` a part of it (see :func:`split_units`).
* **row id** — index of an eligible row in storage order (unit by unit).
* **epoch sequence** — every row id once, in the epoch's order: units are permuted by
  ``(seed, epoch)`` when shuffling. After a resume the sequence is "what the interrupted run had
  not consumed yet", in the same order.
* **rank span** — a contiguous slice of the epoch sequence per rank, sized by the remainder
  policy: ``"drop"`` (every rank ``N // R`` rows), ``"pad"`` (every rank ``ceil(N / R)``; missing
  rows repeat rows from the start of the sequence and are flagged as padding), ``"uneven"``
  (``N // R`` or one more: every row exactly once, counts differ by at most one).
* **window** — ``window_rows`` consecutive rows of a rank span (a multiple of the batch size, at most
  ``MAX_WINDOW_ROWS`` unless one batch is larger). A
  window is the unit of work of DataLoader workers (each worker gets a contiguous block of
  windows, ``num_windows * w // num_workers`` up to ``num_windows * (w + 1) // num_workers``, so
  it reads one stretch of storage) and the shuffle buffer: with ``shuffle`` its rows are
  permuted by ``(seed, epoch, segment, rank, k)`` and cut into batches; inside a batch rows keep
  their storage order (a cheap, sequential gather). Memory per worker is bounded by one window.
* **loader order** — PyTorch's DataLoader yields worker batches round-robin (batch ``j`` of every
  worker in worker order, then ``j + 1``), skipping exhausted workers; this order is what a
  training loop consumes, and what a resume counts.

Everything here is deterministic and free of I/O, so it is tested exhaustively without processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ._checks import check_int
from .errors import InvalidArgumentError

__all__ = [
    "MAX_RUN_ROWS",
    "MAX_WINDOW_ROWS",
    "REMAINDERS",
    "PlanSpec",
    "Segment",
    "EpochPlan",
    "rank_span",
    "loader_order",
]

REMAINDERS = ("drop", "pad", "uneven")
MAX_WINDOW_ROWS = 1 << 20  # rows of a window at most (planning it takes ~50 bytes a row), unless a batch is larger
# rows of a storage-contiguous run of batches a reader holds before reading them (their row ids):
# bounded, so neither a long epoch nor a manifest claiming more rows than its files hold fills memory
MAX_RUN_ROWS = 1 << 20


@dataclass(frozen=True)
class PlanSpec:
    """What every rank and worker must agree on to compute the same plan."""

    batch_size: int
    shuffle: bool = False
    seed: int = 0
    remainder: str = "drop"
    drop_last: bool = False
    window_rows: int = 0  # 0: 8 batches

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size)
        check_int("seed", self.seed, 0)
        if self.remainder not in REMAINDERS:
            raise InvalidArgumentError(f"remainder must be one of {REMAINDERS}, got {self.remainder!r}")
        w = self.window_rows or 8 * self.batch_size
        check_int("window_rows", w)
        if w % self.batch_size:
            w = (w // self.batch_size + 1) * self.batch_size
        if w > MAX_WINDOW_ROWS:
            # a window's row ids take 8 bytes a row: never let a window (often sized from the
            # manifest's bytes per row, which a manifest can understate) allocate more than this
            w = max(self.batch_size, MAX_WINDOW_ROWS // self.batch_size * self.batch_size)
        object.__setattr__(self, "window_rows", int(w))

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "shuffle": self.shuffle, "seed": self.seed,
                "remainder": self.remainder, "drop_last": self.drop_last, "window_rows": self.window_rows}


@dataclass(frozen=True)
class Segment:
    """A finished part of an interrupted epoch: ``consumed_batches`` loader batches per rank were
    consumed by a run with this world shape."""

    world_size: int
    num_workers: int
    consumed_batches: int

    def __post_init__(self) -> None:
        check_int("world_size", self.world_size)
        check_int("num_workers", self.num_workers)
        check_int("consumed_batches", self.consumed_batches, 0)


def rank_span(n: int, world_size: int, rank: int, remainder: str) -> tuple[int, int, int]:
    """``(start, real_rows, pad_rows)`` of ``rank``'s slice of an ``n``-row sequence."""
    if remainder == "drop":
        q = n // world_size
        return rank * q, q, 0
    if remainder == "uneven":
        q, rem = divmod(n, world_size)
        return rank * q + min(rank, rem), q + (1 if rank < rem else 0), 0
    q = -(-n // world_size) if n else 0
    start = min(rank * q, n)
    real = min(start + q, n) - start
    return start, real, q - real


def loader_order(batches_per_worker: Sequence[int]) -> list[tuple[int, int]]:
    """``(worker, j)`` in the order a DataLoader yields them: round-robin, exhausted workers skipped."""
    out: list[tuple[int, int]] = []
    most = max(batches_per_worker, default=0)
    for j in range(most):
        for w, n in enumerate(batches_per_worker):
            if j < n:
                out.append((w, j))
    return out


MIN_UNITS = 32  # a shuffled epoch permutes about this many row ranges when row groups are few


def split_units(counts: np.ndarray, batch_size: int) -> np.ndarray:
    """Row counts of the units a shuffled epoch permutes.

    With few, large row groups (small rows: a default 8 MiB row group holds ~100k of them),
    permuting whole row groups would leave the epoch almost in storage order. When fewer than
    ``MIN_UNITS // 2`` row groups hold rows, each is cut into near-equal consecutive ranges of at
    most ``max(batch_size, ceil(total / MIN_UNITS))`` rows, so every window draws from several
    places in the dataset. With more row groups they stay whole: cutting them would make windows
    read more row groups for no gain in mixing (measured: a 35% slower shuffled read of 32 image
    row groups). Row ids keep their storage order; only the order of the ranges changes."""
    counts = np.asarray(counts, dtype=np.int64)
    if int((counts > 0).sum()) >= MIN_UNITS // 2:
        return counts
    cap = max(int(batch_size), -(-int(counts.sum()) // MIN_UNITS), 1)
    if not len(counts) or int(counts.max()) <= cap:
        return counts
    pieces = np.maximum(1, -(-counts // cap))
    whole = np.repeat(counts, pieces)
    parts = np.repeat(pieces, pieces)
    index = np.arange(len(whole)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    return whole // parts + (index < whole % parts)


def unit_order(n_units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n_units, dtype=np.int64)
    return np.random.default_rng((seed, epoch, 0x5EED)).permutation(n_units).astype(np.int64)


@dataclass
class _Sequence:
    """The epoch sequence of row ids: implicit (permuted units) or explicit (after a resume)."""

    counts: np.ndarray
    order: np.ndarray
    explicit: np.ndarray | None = None
    _starts: np.ndarray = field(init=False)
    _cum: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        ordered = self.counts[self.order]
        self._cum = np.concatenate([[0], np.cumsum(ordered)]).astype(np.int64)

    def __len__(self) -> int:
        return int(len(self.explicit)) if self.explicit is not None else int(self._cum[-1])

    def ids(self, positions: np.ndarray) -> np.ndarray:
        """Row ids at the given sequence positions."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.explicit is not None:
            return self.explicit[positions]
        k = np.searchsorted(self._cum, positions, side="right") - 1
        units = self.order[k]
        return self._starts[units] + (positions - self._cum[k])

    def all_ids(self) -> np.ndarray:
        return self.ids(np.arange(len(self), dtype=np.int64))


class EpochPlan:
    """The complete plan of one epoch for every rank and worker of a world.

    Parameters
    ----------
    counts : array of int
        Eligible rows of each row group, in storage order (split into smaller units when shuffling).
    spec : PlanSpec
    epoch : int
    world_size : int
    history : sequence of Segment
        Parts of this epoch already consumed (by possibly different world shapes), oldest first.
    """

    def __init__(self, counts: Sequence[int] | np.ndarray, spec: PlanSpec, epoch: int, world_size: int,
                 history: Sequence[Segment] = ()) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 1 or (counts < 0).any():
            raise InvalidArgumentError("counts must be a 1-D array of non-negative row counts")
        self.counts = split_units(counts, spec.batch_size) if spec.shuffle else counts
        self.spec = spec
        self.epoch = check_int("epoch", epoch, 0)
        self.world_size = check_int("world_size", world_size)
        self.history = tuple(history)
        seq = _Sequence(self.counts, unit_order(len(self.counts), spec.seed, self.epoch, spec.shuffle))
        for i, seg in enumerate(self.history):
            consumed = _consumed_ids(seq, spec, self.epoch, i, seg)
            remaining = seq.all_ids()
            remaining = remaining[~np.isin(remaining, consumed)]
            seq = _Sequence(self.counts, seq.order, explicit=remaining)
        self.sequence = seq
        self.segment = len(self.history)

    @property
    def total_rows(self) -> int:
        """Rows of the (remaining) epoch sequence."""
        return len(self.sequence)

    # -- per rank ---------------------------------------------------------------------------------
    def rank_rows(self, rank: int) -> tuple[int, int]:
        """``(real_rows, pad_rows)`` of ``rank`` before ``drop_last``."""
        _, real, pad = rank_span(len(self.sequence), self.world_size, rank, self.spec.remainder)
        return real, pad

    def rows_used(self, rank: int) -> int:
        real, pad = self.rank_rows(rank)
        m = real + pad
        return (m // self.spec.batch_size) * self.spec.batch_size if self.spec.drop_last else m

    def num_batches(self, rank: int) -> int:
        """Loader batches of ``rank`` this epoch (equal on every rank unless ``remainder='uneven'``)."""
        bs = self.spec.batch_size
        m = self.rows_used(rank)
        return m // bs if self.spec.drop_last else -(-m // bs)

    def num_windows(self, rank: int) -> int:
        return -(-self.rows_used(rank) // self.spec.window_rows)

    def window_rows_of(self, rank: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row ids, is_pad)`` of window ``k`` of ``rank``, in output order."""
        start, real, _ = rank_span(len(self.sequence), self.world_size, rank, self.spec.remainder)
        used = self.rows_used(rank)
        lo = k * self.spec.window_rows
        hi = min(lo + self.spec.window_rows, used)
        if lo >= hi:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        local = np.arange(lo, hi, dtype=np.int64)
        is_pad = local >= real
        n = len(self.sequence)
        positions = np.where(is_pad, (start + local) % max(n, 1), start + local)
        ids = self.sequence.ids(positions)
        if self.spec.shuffle:
            perm = np.random.default_rng((self.spec.seed, self.epoch, self.segment, rank, k)).permutation(hi - lo)
            # Which rows form a batch is random; inside a batch rows keep storage order, so a
            # batch is gathered with one sequential copy per row group (order inside a batch does
            # not matter to a gradient step).
            bs = self.spec.batch_size
            for b in range(0, len(perm), bs):
                part = perm[b:b + bs]
                part.sort()
            ids, is_pad = ids[perm], is_pad[perm]
        return ids, is_pad

    # -- per worker -------------------------------------------------------------------------------
    def worker_windows(self, rank: int, worker: int, num_workers: int) -> list[int]:
        """Windows of one worker: a contiguous block (block sizes differ by at most one window)."""
        k = self.num_windows(rank)
        return list(range(k * worker // num_workers, k * (worker + 1) // num_workers))

    def worker_num_batches(self, rank: int, worker: int, num_workers: int) -> int:
        bs = self.spec.batch_size
        total = 0
        used = self.rows_used(rank)
        for k in self.worker_windows(rank, worker, num_workers):
            rows = min(self.spec.window_rows, used - k * self.spec.window_rows)
            total += rows // bs if self.spec.drop_last else -(-rows // bs)
        return total

    def worker_batches(self, rank: int, worker: int, num_workers: int,
                       skip: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(window, row ids, is_pad)`` for each batch of one worker, skipping ``skip``."""
        bs = self.spec.batch_size
        done = 0
        per_window = self.spec.window_rows // bs
        for k in self.worker_windows(rank, worker, num_workers):
            if done + per_window <= skip:
                done += per_window
                continue
            ids, pad = self.window_rows_of(rank, k)
            for b in range(0, len(ids), bs):
                if done >= skip:
                    yield k, ids[b:b + bs], pad[b:b + bs]
                done += 1

    def loader_batches(self, rank: int, num_workers: int) -> list[tuple[int, int]]:
        """``(worker, j)`` of every batch of ``rank`` in DataLoader order."""
        return loader_order([self.worker_num_batches(rank, w, num_workers) for w in range(num_workers)])

    def rank_stream(self, rank: int, num_workers: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(row ids, is_pad)`` per batch of ``rank`` in DataLoader order (for audits and tests)."""
        gens = [self.worker_batches(rank, w, num_workers) for w in range(num_workers)]
        for w, _ in self.loader_batches(rank, num_workers):
            _, ids, pad = next(gens[w])
            yield ids, pad


def _consumed_ids(seq: _Sequence, spec: PlanSpec, epoch: int, segment: int, seg: Segment) -> np.ndarray:
    """Real (non-pad) row ids consumed by every rank's first ``seg.consumed_batches`` loader batches."""
    plan = EpochPlan.__new__(EpochPlan)
    plan.counts, plan.spec, plan.epoch = seq.counts, spec, epoch
    plan.world_size, plan.history, plan.sequence, plan.segment = seg.world_size, (), seq, segment
    out = []
    for rank in range(seg.world_size):
        for i, (ids, pad) in enumerate(plan.rank_stream(rank, seg.num_workers)):
            if i >= seg.consumed_batches:
                break
            out.append(ids[~pad])
    return np.concatenate(out) if out else np.zeros(0, np.int64)
