"""Reading committed row groups: pruning from manifest statistics, exact filtering, re-batching.

The unit of work is a :class:`RowGroupRef` (shard, row group). The scanner prunes row groups
against the manifest's min/max statistics before any file is opened, reads the filter's scalar
columns first, evaluates the filter/predicate exactly, and reads tensor columns only for row
groups where some row matched.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .encoding import arrow_schema, decode_column, pad_rows, storage_columns
from .errors import CorruptDatasetError, InvalidArgumentError
from .filemap import private_view
from .manifest import Manifest
from .pages import locatable, plain_values_offset
from .predicates import Predicate
from .schema import Schema
from .storage import Storage

__all__ = ["RowGroupRef", "ScanStats", "Scanner", "prune_row_groups", "all_row_groups"]

logger = logging.getLogger(__name__)

_IDX = "__row__"


@dataclass(frozen=True)
class RowGroupRef:
    """One row group of one shard, and where its rows sit in the dataset."""

    shard: int
    row_group: int
    first_row: int  # global index of its first row in the manifest's order
    rows: int


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


_CHECKED_FILES: "weakref.WeakSet[pq.ParquetFile]" = weakref.WeakSet()  # open shards found as recorded


def check_shard_file(pf: pq.ParquetFile, info: Any, where: str, expected: pa.Schema) -> None:
    """Refuse a shard file that is not the one its manifest entry ``info`` records (replaced or
    truncated after the commit): its row groups must hold the recorded rows, since every reader
    locates rows by that layout, and it must have every column of ``expected`` (the dataset's
    storage schema) with that type, so that nothing is decoded as what it is not. An open file
    passes once: shard files never change, and readers keep files open across scans."""
    if pf in _CHECKED_FILES:
        return
    md = pf.metadata
    counts = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    if counts != [g.rows for g in info.row_groups]:
        raise CorruptDatasetError(
            f"{where}: file has {md.num_rows} rows in {md.num_row_groups} row groups, "
            f"manifest says {info.rows} rows in {len(info.row_groups)}"
        )
    got = {f.name: f.type for f in pf.schema_arrow}
    for f in expected:
        have = got.get(f.name)
        if have is None:
            raise CorruptDatasetError(f"{where}: no column {f.name!r} in the file (the schema stores it as {f.type})")
        if not _same_storage_type(f.type, have):
            raise CorruptDatasetError(f"{where}: column {f.name!r} is {have} in the file, the schema stores {f.type}")
    _CHECKED_FILES.add(pf)


def _same_storage_type(want: pa.DataType, have: pa.DataType) -> bool:
    """Whether a file column of type ``have`` decodes as ``want``: equal, the other width of a
    string / bytes scalar column (their offsets are never read directly), or a shape column whose
    list items are declared non-nullable (they are never null)."""
    if want == have:
        return True
    if pa.types.is_fixed_size_list(want) and pa.types.is_fixed_size_list(have):
        return want.list_size == have.list_size and want.value_type == have.value_type
    strings, binaries = (pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())
    return (want in strings and have in strings) or (want == pa.binary() and have in binaries)


def resolve_columns(schema: Schema, columns: Sequence[str] | None) -> list[str]:
    """The field names a reader returns: all for None, else ``columns`` checked against ``schema``."""
    if columns is None:
        return list(schema.names)
    if isinstance(columns, str):
        raise InvalidArgumentError(f"columns must be a list of field names, got the string {columns!r}")
    names = list(columns)
    if not names:
        raise InvalidArgumentError("columns must name at least one field (or be None for all)")
    for c in names:
        if c not in schema:
            raise InvalidArgumentError(f"unknown column {c!r}; dataset fields are {schema.names}")
    return names


def all_row_groups(manifest: Manifest) -> list[RowGroupRef]:
    out = []
    first = 0
    for si, shard in enumerate(manifest.shards):
        for gi, g in enumerate(shard.row_groups):
            out.append(RowGroupRef(si, gi, first, g.rows))
            first += g.rows
    return out


_MAX_SPLIT_COLUMNS = 3  # row groups with partial nulls in more columns than this keep no bounds for them


def _conjunction(parts: list[Any]) -> Any:
    if not parts:
        return pc.scalar(True)
    out = parts[0]
    for p in parts[1:]:
        out = out & p
    return out


def _guarantees(stats: dict[str, Any], rows: int, types: dict[str, pa.DataType]) -> list[Any]:
    """Expressions whose disjunction holds for every row of a row group (from manifest statistics).

    A column with some nulls holds rows "in [min, max]" or "null". Arrow cannot simplify with an
    ``or`` guarantee, so the row group is described by one guarantee per combination of those
    alternatives (at most ``2 ** _MAX_SPLIT_COLUMNS``); it is pruned only if all are ruled out.
    """
    fixed: list[Any] = []
    split: list[tuple[Any, Any]] = []
    for name, st in stats.items():
        if name not in types:
            continue
        f = pc.field(name)
        nulls = int(st.get("nulls", 0))
        if nulls == rows:
            fixed.append(f.is_null())
            continue
        if "min" not in st:
            continue
        rng = (f >= pa.scalar(st["min"], type=types[name])) & (f <= pa.scalar(st["max"], type=types[name]))
        if nulls == 0:
            fixed.append(rng)
        else:
            split.append((rng, f.is_null()))
    split = split[:_MAX_SPLIT_COLUMNS]
    return [_conjunction(fixed + list(choice)) for choice in itertools.product(*split)]


def prune_row_groups(manifest: Manifest, refs: Sequence[RowGroupRef], expression: Any, arrow_types: dict[str, pa.DataType]) -> list[RowGroupRef]:
    """Keep the row groups whose statistics do not rule ``expression`` out.

    Uses pyarrow's own expression simplification (each row group becomes one or more virtual
    fragments whose partition expressions are its min/max guarantees), so pruning follows Arrow's
    semantics exactly and never opens a file.
    """
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    if not refs:
        return []
    owners: list[int] = []
    guarantees: list[Any] = []
    for i, r in enumerate(refs):
        for g in _guarantees(manifest.shards[r.shard].row_groups[r.row_group].stats, r.rows, arrow_types):
            owners.append(i)
            guarantees.append(g)
    schema = pa.schema([(k, v) for k, v in arrow_types.items()])
    virtual = pads.FileSystemDataset.from_paths(
        [f"rg/{i}" for i in range(len(guarantees))],
        schema=schema,
        format=pads.ParquetFileFormat(),
        filesystem=pafs.LocalFileSystem(),
        partitions=guarantees,
    )
    try:
        kept = {owners[int(fr.path.rsplit("/", 1)[1])] for fr in virtual.get_fragments(filter=expression)}
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InvalidArgumentError(f"filter {expression} cannot be applied: {e}. {_filter_hint(manifest.schema)}") from None
    if _NAN_LITERAL.search(str(expression)):
        # Arrow's guarantee simplification orders NaN above every number, so with finite bounds it
        # turns `x < nan` into true and `~(x < nan)` into false, pruning row groups that match
        # (every comparison with NaN is false). Keep everything; the exact filter still applies.
        return list(refs)
    return [refs[i] for i in sorted(kept)]


_NAN_LITERAL = re.compile(r"\bnan\b", re.IGNORECASE)


def _pruning_types(schema: Schema, arrow_schema: pa.Schema) -> dict[str, pa.DataType]:
    return {f.name: arrow_schema.field(f.name).type for f in schema.fields if f.is_scalar}


def _filter_hint(schema: Schema) -> str:
    names = [f.name for f in schema.fields if f.is_scalar]
    half = [f.name for f in schema.fields if f.is_scalar and f.dtype == "float16"]
    hint = f"A filter may reference scalar columns only: {names}."
    if half:
        hint += f" float16 columns {half} cannot be compared by Arrow: use predicate=in_range(...) instead."
    return hint


class Scanner:
    """An iterable over decoded batches of one dataset version.

    Build it with :meth:`tensorstore_fs.Dataset.scanner`; iterate it for dicts of numpy arrays.
    ``stats`` reports what the scan touched. Variable-shape fields: lists of arrays, or padded
    (``pad_variable``), or :class:`~tensorstore_fs.ragged.RaggedRows` (``flat_variable``).
    ``rows_hint``: the caller will consume at most that many rows (it changes how pages are
    decoded, never which rows come).
    """

    def __init__(
        self,
        storage: Storage,
        manifest: Manifest,
        *,
        columns: Sequence[str] | None = None,
        filter: Any = None,
        predicate: Predicate | None = None,
        batch_size: int = 1024,
        pad_variable: bool = False,
        drop_last: bool = False,
        row_groups: Sequence[RowGroupRef] | None = None,
        storage_schema: pa.Schema | None = None,
        rows_hint: int | None = None,
        flat_variable: bool = False,
    ) -> None:
        schema = manifest.schema
        if pad_variable and flat_variable:
            raise InvalidArgumentError("pad_variable and flat_variable are exclusive: variable-shape rows are "
                                       "either padded or flat values plus offsets")
        names = resolve_columns(schema, columns)
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        if filter is not None and not isinstance(filter, pc.Expression):
            raise InvalidArgumentError(
                f"filter must be a pyarrow.compute.Expression (e.g. pc.field('label') == 3), got {type(filter).__name__}"
            )
        if predicate is not None:
            if not isinstance(predicate, Predicate):
                raise InvalidArgumentError(f"predicate must be a tensorstore_fs predicate, got {type(predicate).__name__}")
            for f in predicate.fields:
                if f not in schema:
                    raise InvalidArgumentError(f"predicate reads unknown field {f!r}; dataset fields are {schema.names}")
        self.storage = storage
        self.manifest = manifest
        self.schema = schema
        self.columns = names
        self.filter = filter
        self.predicate = predicate
        self.batch_size = int(batch_size)
        self.pad_variable = pad_variable
        self.flat_variable = flat_variable
        self.drop_last = drop_last
        self.stats = ScanStats()
        self._carry_need = 0
        if rows_hint is not None and (not isinstance(rows_hint, (int, np.integer)) or isinstance(rows_hint, bool)
                                      or rows_hint < 1):
            raise InvalidArgumentError(f"rows_hint must be a positive int, got {rows_hint!r}")
        # callers that will consume at most this many rows: small reads decode only the pages needed
        self._row_limit = None if rows_hint is None else int(rows_hint)
        self._arrow_schema = storage_schema if storage_schema is not None else arrow_schema(schema)
        self._fields = [schema.field(n) for n in names]
        self._storage_cols = storage_columns(schema, names)
        if filter is not None:
            self._validate_filter(filter)
        refs = list(row_groups) if row_groups is not None else all_row_groups(manifest)
        self.stats.row_groups_total = len(refs)
        self.row_groups = self._prune(refs)
        self.stats.row_groups_pruned = len(refs) - len(self.row_groups)

    def _validate_filter(self, expr: Any) -> None:
        """Bind the filter to the scalar columns now, so a bad filter fails even with no rows."""
        scalars = [f.name for f in self.schema.fields if f.is_scalar]
        empty = self._arrow_schema.empty_table().select(scalars)
        try:
            empty.filter(expr)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise InvalidArgumentError(f"filter {expr} cannot be evaluated: {e}. {_filter_hint(self.schema)}") from None

    # -- planning --------------------------------------------------------------------------------
    def _prune(self, refs: list[RowGroupRef]) -> list[RowGroupRef]:
        types = _pruning_types(self.schema, self._arrow_schema)
        if self.filter is not None:
            refs = prune_row_groups(self.manifest, refs, self.filter, types)
        expr = self.predicate.to_expression() if self.predicate is not None else None
        if expr is not None:
            try:
                refs = prune_row_groups(self.manifest, refs, expr, types)
            except InvalidArgumentError as e:  # the predicate itself is exact: just do not prune
                logger.debug("predicate %r gives no usable pruning expression: %s", self.predicate, e)
        return refs

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
    def _open(self, rel: str) -> tuple[pq.ParquetFile, Any]:
        pf, source = self.storage.open_parquet(rel)
        self.stats.files_opened += 1
        self.stats.opened_paths.append(rel)
        return pf, source

    def _read(self, pf: pq.ParquetFile, ref: RowGroupRef, fields: list[str], rel: str, *, account: bool = True) -> pa.Table:
        cols = storage_columns(self.schema, fields)
        try:
            table = pf.read_row_group(ref.row_group, columns=cols, use_threads=use_threads(pf, ref.row_group, cols))
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptDatasetError(f"{self.storage.url}/{rel}: row group {ref.row_group} unreadable: {e}") from None
        if account:
            self.stats.bytes_read += _column_bytes(pf, ref.row_group, cols)
        return table

    def _matching(self, pf: pq.ParquetFile, ref: RowGroupRef, rel: str) -> tuple[np.ndarray | None, pa.Table | None]:
        """Indices of matching rows (None = all) and the phase-one table."""
        ffields = self._filter_fields
        if not ffields:
            return None, None
        t = self._read(pf, ref, ffields, rel)
        keep = np.ones(t.num_rows, dtype=bool)
        if self.filter is not None:
            scalars = t.select([f.name for f in self.schema.fields if f.is_scalar])
            indexed = scalars.append_column(_IDX, pa.array(np.arange(t.num_rows, dtype=np.int64)))
            try:
                hit = indexed.filter(self.filter).column(_IDX).to_numpy()
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise InvalidArgumentError(
                    f"filter {self.filter} cannot be evaluated: {e}. {_filter_hint(self.schema)}"
                ) from None
            keep[:] = False
            keep[hit] = True
        if self.predicate is not None and keep.any():
            cols: dict[str, Any] = {}
            for name in self.predicate.fields:
                cols.update(decode_column(t, self.schema.field(name)))
            keep &= _predicate_mask(self.predicate, cols, t.num_rows)
        return np.flatnonzero(keep), t

    def row_group_tables(self, cut: bool = True) -> Iterator[pa.Table]:
        """Matching rows, in order, as storage-layout tables.

        Without a filter or predicate, each shard's row groups are read by :func:`read_batches`
        as ``batch_size``-row batches (``cut=False``: as the row groups it reads whole, where it
        does). With one, row groups are read one by one (filter columns first).
        """
        for shard, refs in itertools.groupby(self.row_groups, key=lambda r: r.shard):
            refs = list(refs)
            rel = self.manifest.shards[shard].path
            pf, source = self._open(rel)
            try:
                self._check_file(pf, shard, rel)
                if self._filter_fields:
                    for ref in refs:
                        yield from self._row_group_table(pf, ref, rel)
                else:
                    yield from self._stream_row_groups(pf, refs, rel, source, cut)
            finally:
                self.storage.release(rel, pf, source)

    def _direct(self, pf: pq.ParquetFile, source: Any, rel: str) -> Callable[[int], dict[str, pa.Array]] | None:
        """For :func:`read_batches`: the fixed-shape tensor columns of a row group that a local
        file holds as one plain page, as arrays over a private copy-on-write map of those bytes
        (no decode, no copy; writes stay private to the batch; values that are not
        element-aligned in the file are copied once). None where nothing qualifies."""
        if not self.storage.is_local or not isinstance(source, pa.MemoryMappedFile):
            return None
        fixed = {}
        arrow = pf.schema_arrow  # built anew on every access: once here
        for name in self.columns:
            f = self.schema.field(name)
            index = arrow.get_field_index(name)
            if locatable(f) and index >= 0:
                fixed[name] = (index, f.row_nbytes, f.numpy_dtype.itemsize)
        if not fixed:
            return None
        path = os.path.abspath(self.storage.path(rel))

        def direct(rg: int) -> dict[str, pa.Array]:
            meta = pf.metadata.row_group(rg)
            n = meta.num_rows
            out: dict[str, pa.Array] = {}
            for name, (index, nbytes, itemsize) in fixed.items():
                offset = plain_values_offset(source.read_at, meta.column(index), n, nbytes) if n else None
                if offset is not None:
                    view = private_view(path, offset, n * nbytes)
                    if offset % itemsize:  # values not element-aligned in the file: one aligning copy
                        view = view.copy()
                    out[name] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), n, [None, pa.py_buffer(view)])
            return out

        return direct

    def _stream_row_groups(self, pf: pq.ParquetFile, refs: list[RowGroupRef], rel: str,
                           source: Any = None, cut: bool = True) -> Iterator[pa.Table]:
        cols = self._storage_cols
        self._account(pf, refs, cols)
        bs = self.batch_size
        first = self._carry_need if 0 < self._carry_need < bs else bs
        if first >= sum(r.rows for r in refs):  # one batch holds them all: no re-cutting, no copy
            for ref in refs:
                table = self._read(pf, ref, self.columns, rel, account=False)
                self.stats.rows_matched += table.num_rows
                yield table
            return
        try:
            for rb in read_batches(pf, [r.row_group for r in refs], cols, [first], bs, limit=self._row_limit,
                                   direct=self._direct(pf, source, rel), cut=cut):
                self.stats.rows_matched += rb.num_rows
                yield pa.Table.from_batches([rb])
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptDatasetError(f"{self.storage.url}/{rel}: unreadable: {e}") from None

    def _account(self, pf: pq.ParquetFile, refs: Sequence[RowGroupRef], cols: list[str]) -> None:
        for ref in refs:
            self.stats.row_groups_read += 1
            self.stats.rows_scanned += ref.rows
            self.stats.bytes_read += _column_bytes(pf, ref.row_group, cols)

    def matches(self) -> Iterator[tuple[RowGroupRef, np.ndarray | None]]:
        """``(row group, matching local rows or None for all)`` for every unpruned row group.

        Reads only the filter's and predicate's columns (nothing when there is neither)."""
        for shard, refs in itertools.groupby(self.row_groups, key=lambda r: r.shard):
            refs = list(refs)
            if not self._filter_fields:
                for ref in refs:
                    yield ref, None
                continue
            rel = self.manifest.shards[shard].path
            pf, source = self._open(rel)
            try:
                self._check_file(pf, shard, rel)
                for ref in refs:
                    self.stats.row_groups_read += 1
                    self.stats.rows_scanned += ref.rows
                    hits, _ = self._matching(pf, ref, rel)
                    self.stats.rows_matched += ref.rows if hits is None else len(hits)
                    yield ref, hits
            finally:
                self.storage.release(rel, pf, source)

    def _row_group_table(self, pf: pq.ParquetFile, ref: RowGroupRef, rel: str) -> Iterator[pa.Table]:
        self.stats.row_groups_read += 1
        self.stats.rows_scanned += ref.rows
        hits, first = self._matching(pf, ref, rel)
        if hits is not None and len(hits) == 0:
            return
        have = set(first.column_names) if first is not None else set()
        missing = [c for c in self.columns if c not in have]
        table = self._read(pf, ref, missing, rel) if missing else None
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

    def _check_file(self, pf: pq.ParquetFile, shard: int, rel: str) -> None:
        check_shard_file(pf, self.manifest.shards[shard], f"{self.storage.url}/{rel}", self._arrow_schema)

    def _spans(self, cut: bool) -> Iterator[tuple[pa.Table, int, int]]:
        """``(table, start, stop)``: each batch of exactly ``batch_size`` rows (the last may be
        shorter) as a row range of one table read, or of a table joined from the ends of two.

        Streaming reads are told how many rows complete the pending batch, so a batch is only
        re-assembled (copied) where it spans two shard files or a filtered row group. ``cut=False``
        lets reads hand over whole row groups (see :func:`read_batches`) for :meth:`__iter__`.
        """
        bs = self.batch_size
        pending: list[pa.Table] = []
        have = 0
        self._carry_need = 0
        for t in self.row_group_tables(cut=cut):
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

    def iter_tables(self) -> Iterator[pa.Table]:
        """Storage-layout tables of exactly ``batch_size`` rows (the last may be shorter)."""
        for t, a, b in self._spans(cut=True):
            yield t if a == 0 and b == t.num_rows else t.slice(a, b - a)

    def decode(self, table: pa.Table) -> dict[str, Any]:
        """Decode a storage-layout table of the scanned columns into numpy (see ``to_batches``)."""
        out: dict[str, Any] = {}
        for f in self._fields:
            out.update(decode_column(table, f, pad=self.pad_variable, flat=self.flat_variable))
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Decoded batches. Where a second batch comes from the same table read, the rest of that
        table is decoded once and later batches are slices of it: decoding costs a fixed few
        microseconds per column and call, which dominated batches of small rows. Padded
        variable-shape fields are decoded flat that way too and padded per batch (the padded
        width is each batch's own), as the loaders do."""
        padded = {f.name: f for f in self._fields if f.is_variable} if self.pad_variable else {}
        flat = self.flat_variable or self.pad_variable

        def decode(table: pa.Table) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for f in self._fields:
                out.update(decode_column(table, f, flat=flat))
            return out

        def pad(batch: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in batch.items():
                if k in padded:
                    out.update(pad_rows(v, padded[k]))  # values, then __shape: decode's order
                else:
                    out[k] = v
            return out

        parent: pa.Table | None = None
        rest: dict[str, Any] | None = None
        base = 0
        for t, a, b in self._spans(cut=False):
            if t is not parent:
                parent, rest = t, None
                batch = decode(t if a == 0 and b == t.num_rows else t.slice(a, b - a))
            else:
                if rest is None:
                    base, rest = a, decode(t.slice(a))
                batch = {k: v[a - base:b - base] for k, v in rest.items()}
            yield pad(batch) if padded else batch


def _column_bytes(pf: pq.ParquetFile, row_group: int, cols: list[str]) -> int:
    """Stored bytes of ``cols`` in one row group (every storage column is a single Parquet leaf)."""
    wanted = set(cols)
    meta = pf.metadata.row_group(row_group)
    return sum(meta.column(i).total_compressed_size for i, name in enumerate(_leaf_names(pf)) if name in wanted)


_LEAF_NAMES: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def _leaf_names(pf: pq.ParquetFile) -> list[str]:
    """The storage column owning each Parquet leaf, by leaf index (every storage column is a single
    leaf). Kept per open file: ``schema_arrow`` is rebuilt on every access, and a leaf's dotted
    ``path_in_schema`` cannot tell field ``a.b`` from a leaf ``b`` inside field ``a``."""
    names = _LEAF_NAMES.get(pf)
    if names is None:
        names = _LEAF_NAMES[pf] = list(pf.schema_arrow.names)
    return names


def read_batches(
    pf: pq.ParquetFile,
    row_groups: Sequence[int],
    columns: list[str],
    sizes: Sequence[int],
    then: int,
    *,
    limit: int | None = None,
    direct: Callable[[int], dict[str, pa.Array]] | None = None,
    cut: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Decode ``row_groups`` of ``pf`` as record batches of ``sizes[0]``, ``sizes[1]``, ... rows,
    then ``then`` rows each (the last batch may be shorter).

    Each row group is decoded whole with ``read_row_group`` (much faster than pyarrow's batch
    reader for narrow columns) and cut into zero-copy slices; a batch is re-assembled (copied)
    only where it spans two row groups. Memory stays bounded by about one row group plus one
    batch.

    Parameters
    ----------
    pf : pyarrow.parquet.ParquetFile
        The open file.
    row_groups : sequence of int
        Row groups to read, in order.
    columns : list of str
        Storage columns to decode.
    sizes : sequence of int
        Sizes of the first batches.
    then : int
        Size of every later batch.
    limit : int, optional
        At most this many rows will be consumed. Where that is under half of the first row
        group, pyarrow's batch reader decodes only the pages needed instead of whole row groups.
    direct : callable, optional
        ``direct(row_group)`` gives columns of that row group that need no decoding (arrays
        over the file's own bytes, see :mod:`tensorstore_fs.pages`); pyarrow decodes the rest.
    cut : bool
        False: where row groups are read whole, yield them as read (one batch per row group, in
        row order) and leave cutting to the caller.

    Yields
    ------
    pyarrow.RecordBatch
        Batches of exactly the requested sizes, in row order (unless ``cut`` is False).
    """
    plan = list(sizes)

    def next_size() -> int:
        return max(1, plan.pop(0) if plan else then)

    groups = list(row_groups)
    whole = hasattr(pf, "read_row_group") and hasattr(pf, "metadata")
    if whole and limit is not None and groups and 2 * limit < pf.metadata.row_group(groups[0]).num_rows:
        whole = False
    if direct is not None and groups and 3 * then > 2 * pf.metadata.row_group(groups[0]).num_rows:
        # mapped values cost nothing for a batch inside one row group, but a batch that spans two
        # is joined (faulting the map in, then copying): past ~2/3 of a row group a batch, most
        # batches span and the decoder's one copy is cheaper (measured crossover)
        direct = None
    first = direct(groups[0]) if whole and direct is not None and groups else {}
    # variable-shape rows count only where the batches are cut here: a caller that slices whole
    # row groups itself (Scanner.__iter__) got its token batches twice as fast from whole row
    # groups, while reads cut here (the loaders' read units) were 5% faster through the batch reader
    arrow = pf.schema_arrow if whole else None  # built anew on every access: once here
    wide = [c for c in columns if c not in first and (cut or pa.types.is_fixed_size_binary(arrow.field(c).type))] \
        if arrow is not None else []
    if whole and groups and _row_bytes(pf, groups[0], wide) >= WIDE_ROW_BYTES:
        # wide rows to decode (tensors): the batch reader decodes a batch that spans row groups
        # straight into one buffer; whole row groups would cost a second copy for every such batch
        whole = False
    if not whole:
        yield from _stream_batches(pf, groups, columns, next_size)
        return

    def decoded() -> Iterator[pa.RecordBatch]:
        if not first:  # nothing mapped: decode runs of small row groups in one call each
            for run in _runs_by_bytes(pf, groups, columns, GROUPED_READ_BYTES):
                threads = any(use_threads(pf, rg, columns) for rg in run)
                yield from pf.read_row_groups(run, columns=columns, use_threads=threads).to_batches()
            return
        # mapped tensor columns come per row group; the other columns are decoded for runs of
        # row groups at once and sliced (pyarrow's fixed cost per call dominates small columns)
        schema = pa.schema([arrow.field(c) for c in columns], metadata=arrow.metadata)
        rest = [c for c in columns if c not in first]
        i = 0
        for run in _runs_by_bytes(pf, groups, rest or columns, GROUPED_READ_BYTES):
            table = (pf.read_row_groups(run, columns=rest, use_threads=any(use_threads(pf, rg, rest) for rg in run))
                     if rest else None)
            at = 0
            for rg in run:
                n = pf.metadata.row_group(rg).num_rows
                mapped = first if i == 0 else direct(rg) if direct is not None else {}
                i += 1
                missing = [c for c in first if c not in mapped]  # this row group stores them otherwise
                extra = pf.read_row_group(rg, columns=missing, use_threads=False) if missing else None
                arrays = [pa.chunked_array([mapped[c]]) if c in mapped
                          else extra.column(c) if c in missing else table.column(c).slice(at, n)
                          for c in columns]
                at += n
                yield from pa.Table.from_arrays(arrays, schema=schema).to_batches()

    yield from _recut(decoded(), next_size(), next_size) if cut else decoded()


def _recut(batches: Iterable[pa.RecordBatch], want: int, next_size: Any,
           after: Any = None) -> Iterator[pa.RecordBatch]:
    """Re-cut ``batches`` into batches of ``want``, then ``next_size()``, ... rows (the last may be
    shorter), slicing without copies where one input batch holds a whole output batch.
    ``after(rows still wanted)`` is called after each input batch."""
    buf: list[pa.RecordBatch] = []
    have = 0
    for rb in batches:
        if rb.num_rows:
            buf.append(rb)
            have += rb.num_rows
        while have >= want:
            out, buf = _cut(buf, want)
            have -= want
            yield out
            want = next_size()
        if after is not None:
            after(want - have)
    if have:
        yield _cut(buf, have)[0]


WIDE_ROW_BYTES = 512  # decoded bytes per row from which the batch reader beats whole row groups
THREADED_READ_BYTES = 64 << 10  # decoded bytes of a row group read from which pyarrow's threads pay


GROUPED_READ_BYTES = 4 << 20  # decoded bytes up to which consecutive row groups are read in one call


def _runs_by_bytes(pf: pq.ParquetFile, groups: Sequence[int], columns: list[str], limit: int) -> Iterator[list[int]]:
    """``groups`` in consecutive runs of at most ``limit`` decoded bytes (a bigger row group alone)."""
    run: list[int] = []
    nbytes = 0
    for rg in groups:
        size = _row_bytes(pf, rg, columns) * pf.metadata.row_group(rg).num_rows
        if run and nbytes + size > limit:
            yield run
            run, nbytes = [], 0
        run.append(rg)
        nbytes += size
    if run:
        yield run


def use_threads(pf: pq.ParquetFile, rg: int, columns: Sequence[str]) -> bool:
    """Whether reading ``columns`` of row group ``rg`` is worth pyarrow's thread pool: it decodes
    columns in parallel, so never for one column, and its hand-off costs more than it saves on
    small reads (it doubled the time of reading one small column here)."""
    if len(columns) < 2:
        return False
    return _row_bytes(pf, rg, list(columns)) * pf.metadata.row_group(rg).num_rows >= THREADED_READ_BYTES


def _row_bytes(pf: pq.ParquetFile, rg: int, columns: list[str]) -> float:
    """Uncompressed bytes per row of ``columns`` in row group ``rg`` (from the footer)."""
    meta = pf.metadata.row_group(rg)
    if not meta.num_rows:
        return 0.0
    wanted = set(columns)
    total = sum(meta.column(i).total_uncompressed_size for i, name in enumerate(_leaf_names(pf)) if name in wanted)
    return total / meta.num_rows


def _stream_batches(pf: pq.ParquetFile, row_groups: list[int], columns: list[str], next_size: Any) -> Iterator[pa.RecordBatch]:
    """:func:`read_batches` through pyarrow's batch reader, asking for the next size between batches.

    pyarrow's batch reader reads its batch size before every batch, so asking for the next size
    between batches yields batches of exactly the requested sizes. Should a pyarrow release stop
    honouring the change, the batches it returns are re-cut (and joined where short) to the
    requested sizes: slower, never wrong.
    """
    want = next_size()
    reader = pf.iter_batches(batch_size=want, row_groups=row_groups, columns=columns, use_threads=True)
    yield from _recut(reader, want, next_size, pf.reader.set_batch_size)


def _cut(buf: list[pa.RecordBatch], n: int) -> tuple[pa.RecordBatch, list[pa.RecordBatch]]:
    """The first ``n`` rows of ``buf`` as one batch (zero-copy when one batch holds them) and the rest."""
    head = buf[0]
    if head.num_rows >= n:
        rest = ([head.slice(n)] if head.num_rows > n else []) + buf[1:]
        return head.slice(0, n), rest
    pieces, taken, i = [], 0, 0
    while taken < n:
        take = min(buf[i].num_rows, n - taken)
        pieces.append(buf[i].slice(0, take))
        taken += take
        if take < buf[i].num_rows:
            buf = [buf[i].slice(take)] + buf[i + 1:]
            i = 0
            break
        i += 1
    else:
        buf = buf[i:]
    joined = pa.Table.from_batches(pieces).combine_chunks().to_batches()
    return (joined[0] if joined else pieces[0]), buf


def _predicate_mask(predicate: Predicate, cols: dict[str, Any], n: int) -> np.ndarray:
    mask = predicate(cols)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,):
        raise InvalidArgumentError(
            f"predicate {predicate!r} returned dtype {mask.dtype} shape {mask.shape}; expected bool ({n},)"
        )
    return mask

