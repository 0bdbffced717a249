"""Planned streaming: read exactly the rows an :class:`~tensorstore_fs.plan.EpochPlan` assigns.

The framework adapters (``readers.torch``, ``readers.tf``) are thin layers over
:class:`PlannedStream`, so every framework reads the same rows in the same order.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .dataset import Dataset
from .encoding import decode_column, storage_columns
from .errors import CorruptDatasetError, InvalidArgumentError
from .plan import EpochPlan, PlanSpec, Segment
from .predicates import Predicate
from .scan import RowGroupRef, Scanner, all_row_groups, read_batches

__all__ = ["Selection", "PlannedStream", "PAD_COLUMN", "ROW_ID_COLUMN", "STATE_FORMAT"]

logger = logging.getLogger(__name__)

PAD_COLUMN = "__pad__"
ROW_ID_COLUMN = "__row_id__"
STATE_FORMAT = "tensorstore_fs.stream_state"
DEFAULT_WINDOW_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Selection:
    """Eligible rows of every row group after a filter/predicate (every row when there is none).

    ``masks[u]`` is a bit-packed boolean mask of row group ``u``'s rows, or None for all rows.
    Computed once (it reads only the filter's columns) and shipped to workers: about one bit per row.
    """

    counts: np.ndarray
    masks: tuple[bytes | None, ...]
    rows: tuple[int, ...]

    @classmethod
    def compute(cls, ds: Dataset, filter: Any = None, predicate: Predicate | None = None) -> "Selection":
        refs = all_row_groups(ds.manifest)
        rows = tuple(r.rows for r in refs)
        if filter is None and predicate is None:
            return cls(np.asarray(rows, dtype=np.int64), (None,) * len(refs), rows)
        scanner = Scanner(ds.storage, ds.manifest, columns=[ds.schema.names[0]], filter=filter, predicate=predicate)
        counts = np.zeros(len(refs), dtype=np.int64)
        masks: list[bytes | None] = [b""] * len(refs)  # pruned: no rows
        index = {(r.shard, r.row_group): i for i, r in enumerate(refs)}
        for ref, hits in scanner.matches():
            u = index[(ref.shard, ref.row_group)]
            if hits is None or len(hits) == ref.rows:
                masks[u], counts[u] = None, ref.rows
            else:
                m = np.zeros(ref.rows, dtype=bool)
                m[hits] = True
                masks[u], counts[u] = np.packbits(m).tobytes(), len(hits)
        return cls(counts, tuple(masks), rows)

    @property
    def everything(self) -> bool:
        return all(m is None for m in self.masks)

    def local_rows(self, unit: int) -> np.ndarray | None:
        """Eligible row indices inside row group ``unit`` (None: all rows)."""
        m = self.masks[unit]
        if m is None:
            return None
        if not m:
            return np.zeros(0, np.int64)
        return np.flatnonzero(np.unpackbits(np.frombuffer(m, np.uint8), count=self.rows[unit]))


class _Files:
    """Open Parquet files of one worker (opened lazily, in the worker process)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self._open: dict[int, tuple[pq.ParquetFile, Any]] = {}

    def get(self, shard: int) -> pq.ParquetFile:
        if shard not in self._open:
            if len(self._open) >= 4:
                self.close_one()
            rel = self.ds.shards[shard].path
            source = self.ds.storage.open_input(rel)
            try:
                pf = pq.ParquetFile(source)
            except (pa.ArrowInvalid, OSError) as e:
                source.close()
                raise CorruptDatasetError(f"{self.ds.url}/{rel}: not a readable Parquet file: {e}") from None
            self._open[shard] = (pf, source)
        return self._open[shard][0]

    def close_one(self) -> None:
        shard = next(iter(self._open))
        self._open.pop(shard)[1].close()

    def close(self) -> None:
        while self._open:
            self.close_one()


class PlannedStream:
    """Reads one (rank, worker)'s share of an epoch as decoded numpy batches.

    Parameters
    ----------
    ds : Dataset
    spec : PlanSpec
    columns : list of str, optional
    selection : Selection
        Eligible rows (from the filter/predicate).
    pad_variable : bool
        Decode variable-shape fields zero-padded (plus ``<name>__shape``) instead of as lists.
    with_row_ids : bool
        Add ``__row_id__``: each row's global index in the dataset version (for audits).
    """

    def __init__(self, ds: Dataset, spec: PlanSpec, columns: Sequence[str] | None, selection: Selection,
                 *, pad_variable: bool = False, with_row_ids: bool = False) -> None:
        self.ds = ds
        self.spec = spec
        self.columns = list(columns) if columns is not None else ds.schema.names
        for c in self.columns:
            if c not in ds.schema:
                raise InvalidArgumentError(f"unknown column {c!r}; dataset fields are {ds.schema.names}")
        if not self.columns:
            raise InvalidArgumentError("columns must name at least one field (or be None for all)")
        self.selection = selection
        self.pad_variable = pad_variable
        self.with_row_ids = with_row_ids
        self._storage_cols = storage_columns(ds.schema, self.columns)
        refs = all_row_groups(ds.manifest)
        self._unit_shard = np.array([r.shard for r in refs], dtype=np.int64)
        self._unit_rg = np.array([r.row_group for r in refs], dtype=np.int64)
        self._unit_first = np.array([r.first_row for r in refs], dtype=np.int64)
        self._id_starts = np.concatenate([[0], np.cumsum(selection.counts)]).astype(np.int64)

    def plan(self, epoch: int, world_size: int, history: Sequence[Segment] = ()) -> EpochPlan:
        return EpochPlan(self.selection.counts, self.spec, epoch, world_size, history)

    # -- id -> storage ----------------------------------------------------------------------------
    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row ids -> (unit, local row inside the row group)."""
        units = np.searchsorted(self._id_starts, ids, side="right") - 1
        local = ids - self._id_starts[units]
        if not self.selection.everything:
            local = local.copy()
            for u in np.unique(units):
                rows = self.selection.local_rows(int(u))
                if rows is not None:
                    sel = units == u
                    local[sel] = rows[local[sel]]
        return units, local

    def row_ids(self, ids: np.ndarray) -> np.ndarray:
        """Global dataset row index of each row id."""
        units, local = self._locate(ids)
        return self._unit_first[units] + local

    # -- reading ----------------------------------------------------------------------------------
    def iter_worker(self, plan: EpochPlan, rank: int, worker: int, num_workers: int,
                    skip: int = 0) -> Iterator[dict[str, Any]]:
        """Decoded batches of one worker, skipping its first ``skip`` batches."""
        files = _Files(self.ds)
        cache: dict[int, pa.Table] = {}
        try:
            for window, group in itertools.groupby(plan.worker_batches(rank, worker, num_workers, skip),
                                                   key=lambda t: t[0]):
                batches = [(ids, pad) for _, ids, pad in group]
                yield from self._window(files, cache, batches)
        finally:
            files.close()

    def _window(self, files: _Files, cache: dict[int, pa.Table],
                batches: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[dict[str, Any]]:
        all_ids = np.concatenate([ids for ids, _ in batches])
        any_pad = any(pad.any() for _, pad in batches)
        if (not any_pad and self.selection.everything and len(all_ids)
                and np.array_equal(all_ids, np.arange(all_ids[0], all_ids[0] + len(all_ids)))):
            tables = self._contiguous(files, int(all_ids[0]), [len(ids) for ids, _ in batches])
        else:
            tables = self._gathered(files, cache, all_ids, [len(ids) for ids, _ in batches])
        for (ids, pad), table in zip(batches, tables):
            yield self._decode(table, ids, pad)

    def _segments(self, first_id: int, total: int) -> list[tuple[int, list[int], int, int]]:
        """``(shard, row groups, rows to skip, rows to read)`` covering ids [first_id, first_id + total)."""
        u = int(np.searchsorted(self._id_starts, first_id, side="right") - 1)
        skip = first_id - int(self._id_starts[u])
        segs: list[tuple[int, list[int], int, int]] = []
        left = total
        while left > 0:
            shard = int(self._unit_shard[u])
            rgs: list[int] = []
            avail = -skip
            while u < len(self._unit_shard) and int(self._unit_shard[u]) == shard and avail < left:
                rgs.append(int(self._unit_rg[u]))
                avail += int(self.selection.counts[u])
                u += 1
            n = min(avail, left)
            segs.append((shard, rgs, skip, n))
            left -= n
            skip = 0
        return segs

    def _contiguous(self, files: _Files, first_id: int, sizes: list[int]) -> Iterator[pa.Table]:
        """Rows [first_id, first_id + sum(sizes)) in storage order, as exact-size batches decoded
        straight from Parquet (a batch is re-assembled only where it spans two shard files)."""
        cur, have, pending = 0, 0, []
        for shard, rgs, skip, nrows in self._segments(first_id, sum(sizes)):
            pieces, left, c, h = [], nrows, cur, have
            while left > 0:
                take = min(sizes[c] - h, left)
                pieces.append(take)
                left -= take
                h += take
                if h == sizes[c]:
                    c, h = c + 1, 0
            it = read_batches(files.get(shard), rgs, self._storage_cols, ([skip] if skip else []) + pieces, 1)
            try:
                if skip:
                    next(it)
                for want in pieces:
                    rb = next(it, None)
                    if rb is None or rb.num_rows != want:
                        raise CorruptDatasetError(f"{self.ds.url}: shard {shard} holds fewer rows than its manifest says")
                    pending.append(pa.Table.from_batches([rb]))
                    have += want
                    if have == sizes[cur]:
                        yield pending[0] if len(pending) == 1 else pa.concat_tables(pending)
                        cur, have, pending = cur + 1, 0, []
            finally:
                it.close()

    def _read_unit(self, files: _Files, cache: dict[int, pa.Table], u: int) -> pa.Table:
        if u not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            pf = files.get(int(self._unit_shard[u]))
            try:
                cache[u] = pf.read_row_group(int(self._unit_rg[u]), columns=self._storage_cols, use_threads=True)
            except (pa.ArrowInvalid, OSError) as e:
                raise CorruptDatasetError(f"{self.ds.url}: row group {u} unreadable: {e}") from None
        return cache[u]

    def _gathered(self, files: _Files, cache: dict[int, pa.Table], ids: np.ndarray,
                  sizes: list[int]) -> Iterator[pa.Table]:
        """Rows by id in any order: read the row groups they live in, then gather (one copy)."""
        units, local = self._locate(ids)
        needed = np.unique(units)
        tables = [self._read_unit(files, cache, int(u)) for u in needed]
        offsets = np.concatenate([[0], np.cumsum([t.num_rows for t in tables])]).astype(np.int64)
        where = offsets[np.searchsorted(needed, units)] + local
        combined = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        pos = 0
        for n in sizes:
            yield combined.take(pa.array(where[pos:pos + n]))
            pos += n

    def _decode(self, table: pa.Table, ids: np.ndarray, pad: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.columns:
            out.update(decode_column(table, self.ds.schema.field(name), pad=self.pad_variable))
        if self.spec.remainder == "pad":
            out[PAD_COLUMN] = pad
        if self.with_row_ids:
            out[ROW_ID_COLUMN] = self.row_ids(ids)
        return out
