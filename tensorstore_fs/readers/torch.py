"""PyTorch adapter: an ``IterableDataset`` of ready-made batches, planned exactly-once per epoch.

>>> from torch.utils.data import DataLoader
>>> from tensorstore_fs.readers.torch import TorchDataset
>>> ds = TorchDataset("/data/train", columns=["image", "label"], batch_size=256, shuffle=True)
>>> loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
>>> for epoch in range(10):
...     for batch in loader: ...     # dict of torch tensors; each pass reads the next epoch

Each rank reads its share of the epoch (equal counts under ``remainder="drop"`` or ``"pad"``),
each DataLoader worker reads whole windows of that share, and the DataLoader's round-robin
interleaving of worker batches is part of the plan, so the order a training loop sees is
deterministic and a resume continues exactly where it stopped.
"""

from __future__ import annotations

import os

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from .._checks import check_int
from ..errors import InvalidArgumentError
from ..plan import EpochPlan, PlanSpec, Segment
from ..predicates import Predicate
from ..ragged import RaggedRows
from ..read import DEFAULT_WINDOW_BYTES, Dataset, FileRows, ReadOptions, StreamState, open_stream
from . import _ring
from ._passes import IN_PROCESS, MAX_WORKERS, PassBoard, View
from ._torch_handoff import FileTensor, file_tensor, gather_in_worker, share_batch

__all__ = ["TorchBatch", "TorchDataset", "to_torch"]

logger = logging.getLogger(__name__)

# the adapter's variable= choices, and how the stream decodes each
VARIABLE_MODES = {"pad": "pad", "list": "list", "nested": "flat", "flat": "flat"}


def _tensor(a: np.ndarray) -> torch.Tensor:
    if not a.flags.writeable:  # memory-mapped, read-only data: torch wants writable memory
        a = a.copy()
    return torch.from_numpy(np.ascontiguousarray(a))


def _batch_values(rows: RaggedRows) -> tuple[np.ndarray, np.ndarray]:
    """The batch's own values (one copy: the decoded ones are read-only views of a whole read)
    and its value offsets counted from 0."""
    start, stop = int(rows.offsets[0]), int(rows.offsets[-1])
    return np.array(rows.values[start:stop]), rows.offsets - start


