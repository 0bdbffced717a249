"""The shard files one planned stream holds open in one process, and their read-ahead."""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np

from ..parquet.rowgroups import FILES, HELD_FILES, OpenFile
from .dataset import Dataset
from .prune import all_row_groups
from .readahead import ReadAhead, Use
from .scan import open_shard

__all__ = ["LOCAL_RUNS_AHEAD", "HeldFiles"]

LOCAL_RUNS_AHEAD = 2  # runs a local disk's read-ahead is planned ahead of the reader
Run = tuple[bool, list[tuple[np.ndarray, np.ndarray]]]  # (contiguous, [(ids, pad), ...])


class HeldFiles:
    """The shard files one stream holds checked out of :data:`~tensorstore_fs.parquet.rowgroups.FILES`
    (at most ``HELD_FILES``: the least recently opened goes back first), and the read-ahead that
    follows the stream's plan (``readahead``; None: off).

    Parameters
    ----------
    ds : Dataset
    readahead : ReadAhead, optional
    id_starts : array of int, optional
        The first row id of each row group of the version, plus the total (how the stream's row
        ids map to row groups; needed with ``readahead``).
    """

    def __init__(self, ds: Dataset, readahead: ReadAhead | None = None, id_starts: np.ndarray | None = None) -> None:
        self.ds = ds
        self.readahead = readahead
        self._open: dict[int, OpenFile] = {}
        self._id_starts = id_starts
        self._from: int | None = None  # first row id of the current contiguous run not reported yet
        self._bound = 0  # where the row group of the last report ends
        self._steps: dict[int, list[Use]] = {}  # the schedule of each window planned ahead, by id of its batches
        if readahead is not None:
            refs = all_row_groups(ds.manifest)
            self._unit_shard = np.array([r.shard for r in refs], dtype=np.int64)
            self._unit_rg = np.array([r.row_group for r in refs], dtype=np.int64)

    def get(self, shard: int) -> OpenFile:
        f = self._open.get(shard)
        if f is None:
            if len(self._open) >= HELD_FILES:
                FILES.checkin(self._open.pop(next(iter(self._open))))
            f = self._open[shard] = open_shard(self.ds.storage, self.ds.manifest, shard, self.ds.storage_schema,
                                               self.readahead)
        return f

    def read_ahead(self, runs: Callable[[], Iterator[Run]]) -> Iterator[Run]:
        """The runs of a pass (``runs()``: each ``(contiguous, batches)``, the ``(ids, pad)``
        batches read together: a contiguous run, or a shuffled window whose row groups are all
        read when it starts), with
        read-ahead following them. For an object store the whole pass is planned first (a second
        pass over the plan), so that a row group read by several windows is fetched once; a local
        disk is planned as the runs come, :data:`LOCAL_RUNS_AHEAD` runs ahead."""
        ra = self.readahead
        self._from = None
        if ra is None:
            yield from runs()
        elif ra.mode != "local":
            first = next(runs(), None)
            ra.start(self._schedule(runs()), now=self._together(first))
            yield from runs()
        else:
            ra.start()
            ahead: deque[Run] = deque()
            self._steps.clear()
            for run in runs():
                steps = list(self._schedule([run]))
                if not run[0]:  # kept for run_done (a window's row groups are counted once)
                    self._steps[id(run[1])] = steps
                ra.extend(steps, now=0 if run[0] else len(steps))
                ahead.append(run)
                if len(ahead) > LOCAL_RUNS_AHEAD:
                    yield ahead.popleft()
            yield from ahead

    def _together(self, run: Run | None) -> int:
        """Steps of ``run`` read at once when it starts (a gathered window's row groups)."""
        return 0 if run is None or run[0] else sum(1 for _ in self._schedule([run]))

    def _schedule(self, runs: Iterable[Run]) -> Iterator[Use]:
        """The row groups the runs read, run by run, in the order reads touch them: a contiguous
        run's in id order, a gathered window's in storage order (all at once, when it starts)."""
        for contiguous, run in runs:
            if contiguous:  # consecutive ids: the row groups are a range, each partly or wholly read
                lo, hi = int(run[0][0][0]), int(run[-1][0][-1]) + 1
                first, last = np.searchsorted(self._id_starts, (lo, hi - 1), side="right") - 1
                for u in range(int(first), int(last) + 1):
                    n = min(hi, int(self._id_starts[u + 1])) - max(lo, int(self._id_starts[u]))
                    yield Use(int(self._unit_shard[u]), int(self._unit_rg[u]), n)
                continue
            # a gathered window reads its row groups at once, in storage order, when it starts
            units = np.searchsorted(self._id_starts, np.concatenate([ids for ids, _ in run]), side="right") - 1
            uniq, counts = np.unique(units, return_counts=True)
            for u, c in zip(uniq.tolist(), counts.tolist()):
                yield Use(int(self._unit_shard[u]), int(self._unit_rg[u]), c)

    def consumed(self, ids: np.ndarray) -> None:
        """The consecutive rows ``ids`` of a contiguous run were handed out. Read-ahead hears of
        it when a row group is finished (what it releases), not batch by batch."""
        if self.readahead is None or not len(ids):
            return
        hi = int(ids[-1]) + 1
        if self._from is None:
            self._from = int(ids[0])
        elif hi < self._bound:  # still inside the row group the last report ended in
            return
        self._report(hi)

    def run_done(self, run: Run) -> None:
        """Every row of ``run`` was handed out; a gathered window's (not contiguous) may be reported
        as soon as its row groups are read, when it starts: nothing reads them again."""
        if self.readahead is None:
            return
        if run[0]:
            if self._from is not None:
                self._report(int(run[1][-1][0][-1]) + 1)
            self._from = None
            return
        steps = self._steps.pop(id(run[1]), None)
        for use in self._schedule([run]) if steps is None else steps:
            self.readahead.consumed(use.shard, use.row_group, use.rows)

    def _report(self, hi: int) -> None:
        """Report the rows from ``_from`` up to (not including) id ``hi``."""
        assert self._from is not None
        if hi > self._from:
            for use in self._schedule([(True, [(np.array([self._from, hi - 1]), None)])]):
                self.readahead.consumed(use.shard, use.row_group, use.rows)  # type: ignore[union-attr]
        self._from = hi
        u = int(np.searchsorted(self._id_starts, hi, side="right")) - 1
        self._bound = int(self._id_starts[min(u + 1, len(self._id_starts) - 1)])

    def close(self) -> None:
        """Close the held files (their pages leave this process's resident set) and stop reading ahead."""
        while self._open:
            self._open.pop(next(iter(self._open))).close()
        if self.readahead is not None:
            self.readahead.close()
