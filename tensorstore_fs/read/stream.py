"""Planned streaming: read exactly the rows an :class:`~tensorstore_fs.plan.EpochPlan` assigns.

The framework adapters (``readers.torch``, ``readers.tf``) are thin layers over
:class:`PlannedStream`, so every framework reads the same rows in the same order. A worker's
batches come in runs: storage-contiguous runs are decoded as one sequential read (and sliced),
shuffled windows are gathered (:mod:`tensorstore_fs.read.gather`). Fixed-shape tensor columns of
local shards can instead be handed out where they lie in the files (``located=``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from .._checks import check_int
from ..encoding import decode_column, pad_rows, storage_columns
from ..errors import CorruptDatasetError, InvalidArgumentError, TensorstoreError
from ..parquet.batches import read_batches
from ..parquet.filemap import FileRows
from ..parquet.pages import locatable
from ..parquet.rowgroups import FILES, private_view
from ..plan import MAX_RUN_ROWS, EpochPlan, PlanSpec, Segment
from ..world import World
from .dataset import Dataset, open_dataset
from .gather import UNIT_CACHE, Gatherer, _Unit
from .options import ReadOptions, resolve_columns, variable_mode
from .pieces import decode_writable, group_batches, join_pieces, merge_pieces
from .prune import all_row_groups
from .files import HeldFiles
from .readahead import ReadAhead, readahead_bytes
from .resume import batches_left, resume_plan, roll_over
from .selection import Selection

__all__ = ["LOCATED_MODES", "PAD_COLUMN", "READ_BYTES", "ROW_ID_COLUMN", "PlannedStream", "open_stream", "window_rows"]

logger = logging.getLogger(__name__)

PAD_COLUMN = "__pad__"
ROW_ID_COLUMN = "__row_id__"
READ_BYTES = 16 * 2**20  # decode contiguous rows this many bytes at a time, then slice batches
# how a stream hands out the located fixed-shape tensor columns of local shards (``located=``):
# "rows": as FileRows (where the rows are; the consumer maps or gathers them), "private": rows
# of a contiguous run as views of private copy-on-write maps of the file (in-process readers that
# never yield a row twice in a pass)
LOCATED_MODES = (None, "rows", "private")


class PlannedStream:
    """Reads one (rank, worker)'s share of an epoch as decoded numpy batches.

    Parameters
    ----------
    ds : Dataset
    spec : PlanSpec
    columns : list of str, optional
    selection : Selection
        Eligible rows (from the filter/predicate).
    variable : {"list", "pad", "flat"}
        Variable-shape fields as lists of arrays, zero-padded (plus ``<name>__shape``), or
        :class:`~tensorstore_fs.ragged.RaggedRows`.
    with_row_ids : bool
        Add ``__row_id__``: each row's global index in the dataset version (for audits).
    readahead : int, optional
        Read-ahead budget in bytes (:func:`~tensorstore_fs.read.readahead.readahead_bytes`).
    """

    def __init__(self, ds: Dataset, spec: PlanSpec, columns: Sequence[str] | None, selection: Selection,
                 *, variable: str = "list", with_row_ids: bool = False, readahead: int | None = None,
                 max_padded_bytes: int | None = None) -> None:
        self.ds, self.max_padded_bytes = ds, max_padded_bytes  # the cap on a padded batch (ReadOptions)
        self.readahead_bytes = readahead_bytes(readahead)
        self.spec = spec
        self.columns = resolve_columns(ds.schema, columns)
        self.selection = selection
        self.variable = variable_mode(variable)
        self.with_row_ids = with_row_ids
        self._chunk_offsets: dict[tuple[int, str], int | None] = {}
        refs = all_row_groups(ds.manifest)
        self._unit_shard = np.array([r.shard for r in refs], dtype=np.int64)
        self._unit_rg = np.array([r.row_group for r in refs], dtype=np.int64)
        self._unit_first = np.array([r.first_row for r in refs], dtype=np.int64)
        self._id_starts = np.concatenate([[0], np.cumsum(selection.counts)]).astype(np.int64)
        row_bytes = max(1, ds.nbytes // max(1, len(ds)))
        self._read_rows = max(1, READ_BYTES // row_bytes)
        self._files: HeldFiles | None = None
        self._files_pid: int | None = None
        self._gather = Gatherer(ds.schema, self.columns, self.variable, max_padded_bytes)

    def for_thread(self) -> "PlannedStream":
        """A stream reading the same plan with its own files and batch memory (one per thread)."""
        other = self.__class__.__new__(self.__class__)
        other.__dict__.update(self.__getstate__())
        return other

    @property
    def read_rows(self) -> int:
        """Rows of one contiguous read (about ``READ_BYTES``): a good chunk size for ``iter_chunks``."""
        return self._read_rows

    def located_fields(self) -> list[str]:
        """The columns a ``located`` read may hand out where they lie in the files (fixed-shape,
        non-nullable tensors of a local dataset, or of a remote one read through the node-local
        cache; :func:`~tensorstore_fs.parquet.pages.locatable`)."""
        if not (self.ds.storage.is_local or self.ds.storage.cache is not None):
            return []
        return [c for c in self.columns if locatable(self.ds.schema.field(c))]

    def plan(self, epoch: int, world_size: int, history: Sequence[Segment] = ()) -> EpochPlan:
        return EpochPlan(self.selection.counts, self.spec, epoch, world_size, history)

    def resume_plan(self, epoch: int, world_size: int, history: Sequence[Segment], rank: int, worker: int,
                    num_workers: int) -> tuple[EpochPlan, int, int, tuple[Segment, ...]]:
        """See :func:`tensorstore_fs.read.resume.resume_plan`."""
        return resume_plan(self.selection.counts, self.spec, epoch, world_size, history, rank, worker, num_workers)

    def batches_left(self, epoch: int, world_size: int, history: Sequence[Segment], rank: int) -> int:
        """See :func:`tensorstore_fs.read.resume.batches_left`."""
        return batches_left(self.selection.counts, self.spec, epoch, world_size, history, rank)

    def roll_over(self, epoch: int, world_size: int, history: Sequence[Segment], rank: int,
                  consumed_batches: int) -> tuple[int, tuple[Segment, ...], int]:
        """See :func:`tensorstore_fs.read.resume.roll_over`."""
        return roll_over(self.selection.counts, self.spec, epoch, world_size, history, rank, consumed_batches)

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
    def iter_worker(self, plan: EpochPlan, rank: int, worker: int, num_workers: int, skip: int = 0, *,
                    keep_open: bool = True, located: str | None = None) -> Iterator[dict[str, Any]]:
        """Decoded batches of one worker, skipping its first ``skip`` batches.

        ``keep_open`` keeps the shard files (memory maps) open for the next epoch, which saves
        mapping them again; DataLoader workers close them at the end of each epoch instead, so
        their resident memory does not accumulate file pages epoch after epoch. ``located`` (see
        ``LOCATED_MODES``): hand out located tensor columns as FileRows (``"rows"``) or, in
        contiguous runs, as private copy-on-write maps of the files (``"private"``)."""
        for batch, _ in self.iter_chunks(plan, rank, worker, num_workers, skip, keep_open=keep_open, located=located):
            yield batch

    def iter_chunks(self, plan: EpochPlan, rank: int, worker: int, num_workers: int, skip: int = 0, *,
                    keep_open: bool = True, chunk_rows: int = 0, located: str | None = None
                    ) -> Iterator[tuple[dict[str, Any], list[int]]]:
        """Like :meth:`iter_worker`, but consecutive batches of equal size come decoded together:
        ``(chunk, batch sizes)`` with up to ``chunk_rows`` rows a chunk (never splitting a batch;
        ``0``: one batch a chunk). Frameworks that slice batches cheaply themselves (tf.data)
        cross the Python boundary once per chunk instead of once per batch."""
        if located not in LOCATED_MODES:
            raise InvalidArgumentError(f"located must be one of {LOCATED_MODES}, got {located!r}")
        files = self._process_files()
        cache: dict[Any, _Unit] = {}
        maps: dict[Any, np.ndarray] = {}  # current row groups' private maps ("private"); batches keep theirs
        runs = files.read_ahead(lambda: self._runs(plan.worker_batches(rank, worker, num_workers, skip)))
        try:
            for i, (contiguous, batches) in enumerate(runs):
                groups = group_batches(batches, chunk_rows, first_alone=i == 0)
                sizes = [sum(len(ids) for ids, _ in g) for g in groups]
                run_ids = np.concatenate([ids for ids, _ in batches])
                mapped = located == "private" and contiguous
                # a contiguous run may span every shard: locate its columns from the first batch's
                # row groups and check each later batch's as it comes, so the first batch never
                # waits for every file of the run to be opened
                found = (self._file_columns(files, groups[0][0][0] if contiguous else run_ids, contiguous)
                         if located == "rows" or mapped else ())
                cols = [c for c in self.columns if c not in found]
                if not cols:
                    tables: Iterator[Any] = iter([None] * len(groups))
                elif contiguous:
                    tables = self._contiguous(files, int(batches[0][0][0]), sizes, cols)
                else:
                    tables = self._gathered(files, cache, run_ids, sizes, cols)
                for g, (group, table) in enumerate(zip(groups, tables)):
                    if g == 0 and not contiguous:  # the window's row groups are read: read ahead past them
                        files.run_done((contiguous, batches))
                    if len(group) == 1:
                        ids, pad = group[0]
                    else:
                        ids, pad = (np.concatenate(parts) for parts in zip(*group))
                    out = self._decode(table, ids, pad, cols)
                    if found:
                        here = self._file_columns(files, ids, True, found) if contiguous else found
                        if len(here) < len(found):  # a row group that stores a column otherwise: decode it
                            out.update(next(self._gathered(files, cache, ids, [len(ids)],
                                                           [c for c in found if c not in here])))
                        if mapped:
                            out.update((c, self._mapped_rows(c, int(ids[0]), len(ids), maps)) for c in here)
                        else:
                            out.update((c, self._file_rows(c, ids)) for c in here)
                        out = {k: out[k] for k in self._gather.output_order(out) + [k for k in out if k.startswith("__")]}
                    yield out, [len(i) for i, _ in group]
                    if contiguous:
                        files.consumed(ids)
                if contiguous:
                    files.run_done((contiguous, batches))
        finally:
            if not keep_open:  # nothing of this process's files stays mapped (DataLoader workers)
                cache.clear()
                self.close()
                FILES.clear()

    def _process_files(self) -> HeldFiles:
        """Shard files held in this process, kept across epochs (a forked child opens its own),
        and their read-ahead."""
        if self._files is None or self._files_pid != os.getpid():
            ra = None
            if self.readahead_bytes:
                cols = storage_columns(self.ds.schema, self.columns)
                ra = ReadAhead(self.ds.storage, self.ds.manifest, cols, self.readahead_bytes)
            self._files, self._files_pid = HeldFiles(self.ds, ra, self._id_starts), os.getpid()
        return self._files

    def close(self) -> None:
        """Close the shard files this process holds (they are reopened on the next read)."""
        if self._files is not None and self._files_pid == os.getpid():
            self._files.close()
        self._files = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_files_pid"] = None, None  # open files never travel to other processes
        state["_gather"] = Gatherer(self.ds.schema, self.columns, self.variable, self.max_padded_bytes)
        return state

    def _runs(self, batches: Iterator[tuple[int, np.ndarray, np.ndarray]]
              ) -> Iterator[tuple[bool, list[tuple[np.ndarray, np.ndarray]]]]:
        """Group a worker's batches into reads: maximal runs of storage-contiguous batches (read
        as one stream, across windows), else one window at a time (gathered)."""
        plain = self.selection.everything
        run: list[tuple[np.ndarray, np.ndarray]] = []
        run_contiguous, run_window, last, run_rows = False, -1, -2, 0
        for k, ids, pad in batches:
            contiguous = (plain and len(ids) > 0 and not pad.any() and int(ids[-1]) - int(ids[0]) == len(ids) - 1
                          and bool(np.all(np.diff(ids) == 1)))
            if run and contiguous and run_contiguous and int(ids[0]) == last + 1 and run_rows < MAX_RUN_ROWS:
                run.append((ids, pad))
                run_rows += len(ids)
            elif run and not contiguous and not run_contiguous and k == run_window:
                run.append((ids, pad))
            else:
                if run:
                    yield run_contiguous, run
                run, run_contiguous, run_window, run_rows = [(ids, pad)], contiguous, k, len(ids)
            last = int(ids[-1]) if len(ids) else last
        if run:
            yield run_contiguous, run

    # -- located columns (see tensorstore_fs.parquet.filemap) -------------------------------------
    def _chunk_offset(self, files: HeldFiles, u: int, name: str) -> int | None:
        """Byte offset of row 0 of column ``name`` in row group ``u``'s file, where the chunk is
        located (:meth:`~tensorstore_fs.parquet.rowgroups.OpenFile.values_offset`; cached)."""
        key = (u, name)
        if key not in self._chunk_offsets:
            f = files.get(int(self._unit_shard[u]))
            self._chunk_offsets[key] = f.values_offset(int(self._unit_rg[u]), name, self.ds.schema.field(name).row_nbytes)
        return self._chunk_offsets[key]

    def _file_columns(self, files: HeldFiles, ids: np.ndarray, contiguous: bool = False,
                      among: Sequence[str] | None = None) -> tuple[str, ...]:
        """Columns (of ``among``, default all located fields) every row of ``ids`` can be located
        for in a file; ``contiguous``: ``ids`` are consecutive ids, so their row groups are a range."""
        if not len(ids):
            return ()
        if contiguous:
            first, last = np.searchsorted(self._id_starts, (ids[0], ids[-1]), side="right") - 1
            units = range(int(first), int(last) + 1)
        else:
            units = np.unique(np.searchsorted(self._id_starts, ids, side="right") - 1)
        return tuple(name for name in (self.located_fields() if among is None else among)
                     if all(self._chunk_offset(files, int(u), name) is not None for u in units))

    def shard_path(self, shard: int) -> str:
        """The local path of shard ``shard`` (as :class:`~tensorstore_fs.parquet.filemap.FileRows` name
        it): its copy in the node-local cache for a remote dataset."""
        cache = self.ds.storage.cache
        if cache is None:
            return os.path.abspath(self.ds.storage.path(self.ds.shards[shard].path))
        info = self.ds.shards[shard]
        return os.path.abspath(cache.fetch(self.ds.storage, info.path, info.bytes, info.crc32c))

    def _unit_path(self, u: int) -> str:
        return self.shard_path(int(self._unit_shard[u]))

    def _mapped_rows(self, name: str, first: int, n: int, maps: dict[Any, np.ndarray]) -> np.ndarray:
        """Rows ``[first, first + n)`` (storage order, no filter) of a located column as views of
        private copy-on-write maps of their row group's bytes: no copy inside one row group, one
        copy across two, and one aligning copy where the chunk's values are not element-aligned.
        ``maps`` keeps only the current row group's maps, so pages a consumer wrote to are freed
        with its batches rather than at the end of the pass."""
        f = self.ds.schema.field(name)
        dtype = f.numpy_dtype.newbyteorder("<")
        rb = f.row_nbytes
        parts, i, end = [], first, first + n
        while i < end:
            u = int(np.searchsorted(self._id_starts, i, side="right") - 1)
            take = min(end, int(self._id_starts[u + 1])) - i
            key = (u, name)
            data = maps.get(key)
            if data is None:
                for k in [k for k in maps if k[1] == name]:
                    del maps[k]  # batches keep their own references
                rows = int(self._id_starts[u + 1] - self._id_starts[u])
                data = maps[key] = private_view(self._unit_path(u), int(self._chunk_offsets[key]), rows * rb)
            at = (i - int(self._id_starts[u])) * rb
            parts.append(data[at:at + take * rb])
            i += take
        if len(parts) == 1:
            flat = parts[0]
        else:  # joined into a recycled (already faulted-in) array: the only copy of such a batch
            flat = self._gather.pool.empty((n * rb,), np.dtype(np.uint8))
            np.concatenate(parts, out=flat)
        out = flat.view(dtype).reshape((n, *f.shape))
        # numpy copies into aligned memory; torch kernels (and DLPack) expect element alignment
        return out if out.flags.aligned else out.copy()

    def _file_rows(self, name: str, ids: np.ndarray) -> FileRows:
        f = self.ds.schema.field(name)
        units, local = self._locate(ids)
        segs, segment = np.unique(units, return_inverse=True)
        return FileRows(
            dtype=f.numpy_dtype.newbyteorder("<").str, row_shape=tuple(int(d) for d in f.shape),
            paths=tuple(self._unit_path(int(u)) for u in segs),
            offsets=tuple(int(self._chunk_offsets[(int(u), name)]) for u in segs),
            segment=segment.astype(np.int32), rows=np.asarray(local, dtype=np.int64))

    # -- contiguous runs and gathered windows ------------------------------------------------------
    def _gathered(self, files: HeldFiles, cache: dict[Any, _Unit], ids: np.ndarray,
                  sizes: list[int], cols: list[str]) -> Iterator[dict[str, Any]]:
        """Rows by id in any order, decoded (see :mod:`tensorstore_fs.read.gather`)."""
        units, local = self._locate(ids)

        def unit(u: int) -> _Unit:
            key = (u, tuple(cols))
            if key not in cache:
                if len(cache) >= UNIT_CACHE:
                    cache.pop(next(iter(cache)))
                cache[key] = self._gather.read_unit(files.get(int(self._unit_shard[u])), int(self._unit_rg[u]), cols)
            return cache[key]

        return self._gather.batches(unit, units, local, sizes, cols)

    def _shard_url(self, shard: int) -> str:
        return f"{self.ds.url}/{self.ds.shards[shard].path}"

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

    def _contiguous(self, files: "HeldFiles", first_id: int, sizes: list[int], cols: list[str]
                    ) -> Iterator[tuple[pa.Table | None, dict[str, Any]]]:
        """Rows [first_id, first_id + sum(sizes)) in storage order, as exact-size batches decoded
        straight from Parquet (a batch is re-assembled only where it spans two shard files).

        Each batch is ``(table, decoded)``: fields of one value per row (scalars, fixed-shape
        tensors, strings) are decoded once per read and arrive as writable numpy slices in
        ``decoded``. So do variable-shape fields in flat mode (``RaggedRows`` slices) and padded
        mode (padded per batch from such a slice, the width being the batch's own); only rows
        handed out as per-row lists stay in ``table`` (None when there are none)."""
        schema = self.ds.schema
        # variable-shape rows are decoded flat once per read too, and sliced; padded ones are
        # padded per batch (the width is the batch's own)
        sliced = [c for c in cols if not schema.field(c).is_variable or self.variable != "list"]
        rest = [c for c in cols if c not in sliced]
        padded = [schema.field(c) for c in sliced if self.variable == "pad" and schema.field(c).is_variable]
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
            reads = merge_pieces(pieces, self._read_rows)
            it = read_batches(files.get(shard).parquet, rgs, storage_columns(schema, cols),
                              ([skip] if skip else []) + [sum(r) for r in reads], 1, name=self._shard_url(shard),
                              schema=schema)
            try:
                if skip:
                    self._next_read(it, shard)
                for group in reads:
                    rb = self._next_read(it, shard)
                    if rb is None or rb.num_rows != sum(group):
                        raise CorruptDatasetError(f"{self._shard_url(shard)}: holds fewer rows than its manifest says")
                    decoded = decode_writable(rb, [schema.field(c) for c in sliced], self.variable != "list")
                    offset = 0
                    for want in group:  # zero-copy slices of one decoded read
                        pending.append((rb.slice(offset, want) if rest else None,
                                        {k: v[offset:offset + want] for k, v in decoded.items()}))
                        offset += want
                        have += want
                        if have == sizes[cur]:
                            batch = pending[0] if len(pending) == 1 else join_pieces(pending)
                            for f in padded:
                                batch[1].update(pad_rows(batch[1].pop(f.name), f, self.max_padded_bytes))
                            yield batch
                            cur, have, pending = cur + 1, 0, []
            finally:
                it.close()

    def _next_read(self, it: Iterator[pa.RecordBatch], shard: int) -> pa.RecordBatch | None:
        """The next batch ``read_batches`` decodes from shard file ``shard`` (None at its end); a
        file pyarrow cannot decode is a :class:`CorruptDatasetError` naming it."""
        try:
            return next(it, None)
        except TensorstoreError:  # a storage failure is not damage
            raise
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptDatasetError(f"{self._shard_url(shard)}: unreadable: {e}") from None

    def _decode(self, table: pa.Table | dict[str, Any] | None, ids: np.ndarray, pad: np.ndarray,
                cols: list[str]) -> dict[str, Any]:
        if isinstance(table, dict):
            out = table
        else:
            out = {}
            if isinstance(table, tuple):  # from _contiguous: (variable-shape fields, the others decoded)
                table, decoded = table
                out.update(decoded)
            for name in cols if table is not None else ():
                if name not in out:
                    out.update(decode_column(table, self.ds.schema.field(name), pad=self.variable == "pad",
                                             flat=self.variable == "flat", max_padded_bytes=self.max_padded_bytes))
            if len(out) > 1:
                out = {k: out[k] for k in self._gather.output_order(out)}
        if self.spec.remainder == "pad":
            out[PAD_COLUMN] = pad
        if self.with_row_ids:
            out[ROW_ID_COLUMN] = self.row_ids(ids)
        return out


def window_rows(ds: Dataset, eligible_rows: int, batch_size: int, window_bytes: int) -> int:
    """Rows of a worker window: ``window_bytes`` worth of rows, but at most 1/8 of the eligible
    rows so that small datasets still spread over workers; a multiple of the batch size. Depends
    only on the dataset, the filter and the arguments (never on the world), so resumed runs agree."""
    window_bytes = check_int("window_bytes", window_bytes)
    row_bytes = max(1, ds.nbytes // max(1, len(ds)))
    by_bytes = max(1, window_bytes // max(1, row_bytes * batch_size))
    by_share = max(1, eligible_rows // (8 * batch_size))
    return int(min(by_bytes, by_share) * batch_size)


def open_stream(ds_or_url: Dataset | str, options: ReadOptions, *, rank: int | None = None,
                world_size: int | None = None, version: int | None = None,
                storage_options: Any = None, cache_dir: Any = None) -> tuple[PlannedStream, World]:
    """The stream and world every framework adapter starts from (same options, same plan).
    ``cache_dir``: keep the shards of a remote dataset opened from a URL in that node-local cache."""
    if isinstance(ds_or_url, Dataset):
        if cache_dir is not None:
            raise InvalidArgumentError("cache_dir= applies to a dataset opened from a URL: pass it to "
                                       "tsfs.open_dataset(url, cache_dir=...) when you give an opened Dataset")
        ds = ds_or_url
    else:
        ds = open_dataset(ds_or_url, version, storage_options, cache_dir=cache_dir)
    world = World.detect(rank, world_size)
    selection = Selection.compute(ds, options.filter, options.predicate)
    spec = PlanSpec(options.batch_size, shuffle=options.shuffle, seed=options.seed, remainder=options.remainder,
                    drop_last=options.drop_last,
                    window_rows=window_rows(ds, int(selection.counts.sum()), options.batch_size, options.window_bytes))
    stream = PlannedStream(ds, spec, options.columns, selection, variable=options.variable,
                           with_row_ids=options.with_row_ids, readahead=options.readahead_bytes,
                           max_padded_bytes=options.max_padded_bytes)
    return stream, world