def _jagged_tensor(rows: RaggedRows) -> torch.Tensor | None:
    """A ``torch.jagged`` nested tensor of rows whose only variable dimension is the first, built
    from the batch's flat values and offsets (no tensor per row). None for rows of empty inner
    shape (their offsets cannot count rows)."""
    inner = tuple(int(d) for d in rows.shapes[0, 1:])
    per_row = math.prod(inner)
    if per_row == 0:
        return None
    values, offsets = _batch_values(rows)
    return torch.nested.nested_tensor_from_jagged(torch.from_numpy(values.reshape(-1, *inner)),
                                                  torch.from_numpy(offsets // per_row))


def _flat_tensors(name: str, rows: RaggedRows) -> dict[str, torch.Tensor]:
    """``variable="flat"``: the batch's values back to back (1-D, row-major within each row),
    ``<name>__offsets`` (n + 1 int64 value offsets from 0: FlashAttention's ``cu_seqlens`` once
    cast to int32), ``<name>__shape`` (n, ndim) and, for a nullable field, ``<name>__valid``."""
    values, offsets = _batch_values(rows)
    out = {name: torch.from_numpy(values),
           name + "__offsets": torch.from_numpy(offsets),
           name + "__shape": torch.from_numpy(np.ascontiguousarray(rows.shapes, dtype=np.int64))}
    if rows.valid is not None:
        out[name + "__valid"] = torch.from_numpy(rows.valid.copy())
    return out


def to_torch(batch: Mapping[str, Any], variable: str = "pad", jagged: Collection[str] = (),
             defer_files: bool = False) -> dict[str, Any]:
    """Convert a decoded numpy batch to torch: arrays -> tensors (zero-copy where writable),
    masked arrays -> values plus ``<name>__valid``, strings/bytes -> lists, variable-shape lists
    -> lists of tensors or a nested tensor (``torch.jagged`` layout for the fields named in
    ``jagged``, whose only variable dimension is the first; the strided prototype layout otherwise)
    or, for ``variable="flat"``, values plus ``__offsets`` and ``__shape`` tensors,
    file-located rows -> tensors mapped from the file (``defer_files``: stand-ins that become those
    tensors when unpickled in the process receiving the batch)."""
    out: dict[str, Any] = {}
    for name, v in batch.items():
        if isinstance(v, RaggedRows) and variable == "flat":
            out.update(_flat_tensors(name, v))
            continue
        if isinstance(v, RaggedRows):
            nested = _jagged_tensor(v) if variable == "nested" and name in jagged and v.valid is None and len(v) else None
            if nested is not None:
                out[name] = nested
                continue
            v = v.to_list()
        if type(v) is np.ndarray and v.dtype != object and v.flags.writeable and v.flags.c_contiguous:
            out[name] = torch.from_numpy(v)  # the usual column: nothing to check further
        elif isinstance(v, FileRows):
            out[name] = FileTensor(v) if defer_files else file_tensor(v)
        elif isinstance(v, np.ma.MaskedArray):
            mask = np.ma.getmaskarray(v)
            out[name] = _tensor(np.asarray(v.filled(0)))
            out[name + "__valid"] = torch.from_numpy(~mask.reshape(mask.shape[0], -1).any(axis=1))
        elif isinstance(v, np.ndarray) and v.dtype == object:
            out[name] = v.tolist()
        elif isinstance(v, np.ndarray):
            out[name] = _tensor(v)
        elif isinstance(v, list):  # variable-shape rows
            rows = [None if r is None else _tensor(r) for r in v]
            if variable == "nested" and all(r is not None for r in rows) and rows and name in jagged:
                out[name] = torch.nested.nested_tensor(rows, layout=torch.jagged)
            elif variable == "nested" and all(r is not None for r in rows) and rows:
                with warnings.catch_warnings():  # torch warns that strided nested tensors are a prototype
                    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors", category=UserWarning)
                    out[name] = torch.nested.nested_tensor(rows)
            else:
                out[name] = rows
        else:
            out[name] = v
    return out


class TorchBatch(dict):
    """What :class:`TorchDataset` yields: a dict of tensors (and lists), already a whole batch.

    Its own type tells the DataLoader's default collation that it must not be batched again:
    ``DataLoader(TorchDataset(...))`` without ``batch_size=None`` would otherwise stack batches
    into an extra leading dimension (``(1, 256, ...)`` with the DataLoader's default
    ``batch_size=1``) and a model would fail far from the cause, or not fail at all.
    """

    __slots__ = ()


def _refuse_collation(batch: Sequence[TorchBatch], *, collate_fn_map: Any = None) -> Any:
    raise InvalidArgumentError(
        f"the DataLoader was about to stack {len(batch)} TorchDataset batches into one: TorchDataset yields whole "
        "batches (its own batch_size=...), so create the DataLoader with batch_size=None")


# torch's documented extension point: default_collate looks a batch element's exact type up here
default_collate_fn_map[TorchBatch] = _refuse_collation


class TorchDataset(IterableDataset):
    """Batches of a tensorstore_fs dataset for ``DataLoader(ds, batch_size=None, ...)``.

    Parameters
    ----------
    ds_or_url : Dataset or str
        An opened dataset or a URL (opened at ``version``, newest by default).
    columns, filter, predicate
        As in :meth:`tensorstore_fs.Dataset.to_batches`. The filter/predicate is applied before
        the rows are balanced across ranks.
    batch_size : int
        Rows per batch.
    shuffle : bool
        Permute row groups per epoch and rows within each worker's window (the shuffle buffer).
    seed : int
        Same seed, epoch and world give the same order on every run.
    num_epochs : int or None
        Epochs one iteration covers (``None``: forever).
    remainder : {"drop", "pad", "uneven"}
        What to do when rows do not divide evenly across ranks: drop the last few (equal counts),
        pad by repeating rows and mark them in the boolean ``__pad__`` column, or give some ranks
        one row more (every row exactly once).
    drop_last : bool
        Drop a rank's final short batch.
    rank, world_size : int, optional
        Override detection (``RANK``/``WORLD_SIZE``, then ``torch.distributed``).
    variable : {"pad", "list", "nested", "flat"}
        Variable-shape fields as a zero-padded tensor plus ``<name>__shape`` (default), a list of
        tensors, a nested tensor (``torch.jagged`` layout, built from the batch's flat values
        and offsets, where only the first dimension varies and no row is null), or ``"flat"``:
        the rows' values back to back in one 1-D tensor plus ``<name>__offsets`` (n + 1, from 0;
        ``cu_seqlens`` for variable-length attention) and ``<name>__shape`` (and
        ``<name>__valid`` for a nullable field): no padding and no tensor per row.
    window_bytes : int
        Bytes of one worker window (its shuffle buffer and its unit of work).
    with_row_ids : bool
        Add ``__row_id__``, each row's index in the dataset version (see
        :func:`tensorstore_fs.audit.audit_epoch`).
    version, storage_options
        As in :func:`tensorstore_fs.open_dataset` (for a URL).
    cache_dir : path, optional
        Keep the shards of a remote dataset given by URL in this node-local cache, shared by all
        workers and ranks of the machine (:mod:`tensorstore_fs.cache`; default
        ``$TSFS_CACHE_DIR/shards`` when set). For an opened Dataset pass it to ``open_dataset``.
    readahead_bytes : int, optional
        Bytes each worker reads ahead of its consumer along its epoch plan (fetched from an object
        store, asked of the page cache on a local disk); 0 turns it off. Default
        ``$TSFS_READAHEAD_BYTES``, else 256 MiB (:mod:`tensorstore_fs.read.readahead`).
    file_backed : bool
        For local datasets, DataLoader workers send the location of fixed-shape tensor rows in
        the shard files instead of the bytes, and the main process maps them itself: consecutive
        rows become copy-on-write memory maps (no copy; writes stay private to the batch), other
        rows are gathered there. ``False`` sends every batch through shared memory.
    max_padded_bytes : int, optional
        ``variable="pad"``: the most bytes one batch's padded field may take (each batch is
        padded to its own widest extents; past it, :class:`~tensorstore_fs.InvalidArgumentError`
        naming the field, the batch's rows and the shape). Default: the larger of 1 GiB and 16
        times the bytes of the batch's rows themselves.
    """

    def __init__(
        self,
        ds_or_url: Dataset | str,
        columns: Sequence[str] | None = None,
        filter: Any = None,
        predicate: Predicate | None = None,
        batch_size: int = 256,
        shuffle: bool = False,
        seed: int = 0,
        num_epochs: int | None = 1,
        remainder: str = "drop",
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        variable: str = "pad",
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        with_row_ids: bool = False,
        version: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        readahead_bytes: int | None = None,
        file_backed: bool = True,
        max_padded_bytes: int | None = None,
    ) -> None:
        super().__init__()
        if variable not in VARIABLE_MODES:
            raise InvalidArgumentError(f"variable must be one of {tuple(VARIABLE_MODES)}, got {variable!r}")
        options = ReadOptions(columns, filter, predicate, batch_size, shuffle, seed, remainder, drop_last,
                              window_bytes, VARIABLE_MODES[variable], with_row_ids, num_epochs,
                              readahead_bytes, max_padded_bytes)
        self.stream, world = open_stream(ds_or_url, options, rank=rank, world_size=world_size, version=version,
                                         storage_options=storage_options, cache_dir=cache_dir)
        self.rank, self.world_size = world.rank, world.world_size
        ds = self.stream.ds
        # DataLoader workers send fixed-shape tensors of local shards, and of shards in the
        # node-local cache (which never evicts a file used in the last EVICT_GRACE_S seconds), as
        # file locations (see tensorstore_fs.parquet.filemap); in-process reads map them privately
        self._file_backed = self._mapped = file_backed and (ds.storage.is_local or ds.storage.cache is not None)
        self.variable = variable
        # Nested tensors use the jagged layout where the schema allows it (only the first dimension
        # varies): the strided layout makes torch warn, also in the main process that unpickles
        # batches from DataLoader workers.
        self._jagged = frozenset(
            f.name for f in ds.schema.fields if f.name in self.stream.columns and f.is_variable
            and f.shape[0] is None and all(d is not None for d in f.shape[1:]))
        self.num_epochs = num_epochs
        # where each pass starts, shared with every copy of this object (see _passes)
        self._board = PassBoard()
        self._local: _LocalPin | None = None  # a state restored in this process only (a worker's own)
        # the pass this process reads itself (in-process, or as a DataLoader worker)
        self._slot = IN_PROCESS
        self._pass_seq = 0
        self._epoch = 0  # the epoch it reads now
        self._history: tuple[Segment, ...] = ()  # that epoch's plan was made after these segments
        self._yielded = 0  # batches of that plan handed out (with the ones skipped on a restore)
        self._done = False  # the epoch was read to its end
        self._source: int | None = None  # the plan worker whose stream this process reads

    @property
    def dataset(self) -> Dataset:
        return self.stream.ds

    @property
    def spec(self) -> PlanSpec:
        return self.stream.spec

    @property
    def _per_pass(self) -> int:
        return self.num_epochs if self.num_epochs is not None else 1

    def _view(self) -> View:
        return self._board.view(self._per_pass, self.num_epochs is None)

    @property
    def epoch(self) -> int:
        """The epoch the next pass (the next ``iter()`` of the DataLoader) starts with."""
        return self._local.epoch if self._local is not None else self._view().next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Pin the next pass to start ``epoch`` from its beginning.

        Without it each pass reads the epoch after the previous pass, however that pass ended, so
        it is only needed to choose an epoch (``DistributedSampler.set_epoch`` style). Call it on
        the object handed to the DataLoader: its workers, persistent or not, see it at their
        next pass.
        """
        check_int("epoch", epoch, 0)
        if get_worker_info() is None:
            self._board.publish(epoch, (), unfolded=False)
            self._local = None
        else:  # inside a worker: that worker's own next pass
            self._local = _LocalPin(epoch, (), 0, None)

    def __len__(self) -> int:
        """Batches this rank yields in the next pass (per epoch times ``num_epochs``)."""
        if self.num_epochs is None:
            raise TypeError("a TorchDataset with num_epochs=None has no length")
        if self._local is not None:
            epoch, history = self._local.epoch, self._local.history
        else:
            view = self._view()
            epoch, history = view.next_epoch, view.next_pin.history if view.next_pin is not None else ()
        n = self.stream.batches_left(epoch, self.world_size, history, self.rank)
        full = self.stream.plan(epoch + 1, self.world_size).num_batches(self.rank)
        return n + full * (self.num_epochs - 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """A new pass: the epoch after the previous pass (however that one ended), or where
        ``set_epoch`` / ``load_state_dict`` pinned it. Decided here, not at the first batch, so
        that every DataLoader worker registers its pass when the DataLoader creates its iterator."""
        info = get_worker_info()
        if info is None:
            slot, seed = IN_PROCESS, -1
        elif info.id >= MAX_WORKERS:
            raise InvalidArgumentError(f"TorchDataset serves at most {MAX_WORKERS} DataLoader workers, "
                                       f"got worker {info.id} of {info.num_workers}")
        else:
            slot, seed = info.id, info.seed - info.id  # the DataLoader iterator's base seed
        local, self._local = self._local, None
        started = self._board.begin(slot, seed, self._per_pass, self.num_epochs is None,
                                    None if local is None else local.epoch)
        if local is not None:
            history, skip, source = local.history, local.skip, local.source
        else:
            history, skip, source = started.pin.history if started.pin is not None else (), 0, None
        self._slot, self._pass_seq = slot, started.seq
        plan = self._start_epoch(started.epoch, history, skip, source, info)
        return self._read(plan, info)

    def _start_epoch(self, epoch: int, history: tuple[Segment, ...], skip: int, source: int | None,
                     info: Any) -> EpochPlan:
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan, planned_source, planned_skip, self._history = self.stream.resume_plan(
            epoch, self.world_size, history, self.rank, worker, num_workers)
        if source is not None:  # worker-level restore: continue the stream this worker had
            planned_source, planned_skip = source, 0
        self._epoch, self._source, self._yielded, self._done = epoch, planned_source, planned_skip + skip, False
        self._board.reach(self._slot, epoch)
        return plan

    def _read(self, plan: EpochPlan, info: Any) -> Iterator[dict[str, Any]]:
        num_workers = info.num_workers if info is not None else 1
        in_worker = info is not None
        # in workers, located tensor rows travel as file locations; in-process, consecutive
        # rows are views of a private map of the file (no copy), but not under
        # remainder="pad", whose padding repeats rows that a caller may have modified
        located = ("rows" if self._file_backed else None) if in_worker else (
            "private" if self._mapped and self.spec.remainder != "pad" else None)
        epochs_read = 0
        while True:
            for batch in self.stream.iter_worker(plan, self.rank, self._source, num_workers, self._yielded,
                                                 keep_open=not in_worker, located=located):
                self._yielded += 1
                converted = to_torch(batch, self.variable, self._jagged, defer_files=in_worker)
                if in_worker and self._file_backed and _ring.available():
                    converted = gather_in_worker(converted)
                yield TorchBatch(share_batch(converted) if in_worker else converted)
            # A worker that finished its share while other workers still read this epoch saves
            # "epoch e, all my batches" (not "epoch e + 1, nothing"), or a StatefulDataLoader
            # restore would make it read the whole next epoch into this one.
            self._done = True
            epochs_read += 1
            if self.num_epochs is not None and epochs_read >= self.num_epochs:
                return
            plan = self._start_epoch(self._epoch + 1, (), 0, None, info)

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self, consumed_batches: int | None = None, num_workers: int | None = None) -> dict[str, Any]:
        """A small, JSON-ready resume state.

        Inside a DataLoader worker (torchdata's ``StatefulDataLoader`` calls it there) it records
        that worker's progress. Elsewhere it records the rank's progress in the current pass (the
        one last started; the pinned start when none started since ``set_epoch`` /
        ``load_state_dict``): the batches this process yielded (``num_workers=0``), or pass
        ``consumed_batches`` — the batches the training loop took from the DataLoader this pass —
        and the DataLoader's ``num_workers``.
        """
        info = get_worker_info()
        if info is not None:
            if self._local is not None:  # restored, not started yet
                epoch, history, yielded, plan_worker = (self._local.epoch, self._local.history, self._local.skip,
                                                        info.id if self._local.source is None else self._local.source)
            else:
                epoch, history, yielded = self._epoch, self._history, self._yielded
                plan_worker = info.id if self._source is None or self._done else self._source
            state = StreamState.rank_dict(self.dataset.version, self.spec, epoch, history, self.world_size,
                                          info.num_workers, 0)
            del state["consumed_batches"]
            state.update(worker=info.id, worker_batches=yielded, plan_worker=plan_worker)
            return state
        if consumed_batches is None and self._local is None and self._pass_seq and \
                self._pass_seq == self._board.newest():
            # this process reads the current pass itself: count what it handed out
            epoch, history, consumed = self._epoch, self._history, self._yielded
            if self._done:  # the epoch was read to its end: the next one starts fresh
                epoch, history, consumed = epoch + 1, (), 0
            return StreamState.rank_dict(self.dataset.version, self.spec, epoch, history, self.world_size,
                                         max(1, num_workers or 1), consumed)
        consumed = 0 if consumed_batches is None else check_int("consumed_batches", consumed_batches, 0)
        workers = max(1, num_workers or 1)
        if self._local is not None:
            epoch, history, unfolded = self._local.epoch, self._local.history, False
        else:
            view = self._view()
            pin = view.current_pin
            epoch, history, unfolded = view.current_epoch, pin.history if pin else (), bool(pin and pin.unfolded)
        if self.num_epochs != 1:  # the epochs of this pass it completed are behind it
            epoch, history, consumed = self.stream.roll_over(epoch, self.world_size, history, self.rank, consumed)
        if unfolded:  # resumed from a rank-level state: count on from the resume point
            history, consumed = StreamState.fold(history, self.world_size, workers, consumed)
        return StreamState.rank_dict(self.dataset.version, self.spec, epoch, history, self.world_size,
                                     workers, consumed)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s state at the next pass.

        A rank-level state may come from a different world size or worker count: the rest of the
        epoch is re-planned over exactly the rows not consumed yet. A worker-level state (from
        ``StatefulDataLoader``) continues that worker exactly; it needs the same world.
        """
        # parsed in full before anything changes: a malformed state leaves the reader as it was
        parsed = StreamState.parse(dict(state) if isinstance(state, Mapping) else state, self.dataset.version, self.spec)
        info = get_worker_info()
        if parsed.worker is not None:
            here = (info.id, info.num_workers) if info is not None else (0, 1)
            if (parsed.worker, parsed.num_workers) != here or parsed.world_size != self.world_size:
                raise InvalidArgumentError(
                    f"worker state of worker {parsed.worker}/{parsed.num_workers} (world {parsed.world_size}) "
                    f"cannot restore worker {here[0]}/{here[1]} (world {self.world_size}); use a rank-level state"
                )
            self._local = _LocalPin(parsed.epoch, parsed.history, parsed.worker_batches, parsed.plan_worker)
        elif info is not None:  # a rank-level state inside a worker: that worker's own next pass
            self._local = _LocalPin(parsed.epoch, parsed.history, 0, None)
        else:
            self._board.publish(parsed.epoch, parsed.history, unfolded=True)
            self._local = None


@dataclass(frozen=True)
class _LocalPin:
    """A start for this process's next pass only: a worker's restored state (its plan worker
    and the batches of it already delivered)."""

    epoch: int
    history: tuple[Segment, ...]
    skip: int
    source: int | None
