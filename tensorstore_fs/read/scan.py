"""Reading committed row groups in storage order: exact filtering after pruning, re-batching.

The unit of work is a :class:`~tensorstore_fs.read.prune.RowGroupRef` (shard, row group). The
scanner prunes row groups against the manifest's min/max statistics before any file is opened
(:mod:`tensorstore_fs.read.prune`), reads the filter's scalar columns first, evaluates the
filter/predicate exactly, and reads the other columns only for row groups where some row matched.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from .._checks import check_int
from ..encoding import arrow_schema, decode_column, pad_rows, storage_columns
from ..errors import CorruptDatasetError, InvalidArgumentError, TensorstoreError
from ..manifest import Manifest
from ..parquet.batches import read_batches
from ..parquet.pages import locatable
from ..parquet.rowgroups import FILES, OpenFile, column_bytes
from ..predicates import Predicate
from ..ragged import check_shapes
from ..storage import Storage
from .options import ReadOptions
from .prune import RowGroupRef, all_row_groups, check_filter, filter_hint, prune
from .readahead import ReadAhead, Use, readahead_bytes, remote_file

__all__ = ["ScanStats", "Scanner", "open_shard", "predicate_mask"]

logger = logging.getLogger(__name__)

_IDX = "__row__"


@dataclass
class ScanStats:
    """What a scan touched (filled in while iterating)."""

    row_groups_total: int = 0
    row_groups_pruned: int = 0
    row_groups_read: int = 0
    files_opened: int = 0
    rows_scanned: int = 0
    rows_matched: int = 0
    bytes_read: int = 0
    opened_paths: list[str] = field(default_factory=list)


def open_shard(storage: Storage, manifest: Manifest, shard: int, expected: pa.Schema,
               readahead: ReadAhead | None = None) -> OpenFile:
    """Shard ``shard`` of a version checked out of the process's open files
    (:data:`~tensorstore_fs.parquet.rowgroups.FILES`: hand it back with ``FILES.checkin``) and
    checked against its manifest entry and the storage schema ``expected``. A shard of an object
    store is read by ranged requests (:class:`~tensorstore_fs.parquet.ranges.RangedFile`), served
    from what ``readahead`` fetched ahead where it did."""
    info = manifest.shards[shard]
    rel = info.path
    cache = storage.cache
    name = f"{storage.url}/{rel}"
    if cache is not None:  # a remote shard, read from the node-local copy (checked when it was filled)
        path = os.path.abspath(cache.fetch(storage, rel, info.bytes, info.crc32c))
        f = FILES.checkout(path, lambda: OpenFile(name, lambda: pa.memory_map(path, "r"), path))
    elif storage.is_local:
        path = os.path.abspath(storage.shard_path(rel))
        f = FILES.checkout(path, lambda: OpenFile(name, lambda: storage.open_input(rel), path))
    elif readahead is not None:
        f = OpenFile(name, lambda: readahead.file(shard))
    else:
        f = OpenFile(name, lambda: remote_file(storage, manifest, shard))
    try:
        f.check([g.rows for g in info.row_groups], info.rows, expected)
    except BaseException:
        f.close()
        raise
    return f


class Scanner:
    """An iterable over decoded batches of one dataset version.

    Build it with :meth:`tensorstore_fs.Dataset.scanner`; iterate it for dicts of numpy arrays.
    ``stats`` reports what the scan touched. Variable-shape fields come as ``options.variable``
    says: lists of arrays, padded, or :class:`~tensorstore_fs.ragged.RaggedRows`.

    Parameters
    ----------
    storage, manifest
        The dataset version.
    options : ReadOptions
        Columns, filter, predicate, batch size, ``drop_last`` and ``variable`` are used.
    row_groups : sequence of RowGroupRef, optional
        Read only these (all by default).
    storage_schema : pyarrow.Schema, optional
        The version's storage schema, when the caller has it already.
    rows_hint : int, optional
        The caller will consume at most that many rows (it changes how pages are decoded, never
        which rows come).
    """

    def __init__(
        self,
        storage: Storage,
        manifest: Manifest,
        options: ReadOptions,
        *,
        row_groups: Sequence[RowGroupRef] | None = None,
        storage_schema: pa.Schema | None = None,
        rows_hint: int | None = None,
    ) -> None:
        schema = manifest.schema
        self.storage = storage
        self.manifest = manifest
        self.schema = schema
        self.options = options
        self.columns = options.check(schema)
        self.filter = options.filter
        self.predicate: Predicate | None = options.predicate
        self.batch_size = options.batch_size
        self.variable = options.variable
        self.drop_last = options.drop_last
        self.stats = ScanStats()
        self._carry_need = 0
        self._readahead: ReadAhead | None = None
        # callers that will consume at most this many rows: small reads decode only the pages needed
        self._row_limit = check_int("rows_hint", rows_hint, allow_none=True)
        self._arrow_schema = storage_schema if storage_schema is not None else arrow_schema(schema)
        self._fields = [schema.field(n) for n in self.columns]
        self._storage_cols = storage_columns(schema, self.columns)
        if self.filter is not None:
            check_filter(self.filter, schema, self._arrow_schema)
        refs = list(row_groups) if row_groups is not None else all_row_groups(manifest)
        self.stats.row_groups_total = len(refs)
        self.row_groups = prune(manifest, refs, self.filter, self.predicate, self._arrow_schema)
        self.stats.row_groups_pruned = len(refs) - len(self.row_groups)

    @property
    def _filter_fields(self) -> list[str]:
        """Fields read in the first phase: every scalar field for a filter, plus predicate fields."""
        out: list[str] = []
        if self.filter is not None:
            out += [f.name for f in self.schema.fields if f.is_scalar]
        if self.predicate is not None:
            out += [f for f in self.predicate.fields if f not in out]
        return out

    # -- reading ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reading_ahead(self, fields: list[str]) -> Iterator[None]:
        """Read ``fields`` of the unpruned row groups ahead while the block runs (not for a
        read of a few rows: ``head()`` fetches only what it decodes)."""
        budget = readahead_bytes(self.options.readahead_bytes)
        if not budget or self._row_limit is not None or not fields:
            yield
            return
        self._readahead = ReadAhead(self.storage, self.manifest, storage_columns(self.schema, fields), budget)
        try:
            self._readahead.start(Use(r.shard, r.row_group, r.rows) for r in self.row_groups)
            yield
        finally:
            self._readahead.close()
            self._readahead = None

    def _done(self, ref: RowGroupRef) -> None:
        """Every row of ``ref`` was read (its read-ahead is released)."""
        if self._readahead is not None:
            self._readahead.consumed(ref.shard, ref.row_group, ref.rows)

    def _open(self, shard: int) -> OpenFile:
        f = open_shard(self.storage, self.manifest, shard, self._arrow_schema, self._readahead)
        self.stats.files_opened += 1
        self.stats.opened_paths.append(self.manifest.shards[shard].path)
        return f

    def _read(self, f: OpenFile, ref: RowGroupRef, fields: list[str], *, account: bool = True) -> pa.Table:
        cols = storage_columns(self.schema, fields)
        table = f.read_row_group(ref.row_group, cols)
        check_shapes(table, f.name, [(0, f"row group {ref.row_group}")], self.schema)  # before any row is decoded
        if account:
            self.stats.bytes_read += column_bytes(f.parquet, ref.row_group, cols)
        return table

    def _matching(self, f: OpenFile, ref: RowGroupRef) -> tuple[np.ndarray | None, pa.Table | None]:
        """Indices of matching rows (None = all) and the phase-one table."""
        ffields = self._filter_fields
        if not ffields:
            return None, None
        t = self._read(f, ref, ffields)
        keep = np.ones(t.num_rows, dtype=bool)
        if self.filter is not None:
            scalars = t.select([f.name for f in self.schema.fields if f.is_scalar])
            indexed = scalars.append_column(_IDX, pa.array(np.arange(t.num_rows, dtype=np.int64)))
            try:
                hit = indexed.filter(self.filter).column(_IDX).to_numpy()
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise InvalidArgumentError(
                    f"filter {self.filter} cannot be evaluated: {e}. {filter_hint(self.schema)}"
                ) from None
            keep[:] = False
            keep[hit] = True
        if self.predicate is not None and keep.any():
            cols: dict[str, Any] = {}
            for name in self.predicate.fields:
                cols.update(decode_column(t, self.schema.field(name)))
            keep &= predicate_mask(self.predicate, cols, t.num_rows)
        return np.flatnonzero(keep), t

    def row_group_tables(self, cut: bool = True) -> Iterator[pa.Table]:
        """Matching rows, in order, as storage-layout tables.

        Without a filter or predicate, each shard's row groups are read by
        :func:`~tensorstore_fs.parquet.batches.read_batches` as ``batch_size``-row batches
        (``cut=False``: as the row groups it reads whole, where it does). With one, row groups are
        read one by one (filter columns first).
        """
        with self._reading_ahead(self._filter_fields or self.columns):
            for shard, refs in itertools.groupby(self.row_groups, key=lambda r: r.shard):
                refs = list(refs)
                f = self._open(shard)
                try:
                    if self._filter_fields:
                        for ref in refs:
                            yield from self._row_group_table(f, ref)
                            self._done(ref)
                    else:
                        yield from self._stream_row_groups(f, refs, cut)
                finally:
                    FILES.checkin(f)

    def _direct(self, f: OpenFile) -> Callable[[int], dict[str, pa.Array]] | None:
        """For :func:`read_batches`: the fixed-shape tensor columns of a row group that a local
        file holds as one plain page, as arrays over a private copy-on-write map of those bytes
        (no decode, no copy; writes stay private to the batch; values that are not
        element-aligned in the file are copied once). None where nothing qualifies."""
        if f.path is None or not f.mapped:
            return None
        fixed = {name: (self.schema.field(name).row_nbytes, self.schema.field(name).numpy_dtype.itemsize)
                 for name in self.columns if locatable(self.schema.field(name))}
        if not fixed:
            return None

        def direct(rg: int) -> dict[str, pa.Array]:
            out: dict[str, pa.Array] = {}
            for name, (nbytes, itemsize) in fixed.items():
                view = f.private_values(rg, name, nbytes)
                if view is not None:
                    if f.values_offset(rg, name, nbytes) % itemsize:  # not element-aligned in the file: one aligning copy
                        view = view.copy()
                    out[name] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), len(view) // nbytes,
                                                                     [None, pa.py_buffer(view)])
            return out

        return direct

    def _stream_row_groups(self, f: OpenFile, refs: list[RowGroupRef], cut: bool = True) -> Iterator[pa.Table]:
        cols = self._storage_cols
        self._account(f, refs, cols)
        bs = self.batch_size
        first = self._carry_need if 0 < self._carry_need < bs else bs
        if first >= sum(r.rows for r in refs):  # one batch holds them all: no re-cutting, no copy
            for ref in refs:
                table = self._read(f, ref, self.columns, account=False)
                self.stats.rows_matched += table.num_rows
                yield table
            return
        ends = np.cumsum([r.rows for r in refs])
        done, read = 0, 0
        try:
            for rb in read_batches(f.parquet, [r.row_group for r in refs], cols, [first], bs, limit=self._row_limit,
                                   direct=self._direct(f), cut=cut, name=f.name, schema=self.schema):
                self.stats.rows_matched += rb.num_rows
                read += rb.num_rows
                # a row group is done once a later one is read from (the reader may still hold it)
                while done + 1 < len(refs) and ends[done] < read:
                    self._done(refs[done])
                    done += 1
                yield pa.Table.from_batches([rb])
            for ref in refs[done:]:
                self._done(ref)
        except TensorstoreError:  # a storage failure is not damage
            raise
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptDatasetError(f"{f.name}: unreadable: {e}") from None

    def _account(self, f: OpenFile, refs: Sequence[RowGroupRef], cols: list[str]) -> None:
        for ref in refs:
            self.stats.row_groups_read += 1
            self.stats.rows_scanned += ref.rows
            self.stats.bytes_read += column_bytes(f.parquet, ref.row_group, cols)

    def matches(self) -> Iterator[tuple[RowGroupRef, np.ndarray | None]]:
        """``(row group, matching local rows or None for all)`` for every unpruned row group.

        Reads only the filter's and predicate's columns (nothing when there is neither)."""
        if not self._filter_fields:
            for ref in self.row_groups:
                yield ref, None
            return
        with self._reading_ahead(self._filter_fields):
            for shard, refs in itertools.groupby(self.row_groups, key=lambda r: r.shard):
                f = self._open(shard)
                try:
                    for ref in refs:
                        self.stats.row_groups_read += 1
                        self.stats.rows_scanned += ref.rows
                        hits, _ = self._matching(f, ref)
                        self.stats.rows_matched += ref.rows if hits is None else len(hits)
                        self._done(ref)
                        yield ref, hits
                finally:
                    FILES.checkin(f)

    def _row_group_table(self, f: OpenFile, ref: RowGroupRef) -> Iterator[pa.Table]:
        self.stats.row_groups_read += 1
        self.stats.rows_scanned += ref.rows
        hits, first = self._matching(f, ref)
        if hits is not None and len(hits) == 0:
            return
        have = set(first.column_names) if first is not None else set()
        missing = [c for c in self.columns if c not in have]
        table = self._read(f, ref, missing) if missing else None
        if first is not None:
            for c in self.columns:
                if c in have:
                    for sc in storage_columns(self.schema, [c]):
                        table = first.select([sc]) if table is None else table.append_column(sc, first.column(sc))
        assert table is not None
        table = table.select(storage_columns(self.schema, self.columns))
        if hits is not None and len(hits) < ref.rows:
            table = table.take(pa.array(hits))
        self.stats.rows_matched += table.num_rows
        yield table

    def _spans(self) -> Iterator[tuple[pa.Table, int, int]]:
        """``(table, start, stop)``: each batch of exactly ``batch_size`` rows (the last may be
        shorter) as a row range of one table read, or of a table joined from the ends of two.

        Streaming reads are told how many rows complete the pending batch, so a batch is only
        re-assembled (copied) where it spans two shard files or a filtered row group. Reads hand over
        whole row groups where they decode them whole (see :func:`read_batches`).
        """
        bs = self.batch_size
        pending: list[pa.Table] = []
        have = 0
        self._carry_need = 0
        for t in self.row_group_tables(cut=False):
            start = 0
            n = t.num_rows
            if pending and have + n >= bs:
                take = bs - have
                pending.append(t.slice(0, take))
                yield pa.concat_tables(pending), 0, bs
                pending, have, start = [], 0, take
            while n - start >= bs:
                yield t, start, start + bs
                start += bs
            if start < n:
                pending.append(t.slice(start))
                have += n - start
            self._carry_need = bs - have if have else 0
        if pending and not self.drop_last:
            joined = pa.concat_tables(pending)
            yield joined, 0, joined.num_rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Decoded batches. Where a second batch comes from the same table read, the rest of that
        table is decoded once and later batches are slices of it: decoding costs a fixed few
        microseconds per column and call, which dominated batches of small rows. Padded
        variable-shape fields are decoded flat that way too and padded per batch (the padded
        width is each batch's own), as the loaders do."""
        padded = {f.name: f for f in self._fields if f.is_variable} if self.variable == "pad" else {}
        flat = self.variable != "list"

        def decode(table: pa.Table) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for f in self._fields:
                out.update(decode_column(table, f, flat=flat))
            return out

        def pad(batch: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in batch.items():
                if k in padded:
                    out.update(pad_rows(v, padded[k], self.options.max_padded_bytes))  # values, then __shape
                else:
                    out[k] = v
            return out

        parent: pa.Table | None = None
        rest: dict[str, Any] | None = None
        base = 0
        for t, a, b in self._spans():
            if t is not parent:
                parent, rest = t, None
                batch = decode(t if a == 0 and b == t.num_rows else t.slice(a, b - a))
            else:
                if rest is None:
                    base, rest = a, decode(t.slice(a))
                batch = {k: v[a - base:b - base] for k, v in rest.items()}
            yield pad(batch) if padded else batch


def predicate_mask(predicate: Predicate, cols: dict[str, Any], n: int) -> np.ndarray:
    mask = predicate(cols)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,):
        raise InvalidArgumentError(
            f"predicate {predicate!r} returned dtype {mask.dtype} shape {mask.shape}; expected bool ({n},)"
        )
    return mask

