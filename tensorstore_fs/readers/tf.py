"""tf.data adapter: the same plan, shuffle, filter and resume engine as the PyTorch adapter.

>>> from tensorstore_fs.readers.tf import make_tf_dataset
>>> ds = make_tf_dataset("/data/train", columns=["image", "label"], batch_size=256, shuffle=True)
>>> ds = ds.map(lambda b: (b["image"], b["label"])).prefetch(tf.data.AUTOTUNE)
>>> model.fit(ds, epochs=10)          # every pass over ``ds`` reads the next epoch's order

Sharding is done by the plan — each rank (``rank=``/``world_size=`` or a
``tf.distribute.InputContext``) reads only its own rows — never by ``Dataset.shard``, which reads
everything and keeps a fraction. ``num_workers=k`` reads k plan workers in parallel threads and
interleaves their batches round-robin, exactly as a PyTorch DataLoader with k workers does, so the
two adapters yield the same rows in the same order for the same arguments.
"""

from __future__ import annotations

import os

import logging
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from .._checks import check_int
from ..errors import InvalidArgumentError
from ..plan import PlanSpec
from ..predicates import Predicate
from ..read import (
    DEFAULT_WINDOW_BYTES,
    PAD_COLUMN,
    READ_BYTES,
    ROW_ID_COLUMN,
    Dataset,
    FileRows,
    PlannedStream,
    ReadOptions,
    StreamState,
    open_stream,
)
from ..schema import Field
from . import _tf_native
from ._tf_passes import count_from, per_iterator
from ._tf_transport import EXITING, READERS, Ragged, tf_dtype, to_tensor

__all__ = ["TFReader", "make_tf_dataset"]

logger = logging.getLogger(__name__)

# the adapter's variable= choices, and how the stream decodes each
VARIABLE_MODES = {"ragged": "flat", "pad": "pad"}
VALID_SUFFIX = "__valid"
# Native gathers in flight and batches gathered ahead, fixed: the copies are bound by memory
# bandwidth, which 2 threads fill, and the memory held ahead stays small and known (AUTOTUNE
# measured no faster on the benchmark VM: README, tf.data benchmark).
GATHER_PARALLEL = 2
GATHER_PREFETCH = 2

