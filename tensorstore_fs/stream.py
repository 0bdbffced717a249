"""Planned streaming: read exactly the rows an :class:`~tensorstore_fs.plan.EpochPlan` assigns.

The framework adapters (``readers.torch``, ``readers.tf``) are thin layers over
:class:`PlannedStream`, so every framework reads the same rows in the same order.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .dataset import Dataset, open_dataset
from .encoding import decode_column, pad_rows, storage_columns
from ._pool import ALIGN, SMALL_BYTES, aligned_empty
from ._pool import RecyclingPool as _RecyclingPool
from .filemap import FileRows, private_view
from .errors import CorruptDatasetError, InvalidArgumentError
from .plan import EpochPlan, PlanSpec, Segment
from .pages import locatable, plain_values_offset
from .predicates import Predicate
from .ragged import RaggedRows
from .schema import Field
from .scan import Scanner, all_row_groups, check_shard_file, read_batches, resolve_columns, use_threads
from .world import World

__all__ = ["Selection", "PlannedStream", "StreamState", "open_stream", "window_rows", "check_num_epochs", "PAD_COLUMN", "ROW_ID_COLUMN", "STATE_FORMAT"]

logger = logging.getLogger(__name__)

PAD_COLUMN = "__pad__"
ROW_ID_COLUMN = "__row_id__"
STATE_FORMAT = "tensorstore_fs.stream_state"
STATE_VERSION = 2  # 2: shuffled epochs permute row ranges inside row groups (plan.split_units)
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
            info = self.ds.shards[shard]
            opened = self.ds.storage.open_parquet(info.path)
            try:
                check_shard_file(opened[0], info, f"{self.ds.url}/{info.path}", self.ds.storage_schema)
            except CorruptDatasetError:
                opened[1].close()
                raise
            self._open[shard] = opened
        return self._open[shard][0]

    def source(self, shard: int) -> Any:
        """The open file behind ``get(shard)`` (a memory map for local datasets)."""
        self.get(shard)
        return self._open[shard][1]

    def close_one(self) -> None:
        shard = next(iter(self._open))
        self._open.pop(shard)[1].close()

    def close(self) -> None:
        while self._open:
            self.close_one()


READ_BYTES = 16 * 2**20  # decode contiguous rows this many bytes at a time, then slice batches


def _merge_pieces(pieces: list[int], max_rows: int) -> list[list[int]]:
    """Group consecutive batch pieces into reads of at most ``max_rows`` rows (a piece is never
    split), so Parquet decodes fewer, larger batches that are then sliced without copying."""
    reads: list[list[int]] = []
    for p in pieces:
        if reads and sum(reads[-1]) + p <= max_rows:
            reads[-1].append(p)
        else:
            reads.append([p])
    return reads


def _group_batches(batches: list[tuple[np.ndarray, np.ndarray]], chunk_rows: int, first_alone: bool = False
                   ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Consecutive batches of equal size grouped up to ``chunk_rows`` rows (each group at least
    one batch), so a group reshapes to ``(batches, batch size, ...)``; ``first_alone``: the first
    batch is a group of its own (a pass's first batch is not held back by the ones after it)."""
    if chunk_rows <= 0:
        return [[b] for b in batches]
    groups: list[list[tuple[np.ndarray, np.ndarray]]] = []
    rows = 0
    for b in batches:
        if groups and rows + len(b[0]) <= chunk_rows and len(b[0]) == len(groups[-1][0][0]) and not (
                first_alone and len(groups) == 1):
            groups[-1].append(b)
            rows += len(b[0])
        else:
            groups.append([b])
            rows = len(b[0])
    return groups


UNIT_CACHE = 6  # decoded row groups kept per worker (windows share their boundary row groups)


class _Unit:
    """One decoded row group and lazily made zero-copy numpy views of its dense columns."""

    def __init__(self, table: pa.Table, direct: dict[str, np.ndarray] | None = None) -> None:
        self.table = table
        self._views: dict[str, np.ndarray | None] = dict(direct or {})

    def dense(self, name: str, f: Any) -> np.ndarray | None:
        """``(rows, *shape)`` view of a null-free scalar or fixed-shape column, else None."""
        if name not in self._views:
            col = self.table.column(name)
            ok = (f.is_fixed_tensor or (f.is_scalar and f.dtype not in ("string", "bytes"))) and col.null_count == 0
            self._views[name] = np.asarray(decode_column(self.table.select([name]), f)[name]) if ok else None
        return self._views[name]


