"""Writing datasets: validate, encode, roll row groups and shards by bytes, commit atomically."""

from __future__ import annotations

import inspect
import logging
import os
import random
import time
import uuid
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from ._checks import check_int
from .parquet.align import AligningStream, header_length, padding
from .columns import infer_schema, normalize_batch
from .encoding import arrow_schema, encode_batch, row_nbytes, stat_columns
from .errors import (
    CommitConflictError,
    DatasetExistsError,
    InvalidArgumentError,
    SchemaError,
    StorageError,
)
from .manifest import (META_DIR, SHARD_DIR, Manifest, RowGroupInfo, ShardInfo, commit_manifest, latest_version, load_manifest,
                       now_iso)
from .parquet.pages import locatable
from .schema import Schema
from .storage import LocalShardSink, Storage
from .vacuum import fsync_dir, library_orphans_only

__all__ = ["DatasetWriter", "write_dataset", "MODES"]

logger = logging.getLogger(__name__)

MODES = ("error", "overwrite", "append")
DEFAULT_ROW_GROUP_BYTES = 8 * 2**20
DEFAULT_SHARD_BYTES = 256 * 2**20
DEFAULT_SCALAR_COMPRESSION = "snappy"
MAX_ROW_GROUP_ROWS = 1 << 20  # pyarrow's own cap; never let it split our row groups behind our back
SHARD_ROW_ALIGNMENT = 4096  # shards of one write hold a multiple of this many rows (when affordable)
# row groups (but a write's last) hold a multiple of this many rows, or of the largest power of two
# not above their byte-sized row count: batches of a power-of-two size up to it then never straddle
# two row groups, and readers hand a sequential batch's tensors out as views of one row group
ROW_GROUP_ROW_ALIGNMENT = 256
# a scalar column is dictionary-encoded in a shard when at most this share of the first rows'
# values (a sample of DICTIONARY_SAMPLE) is distinct: labels and categories, not ids or features
DICTIONARY_MAX_DISTINCT = 0.5
DICTIONARY_SAMPLE = 4096
_COMMIT_RETRIES = 20
_COMMIT_BACKOFF_S = 0.005  # pause before retrying a lost commit: random, up to this x 2**conflicts ...
_COMMIT_BACKOFF_MAX_S = 0.5  # ... and at most this
# pyarrow (where it has max_rows_per_page) also cuts pages at 20,000 rows: lift that to the row
# group's cap, so a chunk of small rows stays one page as well (a pyarrow without the option
# writes whatever pages it writes; readers then decode those chunks)
_ONE_PAGE_PER_CHUNK = ({"max_rows_per_page": MAX_ROW_GROUP_ROWS}
                       if "max_rows_per_page" in inspect.signature(pq.ParquetWriter.__init__).parameters else {})


def _aligned_rows(rows: int) -> int:
    """``rows`` rounded down to a multiple of ``ROW_GROUP_ROW_ALIGNMENT`` or, below that, to the
    largest power of two not above it (so never less than half of ``rows``)."""
    step = min(ROW_GROUP_ROW_ALIGNMENT, 1 << (rows.bit_length() - 1))
    return rows - rows % step


def dictionary_columns(table: pa.Table, columns: Iterable[str]) -> list[str]:
    """The ``columns`` of ``table`` worth dictionary encoding: those whose non-null values among
    the first ``DICTIONARY_SAMPLE`` rows are at most a ``DICTIONARY_MAX_DISTINCT`` share distinct
    (an all-null sample counts as repetitive).
    Dictionary-encoding distinct floats made the suite's tabular rows several times slower to
    write, and bigger and slower to read than plain pages."""
    sample = table.slice(0, DICTIONARY_SAMPLE)
    out = []
    for name in columns:
        col = sample.column(name)
        values = len(col) - col.null_count
        if values == 0 or pc.count_distinct(col).as_py() <= DICTIONARY_MAX_DISTINCT * values:
            out.append(name)
    return out


def _numeric_bounds(col: pa.ChunkedArray) -> tuple[Any, Any] | None:
    """min/max of a numeric column's non-null values with numpy (much cheaper than
    pyarrow.compute per row group, and it covers float16); None when a float column holds NaN or
    infinities (no usable bounds)."""
    parts = [c.drop_null().to_numpy(zero_copy_only=False) if c.null_count else c.to_numpy(zero_copy_only=False)
             for c in col.chunks]
    parts = [p for p in parts if len(p)]
    lo = min(p.min() for p in parts)
    hi = max(p.max() for p in parts)
    if isinstance(lo, np.floating) and not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    if isinstance(lo, np.floating):
        return float(lo), float(hi)
    return lo.item(), hi.item()