class TFReader:
    """A planned, resumable source of ``tf.data`` batches (see :func:`make_tf_dataset`).

    Parameters
    ----------
    ds_or_url, columns, filter, predicate, batch_size, shuffle, seed, num_epochs, remainder, drop_last
        As in :class:`tensorstore_fs.readers.torch.TorchDataset`.
    rank, world_size : int, optional
        This reader's share of the world (detected from ``RANK``/``WORLD_SIZE`` when omitted).
    input_context : tf.distribute.InputContext, optional
        From ``strategy.distribute_datasets_from_function``: its input pipeline id and count are
        the rank and world size. Batch sizes stay per replica: pass
        ``input_context.get_per_replica_batch_size(global_batch)`` as ``batch_size``.
    num_workers : int
        Plan workers read in parallel threads and interleaved round-robin (the order of a PyTorch
        DataLoader with that many workers).
    variable : {"ragged", "pad"}
        Variable-shape fields as ``tf.RaggedTensor`` (default) or zero-padded plus ``<name>__shape``.
    window_bytes, with_row_ids, version, storage_options, cache_dir, readahead_bytes, max_padded_bytes
        As in ``TorchDataset`` (a padded field is padded per batch, to that batch's widest rows).
    native : bool, optional
        Fixed-shape tensor columns of local datasets are copied out of the shard files by a
        TensorFlow kernel (``_tf_gather.cc``, compiled on first use; see
        :mod:`tensorstore_fs.readers._tf_native`) while Python only plans and decodes the other
        columns. ``None`` (default): when it is available; ``False``: always through Python;
        ``True``: require it (:class:`~tensorstore_fs.InvalidArgumentError` when it cannot be
        built or the dataset is not local). The batches are the same either way. A batch of rows
        that lie back to back at a 64-byte aligned file offset (a sequential batch of a file this
        library wrote, ``docs/format.md`` section 5) is not copied at all: its tensor is the
        mapped, read-only file bytes, which TensorFlow's ops never write to (the kernel holds a
        reference to it, so TensorFlow never reuses its buffer for an op's output). Ops that
        alias their input by definition (``tf.raw_ops.InplaceUpdate``) and writes through DLPack
        would crash: ``zero_copy=False`` copies such batches (``docs/guarantees.md``).
    zero_copy : bool, optional
        Whether the native gather may hand out such batches as the mapped file bytes (read-only)
        instead of copying them. ``None`` (default): yes, unless the environment variable
        ``TSFS_TF_ZERO_COPY=0`` says no.

    Notes
    -----
    Each pass over :meth:`dataset` reads the next ``num_epochs`` epochs (so Keras ``fit(epochs=N)``
    sees a new order every epoch). Nullable fields arrive filled with zeros / empty strings plus a
    boolean ``<name>__valid``; ``remainder="pad"`` adds the boolean ``__pad__``.

    Arguments are checked here (:class:`~tensorstore_fs.InvalidArgumentError`). A shard that turns
    out missing or unreadable while the pipeline runs raises where the batch is asked for, as
    TensorFlow hands on Python errors: a ``tf.errors.OpError`` whose message carries ours
    (``CorruptDatasetError: <file>: ...``, ``DatasetNotFoundError: ...``).
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
        input_context: Any = None,
        *,
        num_workers: int = 1,
        variable: str = "ragged",
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        with_row_ids: bool = False,
        version: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        readahead_bytes: int | None = None,
        native: bool | None = None,
        zero_copy: bool | None = None,
        max_padded_bytes: int | None = None,
    ) -> None:
        for name, value in (("native", native), ("zero_copy", zero_copy)):
            if value not in (None, True, False):
                raise InvalidArgumentError(f"{name} must be None, True or False, got {value!r}")
        if variable not in VARIABLE_MODES:
            raise InvalidArgumentError(f"variable must be one of {tuple(VARIABLE_MODES)}, got {variable!r}")
        num_workers = check_int("num_workers", num_workers)
        options = ReadOptions(columns, filter, predicate, batch_size, shuffle, seed, remainder, drop_last,
                              window_bytes, VARIABLE_MODES[variable], with_row_ids, num_epochs,
                              readahead_bytes, max_padded_bytes)
        if input_context is not None:
            if rank is not None or world_size is not None:
                raise InvalidArgumentError("pass input_context= or rank=/world_size=, not both")
            rank, world_size = input_context.input_pipeline_id, input_context.num_input_pipelines
        self.stream, world = open_stream(ds_or_url, options, rank=rank, world_size=world_size, version=version,
                                         storage_options=storage_options, cache_dir=cache_dir)
        self.rank, self.world_size = world.rank, world.world_size
        self.num_workers = num_workers
        self.num_epochs = num_epochs
        self.variable = variable
        schema = self.stream.ds.schema
        self._fields = [schema.field(c) for c in self.stream.columns]
        self._ragged = {f.name: Ragged(f.name, f.shape, tf_dtype(f))
                        for f in self._fields if f.is_variable and variable == "ragged"}
        self._lock = threading.Lock()
        self._epoch = 0
        self._history: tuple = ()
        self._passes = 0  # passes over the tf.data.Dataset started since the last set_epoch / load_state_dict
        self._native_op, self._native = self._native_columns(native)
        self._zero_copy = _tf_native.zero_copy() if zero_copy is None else zero_copy
        self._streams = [self.stream.for_thread() for _ in range(num_workers)]  # own files and memory per thread
        self._located = "rows" if self._native else None  # native columns come as FileRows (where they are)
        self._shard_index = {self.stream.shard_path(i): i for i in range(len(self.stream.ds.shards))} if self._native else {}
        self._iters: list[tuple[int, Iterator[Any]] | None] = [None] * num_workers  # (pass, generator) per plan worker
        self._sig = self._signature()
        # what crosses per chunk: ragged components flat, every other entry already cut into
        # (batches, batch size, ...) by NumPy (a free view), so the graph only slices
        self._chunk_sig = {k: s if k.split("/", 1)[0] in self._ragged else tf.TensorSpec((None,) + tuple(s.shape), s.dtype)
                           for k, s in self._sig.items()}
        self._in_flight = 0  # chunk calls running now (see _tf_transport.drain_at_exit)
        READERS.add(self)

    # -- properties -------------------------------------------------------------------------------
    @property
    def dataset_version(self) -> int:
        return self.stream.ds.version

    @property
    def spec(self) -> PlanSpec:
        return self.stream.spec

    @property
    def epoch(self) -> int:
        """The epoch the next pass over the dataset starts with."""
        return self._epoch + self._passes * self._epochs_per_pass

    @property
    def _epochs_per_pass(self) -> int:
        return self.num_epochs if self.num_epochs is not None else 1

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass start ``epoch`` from its beginning."""
        check_int("epoch", epoch, 0)
        with self._lock:
            self._epoch, self._history, self._passes = epoch, (), 0

    def __len__(self) -> int:
        """Batches the next pass yields for this rank."""
        if self.num_epochs is None:
            raise TypeError("a TFReader with num_epochs=None has no length")
        e = self.epoch
        history = self._history if not self._passes else ()
        first = self.stream.batches_left(e, self.world_size, history, self.rank)
        full = self.stream.plan(e + 1, self.world_size).num_batches(self.rank)
        return first + full * (self.num_epochs - 1)

    def _native_columns(self, native: bool | None) -> tuple[Any, dict[str, Field]]:
        """``(op module, fields it reads)``: the fields the stream locates in the files
        (:meth:`~tensorstore_fs.read.PlannedStream.located_fields`) when the native gather is used."""
        if native is False:
            return None, {}
        located = set(self.stream.located_fields())
        fields = {f.name: f for f in self._fields if f.name in located}
        if not self.stream.ds.storage.is_local:
            if native:
                raise InvalidArgumentError(f"native=True needs a local dataset; {self.stream.ds.url} is not")
            return None, {}
        if not fields and not native:
            return None, {}
        op = _tf_native.load()
        if op is None:
            if native:
                raise InvalidArgumentError(f"native=True, but the native row gather is unavailable: "
                                           f"{_tf_native.unavailable_reason()}")
            return None, {}
        return op, fields

    @property
    def native(self) -> bool:
        """Whether fixed-shape tensor columns are gathered by the native kernel."""
        return self._native_op is not None

    # -- element spec -----------------------------------------------------------------------------
    def _signature(self) -> dict[str, tf.TensorSpec]:
        """What the Python generator yields (ragged fields as their components; native fields as
        ``<name>/file``, ``<name>/offset`` of each row, or ``<name>/inline`` rows where the
        column could not be located in the files)."""
        sig: dict[str, tf.TensorSpec] = {}
        for f in self._fields:
            if f.name in self._native:
                sig[f.name + "/file"] = tf.TensorSpec((None,), tf.int32)
                sig[f.name + "/offset"] = tf.TensorSpec((None,), tf.int64)
                sig[f.name + "/inline"] = tf.TensorSpec((None,) + tuple(f.shape), tf_dtype(f))
            elif f.name in self._ragged:
                sig.update(self._ragged[f.name].signature())
            else:
                sig[f.name] = tf.TensorSpec((None,) + tuple(f.shape), tf_dtype(f))
                if f.is_variable:  # variable="pad"
                    sig[f.name + "__shape"] = tf.TensorSpec((None, len(f.shape)), tf.int64)
            if f.nullable:
                sig[f.name + VALID_SUFFIX] = tf.TensorSpec((None,), tf.bool)
        if self.spec.remainder == "pad":
            sig[PAD_COLUMN] = tf.TensorSpec((None,), tf.bool)
        if self.stream.with_row_ids:
            sig[ROW_ID_COLUMN] = tf.TensorSpec((None,), tf.int64)
        return sig

    def _assemble(self, parts: dict[str, tf.Tensor]) -> dict[str, Any]:
        """Ragged fields from their components, keeping the keys in the generator's order."""
        out: dict[str, Any] = {}
        for key, value in parts.items():
            name = key.split("/", 1)[0]
            if name not in self._ragged:
                out[key] = value
            elif name not in out:
                out[name] = self._ragged[name].assemble(parts)
        return out

    # -- reading ----------------------------------------------------------------------------------
    def _convert(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self._fields:
            v = batch[f.name]
            valid = None
            if f.name in self._native:
                out.update(self._where(f, v))
                continue
            if f.name in self._ragged:
                out.update(self._ragged[f.name].components(v, f.numpy_dtype))
                if f.nullable:
                    valid = v.valid
            elif isinstance(v, np.ma.MaskedArray):
                mask = np.ma.getmaskarray(v)
                valid = ~mask.reshape(mask.shape[0], -1).any(axis=1)
                out[f.name] = np.asarray(v.filled(0))
            elif v.dtype == object and f.nullable:
                valid = np.array([x is not None for x in v], dtype=bool)
                empty = "" if f.dtype == "string" else b""
                out[f.name] = np.array([empty if x is None else x for x in v], dtype=object)
            else:
                out[f.name] = v
            if f.is_variable and f.name not in self._ragged:
                out[f.name + "__shape"] = batch[f.name + "__shape"]
            if f.nullable:
                out[f.name + VALID_SUFFIX] = np.ones(len(v), dtype=bool) if valid is None else valid
        for k in (PAD_COLUMN, ROW_ID_COLUMN):
            if k in batch:
                out[k] = batch[k]
        return out

    def _where(self, f: Field, v: FileRows | np.ndarray) -> dict[str, np.ndarray]:
        """A native field's batch part: the file and byte offset of every row, or the rows
        themselves where the stream decoded them (a row group stored otherwise)."""
        if isinstance(v, FileRows):
            files = np.array([self._shard_index[p] for p in v.paths], dtype=np.int32)
            offsets = np.asarray(v.offsets, dtype=np.int64)[v.segment] + v.rows * v.row_nbytes
            inline = np.zeros((0, *f.shape), f.numpy_dtype)
            return {f.name + "/file": files[v.segment], f.name + "/offset": offsets, f.name + "/inline": inline}
        return {f.name + "/file": np.zeros(0, np.int32), f.name + "/offset": np.zeros(0, np.int64),
                f.name + "/inline": v}

    def _materialize(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Graph side of native fields: gather each one's rows from the files (or pass on the
        inline rows), keeping the other entries as they are."""
        paths = tf.constant([self.stream.shard_path(i) for i in range(len(self.stream.ds.shards))])
        out: dict[str, Any] = {}
        for key, v in batch.items():
            name, _, part = key.rpartition("/")
            if name not in self._native:
                out[key] = v
            elif part == "file":
                f = self._native[name]
                out[name] = self._native_op.tsfs_gather_rows(
                    paths, v, batch[name + "/offset"], batch[name + "/inline"], row_shape=list(f.shape),
                    zero_copy=self._zero_copy)
        return out

    def _chunk_rows(self, stream: PlannedStream) -> int:
        """Rows of one Python call: about ``READ_BYTES`` of what Python itself decodes (native
        fields travel as 12 bytes a row), a whole number of batches; one if a field is padded."""
        if any(f.is_variable and f.name not in self._ragged for f in self._fields):
            return self.spec.batch_size  # each batch is padded to its own widest rows, not a chunk's
        rows = stream.read_rows
        if self._native:
            row_bytes = max(1, stream.ds.nbytes // max(1, len(stream.ds)))
            python_bytes = max(1, row_bytes - sum(f.row_nbytes for f in self._native.values()))
            rows = min(READ_BYTES // (python_bytes + 12 * len(self._native)), 64 * self.spec.batch_size)
        return max(1, rows // self.spec.batch_size) * self.spec.batch_size

    def _begin_pass(self) -> int:
        """A new pass (an iterator of the ``tf.data.Dataset``, see ``_tf_passes``): its number."""
        with self._lock:
            self._passes += 1
            return self._passes - 1

    def _generate(self, worker: int, n: int) -> Iterator[tuple[dict[str, Any], list[int]]]:
        """Pass ``n`` of plan worker ``worker``: ``(chunk of consecutive batches, batch sizes)``."""
        with self._lock:
            history = self._history if n == 0 else ()
        stream: PlannedStream = self._streams[worker]
        first = self._epoch + n * self._epochs_per_pass
        epochs = range(first, first + self.num_epochs) if self.num_epochs is not None else count_from(first)
        chunk_rows = self._chunk_rows(stream)
        for epoch in epochs:
            plan, source, skip, _ = stream.resume_plan(epoch, self.world_size, history, self.rank, worker,
                                                       self.num_workers)
            history = ()
            for chunk, sizes in stream.iter_chunks(plan, self.rank, source, self.num_workers, skip,
                                                   chunk_rows=chunk_rows, located=self._located):
                yield self._convert(chunk), sizes

    def _fetch(self, worker: Any, index: Any, pass_: Any) -> list[tf.Tensor]:
        """py_function body: the next chunk of plan worker ``worker`` in pass ``pass_`` as tensors,
        its batch sizes and a "more" flag (index 0 starts the pass; its end: empty and False)."""
        with self._lock:
            self._in_flight += 1
        try:
            return self._next_chunk(int(worker), int(index), int(pass_))
        finally:
            with self._lock:
                self._in_flight -= 1

    def _next_chunk(self, w: int, index: int, n: int) -> list[tf.Tensor]:
        if EXITING.is_set():  # the interpreter is exiting: end the pass (see _tf_transport.drain_at_exit)
            self._iters[w] = None
        elif index == 0:
            self._iters[w] = (n, self._generate(w, n))
        mine = self._iters[w] if self._iters[w] is not None and self._iters[w][0] == n else None  # (not a dropped pass's)
        item = next(mine[1], None) if mine is not None else None
        if item is None:
            self._iters[w] = None if mine is not None else self._iters[w]
            # (a padded variable field's dimensions are None in the signature: 0 here)
            empty = [tf.zeros((0,) + tuple(d or 0 for d in s.shape[1:]), s.dtype) for s in self._chunk_sig.values()]
            return empty + [tf.zeros((0,), tf.int64), tf.constant(False)]
        chunk, sizes = item
        k = len(sizes)  # batches of one size (see PlannedStream.iter_chunks); rows // k per batch
        tensors = [to_tensor(chunk[key] if key.split("/", 1)[0] in self._ragged else
                              chunk[key].reshape((k, len(chunk[key]) // k) + chunk[key].shape[1:]), s.dtype)
                   for key, s in self._chunk_sig.items()]
        return tensors + [tf.constant(sizes, tf.int64), tf.constant(True)]

    def _worker_dataset(self, worker: Any, pass_: Any) -> tf.data.Dataset:
        """Plan worker ``worker``'s batches: chunks of equal-size batches cross from Python in one
        call and are cut into batches inside tf.data: ``flat_map(from_tensor_slices)`` hands out
        views of the chunk (``unbatch`` copies every batch, measurably slower)."""
        sig = self._chunk_sig
        dtypes = [s.dtype for s in sig.values()] + [tf.int64, tf.bool]

        @tf.autograph.experimental.do_not_convert
        def fetch(index: tf.Tensor) -> tuple[dict[str, Any], tf.Tensor]:
            out = tf.py_function(self._fetch, [worker, index, pass_], dtypes)
            chunk = {}
            for (k, s), t in zip(sig.items(), out):
                t.set_shape(s.shape)
                chunk[k] = t
            sizes, more = out[-2], out[-1]
            sizes.set_shape((None,))
            more.set_shape(())
            # a chunk holds k batches of one size b (see PlannedStream.iter_chunks), each entry
            # already (k, b, ...) but ragged fields, cut here; from_tensor_slices hands out the
            # batches (the end of a pass is an empty chunk: k = 0). Every function of the pipeline
            # is optimised each time an iterator is made (an epoch): the less graph, the sooner
            b = tf.concat([sizes, tf.ones((1,), tf.int64)], 0)[0]
            split: dict[str, Any] = {}
            for key, v in self._assemble(chunk).items():
                split[key] = tf.RaggedTensor.from_uniform_row_length(v, b, validate=False) if isinstance(
                    v, tf.RaggedTensor) else v
            return split, more

        @tf.autograph.experimental.do_not_convert
        def has_more(chunk: dict, more: tf.Tensor) -> tf.Tensor:
            return more

        @tf.autograph.experimental.do_not_convert
        def batches(chunk: dict, more: tf.Tensor) -> tf.data.Dataset:
            return tf.data.Dataset.from_tensor_slices(chunk)

        # range, not counter(): counter is a scan, one more function to optimise per iterator
        return tf.data.Dataset.range(2**62).map(fetch).take_while(has_more).flat_map(batches)

    def dataset(self) -> tf.data.Dataset:
        """The ``tf.data.Dataset`` of batches (dicts of tensors, ``element_spec`` from the schema).

        Columns Python decodes cross into TensorFlow without a copy where TensorFlow can use the
        memory as it is (C-contiguous, writable, 64-byte aligned: the usual case), otherwise with
        one aligned copy; with the native gather, fixed-shape tensor columns are copied once,
        from the shard files into the batch, by TensorFlow's threads."""
        ds = per_iterator(self._begin_pass, self._worker_dataset, self.num_workers)
        if self._native:
            # the copies run ahead on TensorFlow's threads while the training step uses a batch
            ds = ds.map(tf.autograph.experimental.do_not_convert(self._materialize),
                        num_parallel_calls=GATHER_PARALLEL, deterministic=True).prefetch(GATHER_PREFETCH)
        if self.num_epochs is not None and not self._history:
            ds = ds.apply(tf.data.experimental.assert_cardinality(len(self)))
        return ds

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self, consumed_batches: int) -> dict[str, Any]:
        """A small, JSON-ready state: ``consumed_batches`` of the current pass were used.

        tf.data prefetches, so only the training loop knows what it consumed: count the steps.
        The state is the same as ``TorchDataset``'s rank-level state, so either adapter resumes it.
        """
        check_int("consumed_batches", consumed_batches, 0)
        passes = self._passes
        epoch = self._epoch + max(0, passes - 1) * self._epochs_per_pass
        history = self._history if passes <= 1 else ()
        # the epochs of this pass it completed are behind it
        epoch, history, consumed_batches = self.stream.roll_over(epoch, self.world_size, history, self.rank,
                                                                 consumed_batches)
        # the pass resumed from ``history`` (never folded here): count on from the resume point
        history, consumed_batches = StreamState.fold(history, self.world_size, self.num_workers, consumed_batches)
        return StreamState.rank_dict(self.dataset_version, self.spec, epoch, history, self.world_size,
                                     self.num_workers, consumed_batches)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a rank-level state (ours or ``TorchDataset``'s): the same world and worker
        count continue exactly; another world size or worker count re-plans the rest of the epoch."""
        parsed = StreamState.parse(dict(state) if isinstance(state, Mapping) else state,
                                   self.dataset_version, self.spec)
        if parsed.worker is not None:
            raise InvalidArgumentError("a DataLoader worker's state cannot resume a tf.data reader; "
                                       "save a rank-level state (TorchDataset.state_dict outside workers)")
        with self._lock:
            self._epoch, self._history, self._passes = parsed.epoch, parsed.history, 0


def make_tf_dataset(ds_or_url: Dataset | str, columns: Sequence[str] | None = None, filter: Any = None,
                    predicate: Predicate | None = None, batch_size: int = 256, shuffle: bool = False,
                    seed: int = 0, **kwargs: Any) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of batches of a tensorstore_fs dataset.

    Takes the arguments of :class:`TFReader` (``num_epochs``, ``remainder``, ``drop_last``,
    ``rank``/``world_size`` or ``input_context``, ``num_workers``, ``variable``, ...). Fixed-shape
    fields arrive as dense tensors ``(batch, *shape)``, variable-shape ones as ``tf.RaggedTensor``,
    strings and bytes as ``tf.string``. Use :class:`TFReader` directly to save and restore the
    position (``state_dict`` / ``load_state_dict``).
    """
    return TFReader(ds_or_url, columns, filter, predicate, batch_size, shuffle, seed, **kwargs).dataset()
