"""PyTorch adapter: an ``IterableDataset`` of ready-made batches, planned exactly-once per epoch.

>>> from torch.utils.data import DataLoader
>>> from tensorstore_fs.readers.torch import TorchDataset
>>> ds = TorchDataset("/data/train", columns=["image", "label"], batch_size=256, shuffle=True)
>>> loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
>>> for epoch in range(10):
...     ds.set_epoch(epoch)          # needed only without persistent workers
...     for batch in loader: ...     # dict of torch tensors

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
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from .._checks import check_int
from ..errors import InvalidArgumentError
from ..plan import PlanSpec, Segment
from ..predicates import Predicate
from ..ragged import RaggedRows
from ..read import DEFAULT_WINDOW_BYTES, Dataset, FileRows, ReadOptions, StreamState, open_stream
from . import _ring
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
    ) -> None:
        super().__init__()
        if variable not in VARIABLE_MODES:
            raise InvalidArgumentError(f"variable must be one of {tuple(VARIABLE_MODES)}, got {variable!r}")
        options = ReadOptions(columns, filter, predicate, batch_size, shuffle, seed, remainder, drop_last,
                              window_bytes, VARIABLE_MODES[variable], with_row_ids, num_epochs,
                              readahead_bytes)
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
        self._epoch = 0
        self._history: tuple[Segment, ...] = ()
        self._skip = 0  # worker-level restore (StatefulDataLoader)
        self._yielded = 0
        self._done = False  # the epoch was read to its end; the next iteration starts the next one
        self._source: int | None = None  # the plan worker whose stream this DataLoader worker reads
        self._unfolded = False  # _history still ends with the segment a rank-level state resumed from

    @property
    def dataset(self) -> Dataset:
        return self.stream.ds

    @property
    def spec(self) -> PlanSpec:
        return self.stream.spec

    @property
    def epoch(self) -> int:
        return self._epoch + 1 if self._done else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration (call it on the object handed to
        the DataLoader, before iterating, when workers are not persistent; persistent workers and
        ``num_workers=0`` advance by themselves)."""
        check_int("epoch", epoch, 0)
        self._epoch, self._history, self._skip, self._yielded, self._done = epoch, (), 0, 0, False
        self._source, self._unfolded = None, False

    def __len__(self) -> int:
        """Batches this rank yields per iteration (per epoch times ``num_epochs``)."""
        if self.num_epochs is None:
            raise TypeError("a TorchDataset with num_epochs=None has no length")
        n = self.stream.batches_left(self.epoch, self.world_size, () if self._done else self._history, self.rank)
        full = self.stream.plan(self.epoch + 1, self.world_size).num_batches(self.rank)
        return n + full * (self.num_epochs - 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epochs = range(self.num_epochs) if self.num_epochs is not None else iter(int, 1)
        for _ in epochs:
            if self._done:
                self._epoch, self._history, self._yielded, self._done = self._epoch + 1, (), 0, False
                self._source = None
            plan, source, skip, self._history = self.stream.resume_plan(
                self._epoch, self.world_size, self._history, self.rank, worker, num_workers)
            self._unfolded = False  # _history is now the plan's base and _yielded counts from it
            if self._source is not None:  # worker-level restore: continue the stream this worker had
                source, skip = self._source, 0
            skip, self._skip, self._source = skip + self._skip, 0, source
            self._yielded = skip
            in_worker = info is not None
            # in workers, located tensor rows travel as file locations; in-process, consecutive
            # rows are views of a private map of the file (no copy), but not under
            # remainder="pad", whose padding repeats rows that a caller may have modified
            located = ("rows" if self._file_backed else None) if in_worker else (
                "private" if self._mapped and self.spec.remainder != "pad" else None)
            for batch in self.stream.iter_worker(plan, self.rank, source, num_workers, skip, keep_open=not in_worker,
                                                 located=located):
                self._yielded += 1
                converted = to_torch(batch, self.variable, self._jagged, defer_files=in_worker)
                if in_worker and self._file_backed and _ring.available():
                    converted = gather_in_worker(converted)
                yield TorchBatch(share_batch(converted) if in_worker else converted)
            # Advance lazily: a worker that finished its share while other workers still read this
            # epoch must save "epoch e, all my batches" (not "epoch e + 1, nothing"), or a
            # StatefulDataLoader restore would make it read the whole next epoch into this one.
            self._done = True

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self, consumed_batches: int | None = None, num_workers: int | None = None) -> dict[str, Any]:
        """A small, JSON-ready resume state.

        Inside a DataLoader worker (torchdata's ``StatefulDataLoader`` calls it there) it records
        that worker's progress. Elsewhere it records the rank's progress: the batches this process
        yielded (``num_workers=0``), or pass ``consumed_batches`` — the batches the training loop
        took from the DataLoader this epoch — and the DataLoader's ``num_workers``.
        """
        info = get_worker_info()
        epoch, history, yielded = self._epoch, self._history, self._yielded
        if self._done and info is None:  # this process finished the epoch: the next one starts fresh
            epoch, history, yielded = epoch + 1, (), 0
        if info is None:
            consumed = yielded if consumed_batches is None else int(consumed_batches)
            if self._unfolded:  # resumed, and the iteration ran in workers: count on from the resume point
                history, consumed = StreamState.fold(history, self.world_size, max(1, num_workers or 1), consumed)
            return StreamState.rank_dict(self.dataset.version, self.spec, epoch, history, self.world_size,
                                         num_workers or 1, consumed)
        state = StreamState.rank_dict(self.dataset.version, self.spec, epoch, history, self.world_size,
                                      info.num_workers, 0)
        del state["consumed_batches"]
        state.update(worker=info.id, worker_batches=yielded,
                     plan_worker=info.id if self._source is None or self._done else self._source)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s state.

        A rank-level state may come from a different world size or worker count: the rest of the
        epoch is re-planned over exactly the rows not consumed yet. A worker-level state (from
        ``StatefulDataLoader``) continues that worker exactly; it needs the same world.
        """
        # parsed in full before anything changes: a malformed state leaves the reader as it was
        parsed = StreamState.parse(dict(state) if isinstance(state, Mapping) else state, self.dataset.version, self.spec)
        self._skip, self._yielded, self._done, self._source = 0, 0, False, None
        if parsed.worker is not None:
            info = get_worker_info()
            here = (info.id, info.num_workers) if info is not None else (0, 1)
            if (parsed.worker, parsed.num_workers) != here or parsed.world_size != self.world_size:
                raise InvalidArgumentError(
                    f"worker state of worker {parsed.worker}/{parsed.num_workers} (world {parsed.world_size}) "
                    f"cannot restore worker {here[0]}/{here[1]} (world {self.world_size}); use a rank-level state"
                )
            self._skip, self._source = parsed.worker_batches, parsed.plan_worker
        self._epoch, self._history = parsed.epoch, parsed.history
        self._unfolded = parsed.worker is None
