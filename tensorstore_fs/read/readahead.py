"""Plan-driven read-ahead: fetch the byte ranges a read will touch next while the consumer works.

A read knows its future: the planned stream's epoch plan, the scanner's pruned row groups. Before
a pass, the reader hands a :class:`ReadAhead` its *schedule*, the row groups it will read in
order with the rows it will take from each (:class:`Use`); while the consumer decodes one batch,
background threads fetch the next row groups' column chunks, up to ``budget`` bytes ahead. As
rows are consumed (:meth:`ReadAhead.consumed`), the row groups whose planned rows are all taken
are released and the schedule moves on. What "fetch" means depends on where the shards are:

* **an object store** (no node-local cache): the column chunks the read needs (nearby ones
  merged, large ones split into parallel requests) are fetched into memory and served to pyarrow
  by the shard's :class:`~tensorstore_fs.parquet.ranges.RangedFile`. A row group's bytes stay
  until the last of its planned rows is consumed, so a shuffled epoch that visits a row group
  several times (in different windows) fetches it once — as long as the bytes kept for such
  later visits fit in the budget; past it, the ones needed last are dropped and fetched again
  when their turn comes.
* **an object store with the node-local cache**: the next shards are downloaded into the cache.
* **a local disk**: the kernel is asked to read the next column chunks into the page cache
  (``posix_fadvise(WILLNEED)``), so mapped pages are not faulted in from a cold disk one by one.

Reads never wait for read-ahead they do not need: a read the schedule did not cover is served
directly (one ranged request for exactly the bytes asked for).

A shuffled window reads all its row groups when it starts, in storage order: its steps are
scheduled in that order, the first window's are fetched together (``now=``), and a window's are
reported consumed as soon as it has read them, so the fetching of the next window overlaps the
handing out of this one's batches.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pyarrow.parquet as pq

from .._checks import check_int
from ..errors import InvalidArgumentError
from ..manifest import Manifest
from ..parquet.ranges import TAIL_BYTES, RangedFile, chunk_ranges, split_ranges
from ..storage import Storage

__all__ = ["DEFAULT_READAHEAD_BYTES", "READAHEAD_THREADS", "ReadAhead", "Use", "readahead_bytes", "remote_file"]

logger = logging.getLogger(__name__)

DEFAULT_READAHEAD_BYTES = 256 * 2**20
READAHEAD_THREADS = 16  # concurrent fetches (requests in flight) per reading process
LOCAL_THREADS = 4  # a local disk is asked for fewer ranges at once (1, 4 and 16 measured alike here)


def readahead_bytes(value: int | None = None) -> int:
    """The read-ahead budget: ``value``, else ``$TSFS_READAHEAD_BYTES``, else
    :data:`DEFAULT_READAHEAD_BYTES`; 0 turns read-ahead off."""
    if value is None:
        env = os.environ.get("TSFS_READAHEAD_BYTES")
        if env is None:
            return DEFAULT_READAHEAD_BYTES
        try:
            value = int(env)
        except ValueError:
            raise InvalidArgumentError(f"TSFS_READAHEAD_BYTES must be a non-negative int, got {env!r}") from None
        name = "TSFS_READAHEAD_BYTES"
    else:
        name = "readahead_bytes"
    return check_int(name, value, 0)


def remote_file(storage: Storage, manifest: Manifest, shard: int, **kwargs: Any) -> RangedFile:
    """Shard ``shard`` of an object store as a :class:`RangedFile` (its size from the manifest:
    opening it makes no request; reads are ranged requests of exactly what is read)."""
    info = manifest.shards[shard]
    rel = info.path
    return RangedFile(f"{storage.url}/{rel}", info.bytes, lambda start, end: storage.read_range(rel, start, end),
                      **kwargs)


@dataclass(frozen=True)
class Use:
    """One step of a schedule: ``rows`` rows of row group ``row_group`` of shard ``shard``."""

    shard: int
    row_group: int
    rows: int


class _Unit:
    """A row group's fetch: what it holds (bytes counted against the budget) and its planned uses."""

    __slots__ = ("key", "uses", "cost", "pieces", "task", "resident")

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key
        self.uses: deque[list[int]] = deque()  # [schedule index, rows left] per planned use, in order
        self.cost = 0  # bytes held for it (estimated until its ranges are known)
        self.pieces: list[int] = []  # starts of its ranges attached to the shard's RangedFile
        self.task: Future | None = None
        self.resident = False