def _row_group_stats(table: pa.Table, columns: list[str]) -> dict[str, dict[str, Any]]:
    """min / max / null count of each filterable column, JSON-ready.

    Bounds are omitted when unknown: all values null, NaN or infinities present.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in columns:
        col = table.column(name)
        entry: dict[str, Any] = {"nulls": int(col.null_count)}
        out[name] = entry
        if col.null_count == len(col):
            continue
        typ = col.type
        if pa.types.is_integer(typ) or pa.types.is_floating(typ):
            bounds = _numeric_bounds(col)
        else:  # bool, string
            mm = pc.min_max(col)
            bounds = (mm["min"].as_py(), mm["max"].as_py())
        if bounds is not None:
            entry["min"], entry["max"] = bounds
    return out


class DatasetWriter:
    """Write a dataset batch by batch; commit on ``close()`` (or at the end of a ``with`` block).

    Parameters
    ----------
    url : str
        Dataset root (local path or fsspec URL).
    schema : Schema, optional
        Inferred from the first batch when omitted (or taken from the dataset when appending).
    mode : {"error", "overwrite", "append"}
        ``"error"`` refuses to touch anything that exists at ``url``; ``"overwrite"`` commits a new
        version holding only the new rows (older versions stay readable by number);
        ``"append"`` commits a new version adding shards, and requires the same schema.
    storage_options : mapping, optional
        fsspec filesystem options.
    unsafe_commits : bool, optional
        Commit on a filesystem that cannot create a file only if it is absent (no conditional
        create is known for it: not local, S3 or memory), which is safe only while one writer
        commits at a time. Default: ``TSFS_UNSAFE_COMMITS`` from the environment, else refused
        with :class:`~tensorstore_fs.UnsafeCommitError` before anything is written.
    row_group_bytes : int
        Target bytes per Parquet row group (the unit of pruning and of reading).
    shard_bytes : int
        Target bytes per shard file; files roll over at a row-group boundary past this size.
    compression : str or None
        Parquet codec for tensor columns (default none: tensor bytes rarely compress and reading
        them stays at memory speed). Scalar columns always use ``scalar_compression``.
    scalar_compression : str
        Parquet codec for scalar and string columns (default ``"snappy"``, as pyarrow and Spark
        write; pyarrow sets up a zstd decoder for every column chunk, which doubled the time of
        reading a small column of many row groups; ``"zstd"`` stores tabular data ~10% smaller).
    allow_lossy_cast : bool
        Values are cast to a field's dtype only when none changes (beyond rounding to the nearest
        float): by default a float into an integer field, an integer outside the field's range and
        a finite value that overflows to inf in a float field (``1e6`` into ``float16``) raise
        :class:`~tensorstore_fs.SchemaError` naming the field, the first such row and its value.
        ``True`` casts as numpy's ``astype`` does (floats truncate toward zero, integers wrap
        around, overflow gives +-inf); NaN, +-inf and out-of-range floats into integer fields are
        refused even then.

    Notes
    -----
    A batch is validated in full before any of it is buffered, so a :class:`SchemaError` leaves
    the writer usable and the batch unwritten. An exception that leaves the ``with`` block aborts:
    shard files written so far are deleted and nothing is committed.
    """

    def __init__(
        self,
        url: str,
        schema: Schema | None = None,
        *,
        mode: str = "error",
        storage_options: Mapping[str, Any] | None = None,
        unsafe_commits: bool | None = None,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        compression: str | None = None,
        scalar_compression: str = DEFAULT_SCALAR_COMPRESSION,
        allow_lossy_cast: bool = False,
    ) -> None:
        if not isinstance(allow_lossy_cast, bool):
            raise InvalidArgumentError(f"allow_lossy_cast must be a bool, got {allow_lossy_cast!r}")
        if mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}")
        if schema is not None and not isinstance(schema, Schema):
            raise InvalidArgumentError(f"schema must be a tensorstore_fs.Schema, got {type(schema).__name__}")
        check_int("row_group_bytes", row_group_bytes)
        check_int("shard_bytes", shard_bytes)
        self.storage = Storage(url, storage_options, unsafe_commits=unsafe_commits)
        self.mode = mode
        self.row_group_bytes = int(row_group_bytes)
        self.shard_bytes = int(shard_bytes)
        self.compression = compression
        self.allow_lossy_cast = allow_lossy_cast
        # one data page per column chunk: a fixed-shape tensor chunk is then one run of raw bytes
        # that readers map or gather without decoding (tensorstore_fs.parquet.pages); capped below
        # Parquet's 2 GiB page limit
        self._page_bytes = min(max(2 * self.row_group_bytes, 1 << 20), 1 << 30)
        self.scalar_compression = scalar_compression
        self._writer_id = uuid.uuid4().hex[:12]
        self._parent: Manifest | None = None
        self._closed = False
        self._pending: list[pa.RecordBatch] = []
        self._pending_sizes: list[np.ndarray] = []
        self._pending_bytes = 0
        self._shards: list[ShardInfo] = []
        self._written_paths: list[str] = []
        self._file: Any = None
        self._pq: pq.ParquetWriter | None = None
        self._stream: AligningStream | None = None
        self._cur_path: str | None = None
        self._cur_groups: list[RowGroupInfo] = []
        self.rows_written = 0
        self.manifest: Manifest | None = None
        self.storage.check_commit_safe()  # before anything is written
        self._check_target(schema)
        self.schema: Schema | None = None
        if schema is not None:
            self._set_schema(schema)
        elif self._parent is not None and mode == "append":
            self._set_schema(self._parent.schema)

    # -- setup -----------------------------------------------------------------------------------
    def _check_target(self, schema: Schema | None) -> None:
        existing = latest_version(self.storage)
        if self.mode == "error":
            if existing is not None:
                raise DatasetExistsError(
                    f"{self.storage.url} already holds a dataset (version {existing}); "
                    "pass mode='overwrite' or mode='append'"
                )
            if self.storage.is_nonempty_dir() and not library_orphans_only(self.storage):
                raise DatasetExistsError(f"{self.storage.url} exists and is not empty; refusing to write there")
            return
        if existing is None:
            # leftovers of a writer killed while creating the dataset count as empty (vacuum removes them)
            if self.mode == "overwrite" and self.storage.is_nonempty_dir() and not library_orphans_only(self.storage):
                raise DatasetExistsError(
                    f"{self.storage.url} is a non-empty directory that is not a tensorstore_fs dataset; "
                    "refusing to overwrite files we did not write"
                )
            return
        self._parent = load_manifest(self.storage, existing)
        if self.mode == "append" and schema is not None and schema != self._parent.schema:
            raise SchemaError(_schema_diff(self._parent.schema, schema, self.storage.url))

    def _set_schema(self, schema: Schema) -> None:
        self.schema = schema
        self._arrow_schema = arrow_schema(schema)
        self._stat_cols = stat_columns(schema)
        self._scalar_cols = [f.name for f in schema.fields if f.is_scalar]
        # the widest uncompressed fixed-shape tensor goes first in every row group, its values at a
        # 64-byte aligned offset (tensorstore_fs.parquet.align): readers hand them out as they lie
        uncompressed = str(self.compression or "none").lower() == "none"
        candidates = [f for f in schema.fields if locatable(f)] if uncompressed else []
        self._aligned = max(candidates, key=lambda f: f.row_nbytes, default=None)
        first = [self._aligned.name] if self._aligned is not None else []
        self._file_order = first + [n for n in self._arrow_schema.names if n not in first]
        self._file_schema = pa.schema([self._arrow_schema.field(n) for n in self._file_order],
                                      metadata=self._arrow_schema.metadata)

    # -- writing ---------------------------------------------------------------------------------
    def write(self, batch: Any) -> int:
        """Validate and buffer one batch; returns the number of rows accepted.

        ``batch`` is a dict of columns (numpy arrays, torch tensors, lists), a list of row dicts,
        a pandas DataFrame or a pyarrow Table/RecordBatch.
        """
        if self._closed:
            raise InvalidArgumentError("this DatasetWriter is closed")
        if self.schema is None:
            self._set_schema(infer_schema(batch))
        assert self.schema is not None
        cols, n = normalize_batch(batch, self.schema, allow_lossy_cast=self.allow_lossy_cast)
        if n == 0:
            return 0
        rb = encode_batch(cols, self.schema, self._arrow_schema)
        sizes = row_nbytes(rb, self.schema)
        self._pending.append(rb)
        self._pending_sizes.append(sizes)
        self._pending_bytes += int(sizes.sum())
        self.rows_written += n
        while self._pending_bytes >= self.row_group_bytes or self._pending_rows() >= MAX_ROW_GROUP_ROWS:
            self._flush_row_group(final=False)
        return n

    def _pending_rows(self) -> int:
        return sum(b.num_rows for b in self._pending)

    def _flush_row_group(self, *, final: bool) -> None:
        if not self._pending:
            return
        sizes = np.concatenate(self._pending_sizes)
        table = pa.Table.from_batches(self._pending, schema=self._arrow_schema)
        if final:
            cut = len(sizes)
        else:
            cut = int(np.searchsorted(np.cumsum(sizes), self.row_group_bytes, side="left")) + 1
            cut = _aligned_rows(max(1, min(cut, len(sizes), MAX_ROW_GROUP_ROWS)))
            cut = self._align_cut(cut, sizes)
        group, rest = table.slice(0, cut), table.slice(cut)
        self._write_group(group, sizes[:cut])
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_sizes = [sizes[cut:]] if rest.num_rows else []
        self._pending_bytes = int(sizes[cut:].sum())

    def _shard_rows(self) -> int:
        return sum(g.rows for g in self._cur_groups) if self._pq is not None else 0

    def _shard_size(self) -> int:
        return self._file.size if self._pq is not None else 0

    def _align_cut(self, cut: int, sizes: np.ndarray) -> int:
        """Shorten the row group that fills a shard so the shard holds a multiple of
        ``SHARD_ROW_ALIGNMENT`` rows: readers then stream batches of any power-of-two size up to
        it across shard files without re-assembling a batch (see ``_shard_is_full``)."""
        if self._shard_size() + int(sizes[:cut].sum()) < self.shard_bytes:
            return cut
        need = (-(self._shard_rows())) % SHARD_ROW_ALIGNMENT
        if 0 < need <= cut and self._alignment_affordable(sizes):
            return need
        return cut

    def _alignment_affordable(self, sizes: np.ndarray) -> bool:
        """Alignment may grow a shard by up to SHARD_ROW_ALIGNMENT rows: allow it when that is
        small next to the shard size."""
        return float(sizes.mean()) * SHARD_ROW_ALIGNMENT <= self.shard_bytes / 4

    def _shard_is_full(self, group_sizes: np.ndarray) -> bool:
        if self._file.size < self.shard_bytes:
            return False
        aligned = self._shard_rows() % SHARD_ROW_ALIGNMENT == 0
        return aligned or not self._alignment_affordable(group_sizes)

    def _open_shard(self, first: pa.Table) -> None:
        seq = len(self._shards)
        self._cur_path = f"{SHARD_DIR}/part-{self._writer_id}-{seq:05d}.parquet"
        self._file = self.storage.open_output(self._cur_path)
        self._written_paths.append(self._cur_path)
        assert self.schema is not None
        tensor_cols = [c for c in self._arrow_schema.names if c not in self._scalar_cols]
        compression: dict[str, str] = {c: self.scalar_compression for c in self._scalar_cols}
        compression.update({c: (self.compression or "none") for c in tensor_cols})
        # pyarrow writes a local file natively and takes offsets from its position, so alignment
        # padding goes straight to the file; a Python sink needs the aligning stream
        self._stream = None if isinstance(self._file, LocalShardSink) else AligningStream(self._file.stream)
        self._pq = pq.ParquetWriter(
            self._stream if self._stream is not None else self._file.stream,
            self._file_schema,
            compression=compression,
            use_dictionary=dictionary_columns(first, self._scalar_cols) or False,
            write_statistics=self._stat_cols or False,
            store_schema=True,
            data_page_size=self._page_bytes,
            **_ONE_PAGE_PER_CHUNK,
        )
        self._cur_groups = []

    def _write_group(self, group: pa.Table, group_sizes: np.ndarray) -> None:
        if self._pq is None:
            self._open_shard(group)
        assert self._pq is not None
        if self._aligned is not None:
            rows, nbytes = group.num_rows, self._aligned.row_nbytes
            if self._stream is not None:
                self._stream.expect([rows * nbytes])
            else:
                pad = padding(self._file.stream.tell(), header_length(rows, nbytes, self._page_bytes))
                if pad:
                    self._file.stream.write(bytes(pad))
        self._pq.write_table(group.select(self._file_order), row_group_size=group.num_rows)
        self._file.checkpoint()
        self._cur_groups.append(RowGroupInfo(rows=group.num_rows, stats=_row_group_stats(group, self._stat_cols)))
        if self._shard_is_full(group_sizes):
            self._close_shard()

    def _close_shard(self) -> None:
        if self._pq is None:
            return
        if self._stream is not None:
            self._stream.footer_next()
        self._pq.close()
        if self._stream is not None:
            self._stream.finish()
        size, crc = self._file.finish()
        assert self._cur_path is not None
        rows = sum(g.rows for g in self._cur_groups)
        self._shards.append(ShardInfo(self._cur_path, rows, size, crc, tuple(self._cur_groups)))
        logger.debug("wrote shard %s: %d rows, %d bytes", self._cur_path, rows, size)
        self._pq = None
        self._stream = None
        self._file = None
        self._cur_path = None

    # -- commit / abort ----------------------------------------------------------------------------
    def close(self) -> Manifest:
        """Flush, close the last shard and commit a new version. Returns its manifest."""
        if self._closed:
            raise InvalidArgumentError("this DatasetWriter is already closed")
        if self.schema is None:
            self.abort()
            raise SchemaError("nothing was written and no schema was given: cannot commit an empty dataset without a schema")
        try:
            self._flush_row_group(final=True)
            self._close_shard()
            manifest = self._commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.manifest = manifest
        return manifest

    commit = close

    def _make_durable(self) -> None:
        """Before the commit: on a local disk, flush the directory entries of the new shard files
        (their data was fsynced as each file was finished, :class:`LocalShardSink`), of ``data/``
        and ``_tsfs/`` in the root, and of the root itself when this write creates the dataset, so
        that a committed manifest never names a file a power loss could take back. Object stores
        need nothing: an upload is durable when it completes. Then check that every shard file
        of this write is still there (a vacuum run with too short a safety age must not make this
        writer commit a version naming a deleted file)."""
        st = self.storage
        with st._op("syncing before the commit"):
            if st.is_local:
                os.makedirs(st.path(META_DIR), exist_ok=True)
                dirs = ([st.path(SHARD_DIR)] if self._shards else []) + [st.root]
                if self._parent is None:  # a new dataset: its root's entry in the parent directory too
                    dirs.append(os.path.dirname(os.path.abspath(st.root)))
                for d in dirs:
                    fsync_dir(d)
                missing = [s.path for s in self._shards if not os.path.exists(st.path(s.path))]
            elif self._shards:
                # only this writer's files (their names share its id): a commit costs what it adds,
                # not a listing of every shard of the dataset
                st.fs.invalidate_cache(st.path(SHARD_DIR))
                try:
                    found = st.fs.find(st.path(SHARD_DIR), prefix=f"part-{self._writer_id}-")
                    listed = {p.rstrip("/").rsplit("/", 1)[-1] for p in found}
                    missing = [s.path for s in self._shards if s.path.rsplit("/", 1)[-1] not in listed]
                except TypeError:  # a filesystem whose find takes no prefix: one existence check a file
                    missing = [s.path for s in self._shards if not st.fs.exists(st.path(s.path))]
            else:
                missing = []
        if missing:
            raise StorageError(f"{st.url}: {len(missing)} shard file(s) this writer wrote vanished before the commit "
                               f"(e.g. {missing[0]}; removed by a vacuum with too short a safety age, or by hand); "
                               "nothing was committed")

    def _sync_commit(self) -> None:
        """After the commit: on a local disk, flush ``_tsfs/`` so the new manifest's name is durable.
        The version is committed already: a failure here is logged, never an abort (which would
        delete the shards a visible version names)."""
        if self.storage.is_local:
            try:
                fsync_dir(self.storage.path(META_DIR))
            except OSError as e:
                logger.warning("%s: committed, but could not flush %s to the disk: %s", self.storage.url, META_DIR, e)

    def _commit(self) -> Manifest:
        assert self.schema is not None
        self._make_durable()
        parent = self._parent
        for attempt in range(_COMMIT_RETRIES):
            version = (parent.version if parent else 0) + 1
            shards = [ShardInfo(s.path, s.rows, s.bytes, s.crc32c, s.row_groups, version) for s in self._shards]
            base = list(parent.shards) if (parent is not None and self.mode == "append") else []
            manifest = Manifest(
                version=version,
                parent_version=parent.version if parent else None,
                schema=self.schema,
                shards=tuple(base + shards),
                created_at=now_iso(),
                writer=f"tensorstore_fs {__version__}",
            )
            try:
                commit_manifest(self.storage, manifest)
                self._sync_commit()
                logger.info("%s: committed version %d (%d rows, %d new shards)", self.storage.url, version,
                            manifest.rows, len(shards))
                return manifest
            except CommitConflictError:
                if self.mode == "error":
                    raise DatasetExistsError(f"{self.storage.url}: another writer created a dataset here first") from None
                # a random pause, growing with each conflict: writers that keep colliding spread
                # out, so a slow one is not beaten to every next version (8 appending processes on
                # 2 busy cores once made one give up after 20 conflicts)
                time.sleep(random.uniform(0, min(_COMMIT_BACKOFF_MAX_S, _COMMIT_BACKOFF_S * 2 ** attempt)))
                latest = latest_version(self.storage)
                parent = load_manifest(self.storage, latest) if latest is not None else None
                if self.mode == "append" and parent is not None and parent.schema != self.schema:
                    raise SchemaError(_schema_diff(parent.schema, self.schema, self.storage.url)) from None
        raise CommitConflictError(f"{self.storage.url}: gave up committing after {_COMMIT_RETRIES} conflicts")

    def abort(self) -> None:
        """Discard everything written by this writer; the dataset keeps its previous version."""
        self._closed = True
        try:
            if self._pq is not None:
                self._pq.close()
            if self._file is not None:
                self._file.close()
        except Exception:  # noqa: BLE001 - best effort while already failing
            logger.debug("error closing shard during abort", exc_info=True)
        self._pq = None
        self._stream = None
        self._file = None
        for p in self._written_paths:
            try:
                self.storage.delete(p)
            except Exception:  # noqa: BLE001 - orphan files are harmless: no manifest names them
                logger.warning("%s: could not delete uncommitted shard %s", self.storage.url, p)
        self._written_paths = []
        self._pending = []

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def _schema_diff(old: Schema, new: Schema, url: str) -> str:
    diffs = []
    for f in new.fields:
        if f.name not in old:
            diffs.append(f"new field {f.name!r}")
        elif old[f.name] != f:
            diffs.append(f"field {f.name!r}: dataset has {old[f.name]}, got {f}")
    for f in old.fields:
        if f.name not in new:
            diffs.append(f"missing field {f.name!r}")
    if not diffs and old.names != new.names:
        diffs.append(f"field order differs: dataset {old.names}, got {new.names}")
    if not diffs:
        diffs.append("schema metadata differs")
    return f"append to {url} needs the dataset's schema: " + "; ".join(diffs)


def _is_single_batch(data: Any) -> bool:
    if isinstance(data, (Mapping, list, tuple)):
        return True
    mod = type(data).__module__
    return mod.startswith("pandas") or mod.startswith("pyarrow")


def write_dataset(
    url: str,
    data: Any,
    schema: Schema | None = None,
    mode: str = "error",
    storage_options: Mapping[str, Any] | None = None,
    **writer_options: Any,
):
    """Write ``data`` as a dataset at ``url`` and return the opened :class:`~tensorstore_fs.Dataset`.

    Parameters
    ----------
    url : str
        Dataset root: a local path or any fsspec URL (``memory://``, ``s3://bucket/prefix``, ...).
    data
        One batch (dict of columns, list of row dicts, pandas DataFrame, pyarrow Table or
        RecordBatch) or an iterable of such batches.
    schema : Schema, optional
        Inferred from the first batch when omitted.
    mode : {"error", "overwrite", "append"}
    storage_options : mapping, optional
    **writer_options
        ``row_group_bytes``, ``shard_bytes``, ``compression``, ``scalar_compression``,
        ``allow_lossy_cast`` (see :class:`DatasetWriter`).

    Raises
    ------
    SchemaError
        Data that violates the schema, or values a cast to the field's dtype would change
        (``1e6`` into ``float16``, ``2.5`` into an integer field; ``allow_lossy_cast=True``
        accepts them); nothing is committed.
    DatasetExistsError
        ``mode="error"`` and something exists at ``url``.
    """
    from .read.dataset import open_dataset

    batches: Iterable[Any] = [data] if _is_single_batch(data) else data
    writer = DatasetWriter(url, schema, mode=mode, storage_options=storage_options, **writer_options)
    with writer:
        for b in batches:
            writer.write(b)
    return open_dataset(url, version=writer.manifest.version, storage_options=storage_options)