@dataclass(frozen=True)
class StreamState:
    """A parsed resume state (see ``TorchDataset.state_dict``; the tf.data reader shares it).

    ``history`` holds the interrupted segments of ``epoch``; a worker-level state (saved inside a
    DataLoader worker) also has ``worker``, ``worker_batches`` and ``plan_worker``.
    """

    epoch: int
    history: tuple[Segment, ...]
    world_size: int
    num_workers: int
    worker: int | None = None
    worker_batches: int = 0
    plan_worker: int | None = None

    @staticmethod
    def rank_dict(dataset_version: int, spec: PlanSpec, epoch: int, history: Sequence[Segment],
                  world_size: int, num_workers: int, consumed_batches: int) -> dict[str, Any]:
        """The JSON-ready rank-level state: ``consumed_batches`` of ``epoch`` after ``history``."""
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "dataset_version": dataset_version,
            "spec": spec.to_dict(),
            "epoch": epoch,
            "history": [[s.world_size, s.num_workers, s.consumed_batches] for s in history],
            "world_size": world_size,
            "num_workers": max(1, num_workers),
            "consumed_batches": consumed_batches,
        }

    @staticmethod
    def fold(history: Sequence[Segment], world_size: int, num_workers: int,
             consumed_batches: int) -> tuple[tuple[Segment, ...], int]:
        """``(history, consumed)`` to save when ``consumed_batches`` were taken since resuming from
        ``history``: a last segment of the same world and worker count was continued exactly (see
        :meth:`PlannedStream.resume_plan`), so its batches and the new ones are one count of the
        same plan; any other history is kept as it is."""
        history = tuple(history)
        if history and history[-1].world_size == world_size and history[-1].num_workers == num_workers:
            return history[:-1], history[-1].consumed_batches + consumed_batches
        return history, consumed_batches

    @classmethod
    def parse(cls, state: Any, dataset_version: int, spec: PlanSpec) -> "StreamState":
        """Validate a saved state against the reader's dataset version and plan spec.

        A rank-level state's progress is folded into ``history`` as one more segment.

        Raises
        ------
        InvalidArgumentError
            Not a stream state, another format version, another dataset version or plan spec,
            or malformed fields.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InvalidArgumentError("not a tensorstore_fs stream state")
        if state.get("format_version") != STATE_VERSION:
            raise InvalidArgumentError(f"stream state format_version {state.get('format_version')!r} is not supported")
        try:
            if state["dataset_version"] != dataset_version:
                raise InvalidArgumentError(
                    f"state was saved on dataset version {state['dataset_version']}, this reader has version "
                    f"{dataset_version}: open the dataset with version={state['dataset_version']}"
                )
            saved = PlanSpec(**state["spec"])
            if saved != spec:
                raise InvalidArgumentError(f"state was saved with {saved}, this reader uses {spec}")
            history = tuple(Segment(*h) for h in state["history"])
            epoch = _state_int(state, "epoch", 0)
            world_size, num_workers = _state_int(state, "world_size", 1), _state_int(state, "num_workers", 1)
            if "worker" in state:
                worker = _state_int(state, "worker", 0)
                plan_worker = _state_int(state, "plan_worker", 0) if "plan_worker" in state else worker
                return cls(epoch, history, world_size, num_workers, worker,
                           _state_int(state, "worker_batches", 0), plan_worker)
            consumed = _state_int(state, "consumed_batches", 0)
            if consumed:  # a segment that consumed nothing changes nothing (and must not reshuffle the rest)
                history += (Segment(world_size, num_workers, consumed),)
            return cls(epoch, history, world_size, num_workers)
        except InvalidArgumentError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgumentError(f"malformed tensorstore_fs stream state ({type(e).__name__}: {e})") from None


def _state_int(state: dict[str, Any], key: str, minimum: int) -> int:
    v = state[key]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise InvalidArgumentError(f"stream state {key!r} must be an int >= {minimum}, got {v!r}")
    return int(v)


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
    flat_variable : bool
        Decode variable-shape fields as :class:`~tensorstore_fs.ragged.RaggedRows` instead of lists.
    with_row_ids : bool
        Add ``__row_id__``: each row's global index in the dataset version (for audits).
    """

    def __init__(self, ds: Dataset, spec: PlanSpec, columns: Sequence[str] | None, selection: Selection,
                 *, pad_variable: bool = False, with_row_ids: bool = False, flat_variable: bool = False) -> None:
        self.ds = ds
        self.spec = spec
        self.columns = resolve_columns(ds.schema, columns)
        self.selection = selection
        self.pad_variable = pad_variable
        self.flat_variable = flat_variable
        self.with_row_ids = with_row_ids
        self._storage_cols = storage_columns(ds.schema, self.columns)
        # file_backed: fixed-shape tensor columns of local shards come as FileRows (see filemap)
        self.file_backed = False
        # map_private: contiguous rows of such columns are views of one private copy-on-write map
        # per file and pass (in-process readers that never yield a row twice in a pass)
        self.map_private = False
        self._chunk_offsets: dict[tuple[int, str], int | None] = {}
        refs = all_row_groups(ds.manifest)
        self._unit_shard = np.array([r.shard for r in refs], dtype=np.int64)
        self._unit_rg = np.array([r.row_group for r in refs], dtype=np.int64)
        self._unit_first = np.array([r.first_row for r in refs], dtype=np.int64)
        self._id_starts = np.concatenate([[0], np.cumsum(selection.counts)]).astype(np.int64)
        row_bytes = max(1, ds.nbytes // max(1, len(ds)))
        self._read_rows = max(1, READ_BYTES // row_bytes)
        self._files: _Files | None = None
        self._files_pid: int | None = None
        self._pool = _RecyclingPool()
        # per-batch bookkeeping that depends only on the columns and batch size, computed once
        self._field_cache: dict[tuple[str, ...], list[Field]] = {}
        self._layout_cache: dict[tuple[Any, ...], tuple[int, list, list]] = {}
        self._order_cache: dict[tuple[str, ...], list[str]] = {}

    @property
    def read_rows(self) -> int:
        """Rows of one contiguous read (about ``READ_BYTES``): a good chunk size for ``iter_chunks``."""
        return self._read_rows

    def plan(self, epoch: int, world_size: int, history: Sequence[Segment] = ()) -> EpochPlan:
        return EpochPlan(self.selection.counts, self.spec, epoch, world_size, history)

    def resume_plan(self, epoch: int, world_size: int, history: Sequence[Segment], rank: int, worker: int,
                    num_workers: int) -> tuple[EpochPlan, int, int, tuple[Segment, ...]]:
        """``(plan, plan worker, batches to skip, history)``: what DataLoader worker ``worker``
        reads to continue an epoch.

        If the last interruption happened with the same world size and worker count, the plan it
        interrupted continues exactly — same rows, same order as an uninterrupted run. The
        DataLoader restarts its round-robin at worker 0, so worker ``i`` takes over the stream of
        plan worker ``(next + i) % num_workers``, where ``next`` is the worker whose batch was due,
        and skips what that stream already delivered; the last segment is folded back into the
        progress count. Otherwise the rest of the epoch is re-planned over the rows not consumed.
        """
        history = tuple(history)
        if history and history[-1].world_size == world_size and history[-1].num_workers == num_workers:
            base_history = history[:-1]
            base = self.plan(epoch, world_size, base_history)
            order = base.loader_batches(rank, num_workers)
            k = min(history[-1].consumed_batches, len(order))
            nxt = order[k][0] if k < len(order) else 0
            source = (nxt + worker) % num_workers
            return base, source, sum(1 for w, _ in order[:k] if w == source), base_history
        return self.plan(epoch, world_size, history), worker, 0, history

    def batches_left(self, epoch: int, world_size: int, history: Sequence[Segment], rank: int) -> int:
        """Batches ``rank`` still reads in ``epoch`` after the interrupted segments ``history``."""
        history = tuple(history)
        if history and history[-1].world_size == world_size:  # continued exactly (see resume_plan)
            plan = self.plan(epoch, world_size, history[:-1])
            return max(0, plan.num_batches(rank) - history[-1].consumed_batches)
        return self.plan(epoch, world_size, history).num_batches(rank)

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
                    skip: int = 0, *, keep_open: bool = True) -> Iterator[dict[str, Any]]:
        """Decoded batches of one worker, skipping its first ``skip`` batches.

        ``keep_open`` keeps the shard files (memory maps) open for the next epoch, which saves
        mapping them again; DataLoader workers close them at the end of each epoch instead, so
        their resident memory does not accumulate file pages epoch after epoch."""
        for batch, _ in self.iter_chunks(plan, rank, worker, num_workers, skip, keep_open=keep_open):
            yield batch

    def iter_chunks(self, plan: EpochPlan, rank: int, worker: int, num_workers: int, skip: int = 0, *,
                    keep_open: bool = True, chunk_rows: int = 0) -> Iterator[tuple[dict[str, Any], list[int]]]:
        """Like :meth:`iter_worker`, but consecutive batches of equal size come decoded together:
        ``(chunk, batch sizes)`` with up to ``chunk_rows`` rows a chunk (never splitting a batch;
        ``0``: one batch a chunk). Frameworks that slice batches cheaply themselves (tf.data)
        cross the Python boundary once per chunk instead of once per batch."""
        files = self._process_files()
        cache: dict[int, _Unit] = {}
        maps: dict[Any, np.ndarray] = {}  # current row groups' private maps (map_private); batches keep theirs
        try:
            for i, (contiguous, batches) in enumerate(self._runs(plan.worker_batches(rank, worker, num_workers, skip))):
                groups = _group_batches(batches, chunk_rows, first_alone=i == 0)
                sizes = [sum(len(ids) for ids, _ in g) for g in groups]
                run_ids = np.concatenate([ids for ids, _ in batches])
                mapped = self.map_private and contiguous and not self.file_backed
                # a contiguous run may span every shard: locate its columns from the first batch's
                # row groups and check each later batch's as it comes, so the first batch never
                # waits for every file of the run to be opened
                located = (self._file_columns(files, groups[0][0][0] if contiguous else run_ids, contiguous)
                           if self.file_backed or mapped else ())
                cols = [c for c in self.columns if c not in located]
                if not cols:
                    tables: Iterator[Any] = iter([None] * len(groups))
                elif contiguous:
                    tables = self._contiguous(files, int(batches[0][0][0]), sizes, cols)
                else:
                    tables = self._gathered(files, cache, run_ids, sizes, cols)
                for group, table in zip(groups, tables):
                    if len(group) == 1:
                        ids, pad = group[0]
                    else:
                        ids, pad = (np.concatenate(parts) for parts in zip(*group))
                    out = self._decode(table, ids, pad, cols)
                    if located:
                        here = self._file_columns(files, ids, True, located) if contiguous else located
                        if len(here) < len(located):  # a row group that stores a column otherwise: decode it
                            out.update(next(self._gathered(files, cache, ids, [len(ids)],
                                                           [c for c in located if c not in here])))
                        if mapped:
                            out.update((c, self._mapped_rows(c, int(ids[0]), len(ids), maps)) for c in here)
                        else:
                            out.update((c, self._file_rows(c, ids)) for c in here)
                        out = {k: out[k] for k in self._output_order(out) + [k for k in out if k.startswith("__")]}
                    yield out, [len(i) for i, _ in group]
        finally:
            if not keep_open:
                cache.clear()
                self.close()

    def _process_files(self) -> _Files:
        """Shard files open in this process, kept across epochs (a forked child opens its own)."""
        if self._files is None or self._files_pid != os.getpid():
            self._files, self._files_pid = _Files(self.ds), os.getpid()
        return self._files

    def close(self) -> None:
        """Close the shard files this process holds open (they are reopened on the next read)."""
        if self._files is not None and self._files_pid == os.getpid():
            self._files.close()
        self._files = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_files_pid"] = None, None  # open files never travel to other processes
        state["_pool"] = _RecyclingPool()
        return state

    def _runs(self, batches: Iterator[tuple[int, np.ndarray, np.ndarray]]
              ) -> Iterator[tuple[bool, list[tuple[np.ndarray, np.ndarray]]]]:
        """Group a worker's batches into reads: maximal runs of storage-contiguous batches (read
        as one stream, across windows), else one window at a time (gathered)."""
        plain = self.selection.everything
        run: list[tuple[np.ndarray, np.ndarray]] = []
        run_contiguous, run_window, last = False, -1, -2
        for k, ids, pad in batches:
            contiguous = (plain and len(ids) > 0 and not pad.any() and int(ids[-1]) - int(ids[0]) == len(ids) - 1
                          and bool(np.all(np.diff(ids) == 1)))
            if run and contiguous and run_contiguous and int(ids[0]) == last + 1:
                run.append((ids, pad))
            elif run and not contiguous and not run_contiguous and k == run_window:
                run.append((ids, pad))
            else:
                if run:
                    yield run_contiguous, run
                run, run_contiguous, run_window = [(ids, pad)], contiguous, k
            last = int(ids[-1]) if len(ids) else last
        if run:
            yield run_contiguous, run

    # -- file-backed columns (see tensorstore_fs.filemap) ---------------------------------------
    def _chunk_offset(self, files: _Files, u: int, name: str) -> int | None:
        """Byte offset of row 0 of column ``name`` in row group ``u``'s file, when the chunk is
        one plain page of a local memory-mappable file (cached; None otherwise)."""
        key = (u, name)
        if key not in self._chunk_offsets:
            shard, rg = int(self._unit_shard[u]), int(self._unit_rg[u])
            pf, source = files.get(shard), files.source(shard)
            offset = None
            if isinstance(source, pa.MemoryMappedFile):
                f = self.ds.schema.field(name)
                meta = pf.metadata.row_group(rg)
                index = pf.schema_arrow.get_field_index(name)
                if index >= 0:
                    offset = plain_values_offset(source.read_at, meta.column(index), meta.num_rows, f.row_nbytes)
            self._chunk_offsets[key] = offset
        return self._chunk_offsets[key]

    def _file_columns(self, files: _Files, ids: np.ndarray, contiguous: bool = False,
                      among: Sequence[str] | None = None) -> tuple[str, ...]:
        """Columns (of ``among``, default all) every row of ``ids`` can be located for in a file
        (fixed-shape, no nulls, one plain page per row group); ``contiguous``: ``ids`` are
        consecutive ids, so their row groups are a range."""
        if not len(ids):
            return ()
        if contiguous:
            first, last = np.searchsorted(self._id_starts, (ids[0], ids[-1]), side="right") - 1
            units = range(int(first), int(last) + 1)
        else:
            units = np.unique(np.searchsorted(self._id_starts, ids, side="right") - 1)
        out = []
        for name in self.columns if among is None else among:
            f = self.ds.schema.field(name)
            if locatable(f) and all(
                    self._chunk_offset(files, int(u), name) is not None for u in units):
                out.append(name)
        return tuple(out)

    def shard_path(self, shard: int) -> str:
        """The local path of shard ``shard`` (as :class:`~tensorstore_fs.filemap.FileRows` name it)."""
        return os.path.abspath(self.ds.storage.path(self.ds.shards[shard].path))

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
            flat = self._pool.empty((n * rb,), np.dtype(np.uint8))
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

    def _contiguous(self, files: _Files, first_id: int, sizes: list[int], cols: list[str]
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
        sliced = [c for c in cols if not schema.field(c).is_variable or self.flat_variable or self.pad_variable]
        rest = [c for c in cols if c not in sliced]
        padded = [schema.field(c) for c in sliced if self.pad_variable and schema.field(c).is_variable]
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
            reads = _merge_pieces(pieces, self._read_rows)
            it = read_batches(files.get(shard), rgs, storage_columns(schema, cols),
                              ([skip] if skip else []) + [sum(r) for r in reads], 1)
            try:
                if skip:
                    self._next_read(it, shard)
                for group in reads:
                    rb = self._next_read(it, shard)
                    if rb is None or rb.num_rows != sum(group):
                        raise CorruptDatasetError(f"{self._shard_url(shard)}: holds fewer rows than its manifest says")
                    decoded = _decode_writable(rb, [schema.field(c) for c in sliced],
                                               self.flat_variable or self.pad_variable)
                    offset = 0
                    for want in group:  # zero-copy slices of one decoded read
                        pending.append((rb.slice(offset, want) if rest else None,
                                        {k: v[offset:offset + want] for k, v in decoded.items()}))
                        offset += want
                        have += want
                        if have == sizes[cur]:
                            batch = pending[0] if len(pending) == 1 else _join_pieces(pending)
                            for f in padded:
                                batch[1].update(pad_rows(batch[1].pop(f.name), f))
                            yield batch
                            cur, have, pending = cur + 1, 0, []
            finally:
                it.close()

    def _shard_url(self, shard: int) -> str:
        return f"{self.ds.url}/{self.ds.shards[shard].path}"

    def _next_read(self, it: Iterator[pa.RecordBatch], shard: int) -> pa.RecordBatch | None:
        """The next batch ``read_batches`` decodes from shard file ``shard`` (None at its end); a
        file pyarrow cannot decode is a :class:`CorruptDatasetError` naming it."""
        try:
            return next(it, None)
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptDatasetError(f"{self._shard_url(shard)}: unreadable: {e}") from None

    def _read_unit(self, files: _Files, cache: dict[Any, "_Unit"], u: int, cols: list[str]) -> "_Unit":
        key = (u, tuple(cols))
        if key not in cache:
            if len(cache) >= UNIT_CACHE:
                cache.pop(next(iter(cache)))
            shard, rg = int(self._unit_shard[u]), int(self._unit_rg[u])
            pf = files.get(shard)
            direct = self._direct_views(pf, files.source(shard), rg, cols)
            rest = [c for c in storage_columns(self.ds.schema, cols) if c not in direct]
            try:
                table = pf.read_row_group(rg, columns=rest, use_threads=use_threads(pf, rg, rest)) if rest else pa.table({})
            except (pa.ArrowInvalid, OSError) as e:
                raise CorruptDatasetError(f"{self._shard_url(shard)}: row group {rg} unreadable: {e}") from None
            cache[key] = _Unit(table, direct)
        return cache[key]

    def _direct_views(self, pf: pq.ParquetFile, source: Any, rg: int, cols: list[str]) -> dict[str, np.ndarray]:
        """Zero-copy views of the memory-mapped values of this row group's fixed-shape tensor
        columns, where the file holds them as one plain page (see :mod:`tensorstore_fs.pages`)."""
        if not isinstance(source, pa.MemoryMappedFile):
            return {}
        meta = pf.metadata.row_group(rg)
        rows = meta.num_rows
        index = {name: i for i, name in enumerate(pf.schema_arrow.names)}  # schema_arrow is rebuilt per access
        out: dict[str, np.ndarray] = {}
        for name in cols:
            f = self.ds.schema.field(name)
            if not f.is_fixed_tensor or f.nullable or name not in index:
                continue
            offset = plain_values_offset(source.read_at, meta.column(index[name]), rows, f.row_nbytes)
            if offset is None:
                continue
            source.seek(offset)  # read_buffer on a memory map is a zero-copy slice (read_at would copy)
            buf = source.read_buffer(rows * f.row_nbytes)
            out[name] = np.frombuffer(buf, dtype=f.numpy_dtype.newbyteorder("<")).reshape((rows, *f.shape))
        return out

    def _gathered(self, files: _Files, cache: dict[Any, "_Unit"], ids: np.ndarray,
                  sizes: list[int], cols: list[str]) -> Iterator[dict[str, Any]]:
        """Rows by id in any order, decoded: read the row groups they live in, then gather.

        Dense fields (scalars without nulls, fixed-shape tensors without nulls) are gathered with
        numpy straight from each row group's zero-copy view into the batch array (one copy);
        other fields go through Arrow ``take``."""
        units, local = self._locate(ids)
        needed = np.unique(units)
        loaded = {int(u): self._read_unit(files, cache, int(u), cols) for u in needed}
        pos = 0
        for n in sizes:
            yield self._gather_batch(loaded, units[pos:pos + n], local[pos:pos + n], cols)
            pos += n

    def _gather_batch(self, loaded: dict[int, "_Unit"], units: np.ndarray, local: np.ndarray,
                      cols: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        n = len(units)
        # runs of consecutive rows from one row group (the plan keeps a batch's rows grouped)
        cuts = np.flatnonzero(units[1:] != units[:-1]) + 1 if n > 1 else np.zeros(0, np.int64)
        starts = [0, *cuts.tolist()]
        runs = [(int(units[a]), local[a:b], slice(a, b)) for a, b in zip(starts, [*starts[1:], n])] if n else []
        arrow_fields, dense = [], []
        for name, f in zip(cols, self._fields_of(cols)):
            views = [loaded[u].dense(name, f) for u, _, _ in runs]  # one per run
            if any(v is None for v in views):
                arrow_fields.append(name)
            else:
                dense.append((name, f, views))
        for (name, f, views), values in zip(dense, self._batch_arrays(n, [f for _, f, _ in dense])):
            # one copy, straight into the batch. mode="clip": with the default mode="raise" numpy
            # buffers ``out`` (a second copy, 3-10x slower); the plan's indices are always in range
            if len(runs) == 1:
                views[0].take(runs[0][1], axis=0, out=values, mode="clip")
            else:
                for view, (_, idx, where) in zip(views, runs):
                    view.take(idx, axis=0, out=values[where], mode="clip")
            out[name] = values
        if arrow_fields:
            order = np.argsort(units, kind="stable")
            bounds = np.flatnonzero(np.diff(units[order])) + 1
            slots = {int(units[g[0]]): g for g in np.split(order, bounds)} if n else {}
            cols = storage_columns(self.ds.schema, arrow_fields)
            pieces = []
            position = np.empty(n, dtype=np.int64)
            start = 0
            for u, where in slots.items():
                pieces.append(loaded[u].table.select(cols).take(pa.array(local[where])))
                position[where] = np.arange(start, start + len(where))
                start += len(where)
            table = pa.concat_tables(pieces).take(pa.array(position))
            for name in arrow_fields:
                out.update(decode_column(table, self.ds.schema.field(name), pad=self.pad_variable, flat=self.flat_variable))
        return {name: out[name] for name in self._output_order(out)}

    def _fields_of(self, cols: list[str]) -> list[Field]:
        key = tuple(cols)
        fields = self._field_cache.get(key)
        if fields is None:
            fields = self._field_cache[key] = [self.ds.schema.field(c) for c in cols]
        return fields

    def _batch_arrays(self, n: int, fields: list[Field]) -> list[np.ndarray]:
        """Uninitialised ``(n, *shape)`` arrays for ``fields``: large ones recycled from the pool,
        the small ones carved from one fresh block (one allocation a batch, each 64-byte aligned)."""
        key = (n, tuple(f.name for f in fields))
        layout = self._layout_cache.get(key)
        if layout is None:
            shapes = [(n, *f.shape) for f in fields]
            sizes = [math.prod(shape) * f.numpy_dtype.itemsize for shape, f in zip(shapes, fields)]
            small = [i for i, size in enumerate(sizes) if size < SMALL_BYTES]
            if len(small) < 2:
                small = []
            starts, total = [], 0
            for i in small:
                starts.append(total)
                total += -(-sizes[i] // ALIGN) * ALIGN
            carved = [(i, at, at + sizes[i], fields[i].numpy_dtype, shapes[i]) for i, at in zip(small, starts)]
            pooled = [(i, shapes[i], fields[i].numpy_dtype) for i in range(len(fields)) if i not in set(small)]
            if len(self._layout_cache) > 64:  # batch sizes vary only at epoch ends: stays tiny
                self._layout_cache.clear()
            layout = self._layout_cache[key] = (total, carved, pooled)
        total, carved, pooled = layout
        arrays: list[Any] = [None] * len(fields)
        if carved:
            _, block = aligned_empty((total,), np.dtype(np.uint8))
            for i, a, b, dtype, shape in carved:
                arrays[i] = block[a:b].view(dtype).reshape(shape)
        for i, shape, dtype in pooled:
            arrays[i] = self._pool.empty(shape, dtype)
        return arrays

    def _output_order(self, out: dict[str, Any]) -> list[str]:
        key = tuple(out)
        order = self._order_cache.get(key)
        if order is None:
            order = []
            for name in self.columns:
                order += [k for k in (name, name + "__shape") if k in out]
            if len(self._order_cache) < 64:
                self._order_cache[key] = order
        return order

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
                    out.update(decode_column(table, self.ds.schema.field(name), pad=self.pad_variable, flat=self.flat_variable))
            if len(out) > 1:
                out = {k: out[k] for k in self._output_order(out)}
        if self.spec.remainder == "pad":
            out[PAD_COLUMN] = pad
        if self.with_row_ids:
            out[ROW_ID_COLUMN] = self.row_ids(ids)
        return out


def _decode_writable(rb: pa.RecordBatch, fields: Sequence[Field], flat: bool = False) -> dict[str, Any]:
    """Fields of one value per row decoded from a whole read, as writable arrays (read-only
    decodes, such as Arrow's zero-copy scalar columns, are copied once here rather than once per
    batch by the framework adapters); ``flat``: variable-shape fields as :class:`RaggedRows`."""
    out: dict[str, Any] = {}
    for f in fields:
        for k, v in decode_column(rb, f, flat=flat).items():
            if isinstance(v, np.ma.MaskedArray):
                if not v.data.flags.writeable:
                    v = np.ma.MaskedArray(v.data.copy(), mask=np.ma.getmaskarray(v))
            elif isinstance(v, np.ndarray) and v.dtype != object and not v.flags.writeable:
                v = v.copy()
            out[k] = v
    return out


def _join_pieces(pieces: list[tuple[pa.RecordBatch | None, dict[str, Any]]]) -> tuple[pa.Table | None, dict[str, Any]]:
    """One batch from the pieces of it that came from successive reads."""
    batches = [rb for rb, _ in pieces]
    table = None if batches[0] is None else pa.Table.from_batches(batches)
    decoded: dict[str, Any] = {}
    for k, first in pieces[0][1].items():
        parts = [d[k] for _, d in pieces]
        if isinstance(first, RaggedRows):
            decoded[k] = RaggedRows.concat(parts)
        elif isinstance(first, np.ma.MaskedArray):
            decoded[k] = np.ma.concatenate(parts)
        elif first.dtype == object:
            decoded[k] = np.concatenate(parts)
        else:  # 64-byte aligned, as decoded Arrow buffers are (tf.data takes such memory as it is)
            _, decoded[k] = aligned_empty((sum(len(p) for p in parts), *first.shape[1:]), first.dtype)
            np.concatenate(parts, out=decoded[k])
    return table, decoded


def window_rows(ds: Dataset, eligible_rows: int, batch_size: int, window_bytes: int) -> int:
    """Rows of a worker window: ``window_bytes`` worth of rows, but at most 1/8 of the eligible
    rows so that small datasets still spread over workers; a multiple of the batch size. Depends
    only on the dataset, the filter and the arguments (never on the world), so resumed runs agree."""
    if not isinstance(window_bytes, int) or window_bytes < 1:
        raise InvalidArgumentError(f"window_bytes must be a positive int, got {window_bytes!r}")
    row_bytes = max(1, ds.nbytes // max(1, len(ds)))
    by_bytes = max(1, window_bytes // max(1, row_bytes * batch_size))
    by_share = max(1, eligible_rows // (8 * batch_size))
    return int(min(by_bytes, by_share) * batch_size)


def check_num_epochs(num_epochs: Any) -> None:
    if num_epochs is not None and (not isinstance(num_epochs, int) or isinstance(num_epochs, bool) or num_epochs < 1):
        raise InvalidArgumentError(f"num_epochs must be a positive int or None, got {num_epochs!r}")


def open_stream(ds_or_url: Dataset | str, columns: Sequence[str] | None, filter: Any, predicate: Predicate | None,
                batch_size: int, *, shuffle: bool, seed: int, remainder: str, drop_last: bool,
                rank: int | None, world_size: int | None, window_bytes: int, pad_variable: bool,
                with_row_ids: bool, version: int | None, storage_options: Any,
                flat_variable: bool = False) -> tuple["PlannedStream", World]:
    """The stream and world every framework adapter starts from (same arguments, same plan)."""
    ds = ds_or_url if isinstance(ds_or_url, Dataset) else open_dataset(ds_or_url, version, storage_options)
    world = World.detect(rank, world_size)
    selection = Selection.compute(ds, filter, predicate)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    spec = PlanSpec(batch_size, shuffle=shuffle, seed=seed, remainder=remainder, drop_last=drop_last,
                    window_rows=window_rows(ds, int(selection.counts.sum()), int(batch_size), window_bytes))
    stream = PlannedStream(ds, spec, columns, selection, pad_variable=pad_variable, with_row_ids=with_row_ids,
                           flat_variable=flat_variable)
    return stream, world