class ReadAhead:
    """Read-ahead for one reader in one process (see the module docstring).

    Parameters
    ----------
    storage : Storage
    manifest : Manifest
    columns : sequence of str
        The storage columns the reader decodes.
    budget : int
        Bytes fetched ahead of the consumer at most (plus the row group the consumer waits for).
    """

    def __init__(self, storage: Storage, manifest: Manifest, columns: Sequence[str], budget: int) -> None:
        self.storage = storage
        self.manifest = manifest
        self.columns = list(columns)
        self.budget = int(budget)
        self.mode = "local" if storage.is_local else "cached" if storage.cache is not None else "ranged"
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._files: dict[int, RangedFile] = {}
        self._footers: dict[int, Future] = {}  # shard -> future of its parsed footer (FileMetaData)
        self._cached: set[int] = set()  # shards whose download into the node-local cache is scheduled
        self._units: dict[tuple[int, int], _Unit] = {}
        self._by_shard: dict[int, set[_Unit]] = {}  # the units of each shard that are in _units
        self._resident: set[_Unit] = set()  # units fetched or being fetched
        self._schedule: list[_Unit] = []
        self._next = 0  # the schedule's next step to fetch for
        self._now = 0  # steps before this one are needed at once (fetched whatever the ramp says)
        self._held = 0
        self._window = 0  # bytes the pass may read ahead so far (grows to the budget)
        self.fetched_bytes = 0  # bytes requested by read-ahead (object stores)

    # -- the consumer's side -------------------------------------------------------------------------
    def file(self, shard: int) -> RangedFile:
        """The shard as the file its readers open (object stores without the cache): reads of
        the ranges fetched ahead are served from memory. It lives as long as this read-ahead;
        closing it (as a reader does) frees nothing read-ahead still holds."""
        with self._lock:
            f = self._files.get(shard)
            if f is None:
                f = self._files[shard] = remote_file(self.storage, self.manifest, shard, keep_open=True,
                                                     pending=lambda: self._pending(shard))
            return f

    def _pending(self, shard: int) -> list[Future]:
        """Fetch tasks of the shard's row groups not finished yet (they attach its ranges). The
        reader needs bytes of the shard that nothing holds: if the schedule's next step is of
        that shard, it is what the reader is at, and is fetched now whatever the budget says —
        read-ahead is behind the reader, so it also reads further ahead from now on."""
        with self._lock:
            pending = [u.task for u in self._by_shard.get(shard, ()) if u.task is not None and not u.task.done()]
            if not pending and self._next < len(self._schedule):
                unit = self._schedule[self._next]
                if unit.key[0] == shard and not unit.resident:
                    self._submit(unit)
                    self._next += 1
                    pending.append(unit.task)
                    self._window = min(self.budget, 2 * self._window + max(1, unit.cost))
                    self._pump()
            return pending

    def start(self, schedule: Iterable[Use] = (), now: int = 0) -> None:
        """Begin a pass reading ``schedule`` (what an earlier pass held and still needs is kept;
        :meth:`extend` adds later steps). Its first ``now`` steps are read at once (a gathered
        window's row groups): they are all fetched in parallel, whatever the ramp-up says."""
        with self._lock:
            self._cancel_pending()
            for u in self._units.values():
                u.uses.clear()
            self._schedule, self._next, self._window, self._now = [], 0, 0, 0
            self._add(schedule, now)
            for unit in [u for u in self._units.values() if not u.uses]:
                self._release(unit)
            self._pump()

    def extend(self, schedule: Iterable[Use], now: int = 0) -> None:
        """Append steps to the pass's schedule (a reader that plans as it goes); ``now`` as in
        :meth:`start`, for a schedule that starts empty."""
        with self._lock:
            self._add(schedule, now if not self._schedule else 0)
            self._pump()

    def _add(self, schedule: Iterable[Use], now: int = 0) -> None:
        for i, use in enumerate(schedule):
            if use.rows <= 0:
                continue
            key = (use.shard, use.row_group)
            unit = self._units.get(key)
            if unit is None:
                unit = self._units[key] = _Unit(key)
                self._by_shard.setdefault(use.shard, set()).add(unit)
            if self._schedule and self._schedule[-1] is unit:  # the same row group again: one step
                unit.uses[-1][1] += use.rows
            else:
                unit.uses.append([len(self._schedule), use.rows])
                self._schedule.append(unit)
            if i < now:
                self._now = len(self._schedule)

    def consumed(self, shard: int, row_group: int, rows: int) -> None:
        """The consumer took ``rows`` rows of a row group (in schedule order)."""
        with self._lock:
            unit = self._units.get((shard, row_group))
            if unit is None:
                return
            while rows > 0 and unit.uses:
                take = min(rows, unit.uses[0][1])
                unit.uses[0][1] -= take
                rows -= take
                if unit.uses[0][1] <= 0:  # a step done: read further ahead
                    unit.uses.popleft()
                    self._window = min(self.budget, 2 * self._window + max(1, unit.cost))
            if not unit.uses:
                self._release(unit)
            self._pump()

    def close(self) -> None:
        """Stop fetching and free everything held: once it returns, no request of this read-ahead
        is in flight (the pool's threads end)."""
        with self._lock:
            self._cancel_pending()
            for unit in list(self._units.values()):
                self._release(unit)
            self._schedule, self._next = [], 0
            self._units.clear()
            self._by_shard.clear()
            self._resident.clear()
            self._files.clear()
            self._footers.clear()
            self._cached.clear()
            pool, self._pool = self._pool, None
        if pool is not None:  # requests not started are dropped; those in flight end before close returns
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def held_bytes(self) -> int:
        """Bytes fetched (or being fetched) for steps not consumed yet."""
        return self._held

    # -- scheduling -----------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            threads = LOCAL_THREADS if self.mode == "local" else READAHEAD_THREADS
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tsfs-readahead")
        return self._pool

    def _estimate(self, unit: _Unit) -> int:
        """Bytes of a row group before its footer is read: its share of the shard's bytes."""
        info = self.manifest.shards[unit.key[0]]
        if self.mode == "cached":  # a shard is downloaded whole, once: its first row group pays
            return 0 if unit.key[0] in self._cached else info.bytes
        return max(1, info.bytes * info.row_groups[unit.key[1]].rows // max(1, info.rows))

    def _pump(self) -> None:
        """Fetch for the next steps while the budget allows (always the step the consumer is at).
        A pass starts with the first step alone and doubles how far it reads ahead with every
        step consumed, up to the budget: a read that stops early (a first batch, an abandoned
        iterator) fetched little more than it used."""
        if self.budget <= 0:
            return
        while self._next < len(self._schedule):
            unit = self._schedule[self._next]
            if unit.resident:
                self._next += 1
                continue
            cost = self._estimate(unit)
            if self._held and self._next >= self._now and self._held + cost > min(self.budget, self._window):
                if self._window < self.budget or not self._evict(cost):
                    return
            self._submit(unit, cost)
            self._next += 1

    def _submit(self, unit: _Unit, cost: int | None = None) -> None:
        unit.resident, unit.cost = True, self._estimate(unit) if cost is None else cost
        if self.mode == "cached":
            self._cached.add(unit.key[0])
        self._resident.add(unit)
        self._held += unit.cost
        unit.task = self._executor().submit(self._fetch, unit)

    def _evict(self, need: int) -> bool:
        """Drop row groups held only for uses beyond the fetched steps (those needed last first)
        until ``need`` more bytes fit; False if they do not."""
        later = sorted((u for u in self._resident if u.uses and u.uses[0][0] > self._next),
                       key=lambda u: u.uses[0][0], reverse=True)
        for unit in later:
            if self._held + need <= self.budget:
                break
            self._release(unit)
        return self._held + need <= self.budget

    def _release(self, unit: _Unit) -> None:
        if unit.resident:
            self._held -= unit.cost
            if unit.task is not None:
                unit.task.cancel()
            f = self._files.get(unit.key[0])
            for start in unit.pieces:
                if f is not None:
                    f.detach(start)
            unit.pieces, unit.cost, unit.resident, unit.task = [], 0, False, None
            self._resident.discard(unit)
        if not unit.uses and self._units.pop(unit.key, None) is not None:
            shard = unit.key[0]
            units = self._by_shard[shard]
            units.discard(unit)
            if not units:  # nothing of the shard is held or planned
                del self._by_shard[shard]
                self._footers.pop(shard, None)
                f = self._files.get(shard)
                if f is not None:
                    f.metadata = None
                    for start, _ in f.attached():
                        f.detach(start)

    def _cancel_pending(self) -> None:
        for unit in list(self._resident):
            if unit.task is not None and unit.task.cancel():
                self._held -= unit.cost
                unit.cost, unit.resident, unit.task = 0, False, None
                self._resident.discard(unit)

    # -- fetching (pool threads) -------------------------------------------------------------------
    def _fetch(self, unit: _Unit) -> None:
        try:
            if self.mode == "cached":
                self._cache_shard(unit.key[0])
            elif self.mode == "local":
                self._advise(unit)
            else:
                self._fetch_ranges(unit)
        except Exception as e:
            # the consumer's read finds a storage failure on the task (and raises it, rather than
            # waiting for the same timeout again); anything else it meets itself
            logger.debug("read-ahead of shard %d row group %d failed: %s", *unit.key, e)
            raise

    def _footer(self, shard: int) -> pq.FileMetaData:
        """The shard's parsed footer (one ranged read of its tail, shared by its row groups)."""
        with self._lock:
            fut = self._footers.get(shard)
            if fut is None:
                fut = self._footers[shard] = Future()
                owner = True
            else:
                owner = False
        if owner:
            try:
                rel = self.manifest.shards[shard].path
                if self.mode == "local":
                    md = pq.read_metadata(self.storage.shard_path(rel))
                else:
                    src = self.file(shard)
                    size = src.size()
                    start = max(0, size - TAIL_BYTES)
                    tail: Future = Future()
                    tail.set_result(self.storage.read_range(rel, start, size))
                    self.fetched_bytes += size - start
                    src.attach(start, size, tail)
                    md = src.metadata = pq.ParquetFile(src).metadata
                fut.set_result(md)
            except BaseException as e:
                fut.set_exception(e)
                with self._lock:
                    self._footers.pop(shard, None)
                raise
        return fut.result()

    def _fetch_ranges(self, unit: _Unit) -> None:
        shard, rg = unit.key
        md = self._footer(shard)
        f = self.file(shard)
        tail = max(0, f.size() - TAIL_BYTES)  # bytes from here on are held already (the footer read)
        ranges = split_ranges([(s, min(e, tail)) for s, e in chunk_ranges(md, rg, self.columns) if s < tail])
        rel = self.manifest.shards[shard].path
        with self._lock:
            if not unit.resident:  # released while the footer was read
                return
            self._held += sum(e - s for s, e in ranges) - unit.cost
            unit.cost = sum(e - s for s, e in ranges)
            for start, end in ranges:
                fut = self._executor().submit(self.storage.read_range, rel, start, end)
                f.attach(start, end, fut)
                unit.pieces.append(start)
            self.fetched_bytes += unit.cost

    def _advise(self, unit: _Unit) -> None:
        shard, rg = unit.key
        ranges = chunk_ranges(self._footer(shard), rg, self.columns)
        fd = os.open(self.storage.shard_path(self.manifest.shards[shard].path), os.O_RDONLY)
        try:
            for start, end in ranges:
                os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def _cache_shard(self, shard: int) -> None:
        info = self.manifest.shards[shard]
        self.storage.cache.fetch(self.storage, info.path, info.bytes, info.crc32c)  # type: ignore[union-attr]
