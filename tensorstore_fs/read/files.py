"""The shard files one planned stream holds open in one process, and their read-ahead."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ..parquet.rowgroups import FILES, HELD_FILES, OpenFile
from .dataset import Dataset
from .prune import all_row_groups
from .readahead import ReadAhead, Use
from .scan import open_shard

__all__ = ["HeldFiles"]


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

    def read_ahead(self, runs: Iterable[list[tuple[np.ndarray, np.ndarray]]]) -> None:
        """Start reading ahead for a pass made of ``runs`` (each a list of ``(ids, pad)`` batches
        read together: a contiguous run, or a shuffled window whose row groups are all read when
        it starts)."""
        if self.readahead is not None:
            self.readahead.start(self._schedule(runs))

    def _schedule(self, runs: Iterable[list[tuple[np.ndarray, np.ndarray]]]) -> Iterator[Use]:
        """The row groups the runs read, in the order reads first touch them, run by run."""
        for run in runs:
            units = np.searchsorted(self._id_starts, np.concatenate([ids for ids, _ in run]), side="right") - 1
            uniq, first, counts = np.unique(units, return_index=True, return_counts=True)
            for j in np.argsort(first, kind="stable"):
                u = int(uniq[j])
                yield Use(int(self._unit_shard[u]), int(self._unit_rg[u]), int(counts[j]))

    def consumed(self, ids: np.ndarray) -> None:
        """The rows ``ids`` were handed out: read-ahead releases what no later batch needs."""
        if self.readahead is None or not len(ids):
            return
        units, counts = np.unique(np.searchsorted(self._id_starts, ids, side="right") - 1, return_counts=True)
        for u, n in zip(units.tolist(), counts.tolist()):
            self.readahead.consumed(int(self._unit_shard[u]), int(self._unit_rg[u]), n)

    def close(self) -> None:
        """Close the held files (their pages leave this process's resident set) and stop reading ahead."""
        while self._open:
            self._open.pop(next(iter(self._open))).close()
        if self.readahead is not None:
            self.readahead.close()
