"""The PyTorch adapter's worker-to-main hand-off: how a batch made in a DataLoader worker reaches the main process.

The DataLoader pickles each worker batch; torch would copy every tensor into a shared-memory block
of its own and pass each block's descriptor over a socket. Here a batch travels as:

* small dense tensors (``INLINE_BYTES`` in all) by value inside the pickle;
* larger dense tensors in one slot of the worker's shared ring (:mod:`._ring`), viewed in place
  by the main process;
* located tensor rows (:class:`~tensorstore_fs.read.FileRows`) as their file location, mapped
  (consecutive rows) or gathered (shuffled rows, into the ring by the worker where a slot is free)
  where they arrive.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..read import FileRows
from . import _ring

__all__ = ["INLINE_BYTES", "FileTensor", "file_tensor", "gather_in_worker", "share_batch"]


def file_tensor(rows: FileRows) -> torch.Tensor:
    """A tensor of file-located rows (zero-copy copy-on-write map where the rows are consecutive)."""
    return torch.from_numpy(rows.materialize())


def _inline_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


class _InlineTensor:
    """A DataLoader worker's stand-in for a small tensor: pickles by value with the batch (see
    :func:`share_batch`) and unpickles, in the main process, as a tensor of its own memory."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, tuple[np.ndarray]]:
        return _inline_tensor, (self.array,)


def _slot_tensor(*location: Any) -> torch.Tensor:
    """A tensor viewing a worker's ring slot in place (see :mod:`._ring`)."""
    return torch.from_numpy(_ring.attach(*location))


class _SlotTensor:
    """A DataLoader worker's stand-in for a gathered tensor in its shared ring: pickles as the
    slot's location and unpickles, in the main process, as a tensor viewing that slot."""

    __slots__ = ("rows",)

    def __init__(self, rows: "_ring.SlotRows") -> None:
        self.rows = rows

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _slot_tensor, self.rows.location()


def _carve(block: np.ndarray, offset: int, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape) * np.dtype(dtype).itemsize
    return torch.from_numpy(block[offset:offset + n].view(dtype).reshape(shape))


class _SlotBlock:
    """A batch's dense tensors in one slot of the worker's ring: pickled once per batch (the
    pickle memo shares it between the batch's tensors) and unpickled as the slot's bytes."""

    __slots__ = ("slot",)

    def __init__(self, slot: "_ring.SlotRows") -> None:
        self.slot = slot

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _ring.attach, self.slot.location()


class _BlockPart:
    """One tensor of a :class:`_SlotBlock`: unpickles as a tensor viewing its part of the slot."""

    __slots__ = ("block", "offset", "dtype", "shape")

    def __init__(self, block: _SlotBlock, offset: int, dtype: str, shape: tuple[int, ...]) -> None:
        self.block, self.offset, self.dtype, self.shape = block, offset, dtype, shape

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _carve, (self.block, self.offset, self.dtype, self.shape)


def gather_in_worker(batch: dict[str, Any]) -> dict[str, Any]:
    """Inside a DataLoader worker: gather the batch's shuffled file-located columns into the
    worker's shared rings, so the main process receives them ready (consecutive rows stay file
    locations: the main process maps those without a copy). A column whose ring has no free
    slot keeps its file location."""
    out = batch
    for name, v in batch.items():
        if isinstance(v, FileTensor) and not v.rows.is_contiguous():
            slot = _ring.gather_to_ring(name, v.rows)
            if slot is not None:
                out = dict(out) if out is batch else out
                out[name] = _SlotTensor(slot)
    return out


class FileTensor:
    """A DataLoader worker's stand-in for a tensor: pickles as the rows' location (a few hundred
    bytes) and unpickles, in the main process, as the tensor itself."""

    __slots__ = ("rows",)

    def __init__(self, rows: FileRows) -> None:
        self.rows = rows

    def __reduce__(self) -> tuple[Any, tuple[FileRows]]:
        return file_tensor, (self.rows,)


INLINE_BYTES = 64 << 10  # dense tensors of a batch up to this size travel inside its pickle


def share_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Prepare a batch's dense tensors for the hand-off to the main process (inside a DataLoader worker).

    The DataLoader hands batches from workers to the main process through shared memory; it
    would copy every tensor into a block of its own, and pass each block's file descriptor over a
    socket (a round trip per tensor). Here, when the dense tensors are small in all
    (``INLINE_BYTES``: labels, ids, the rest of a batch whose big tensors travel as file
    locations), they travel by value inside the batch's pickle. Larger ones are copied into one
    slot of the worker's shared ring (:mod:`._ring`: the main process maps the
    ring once and views the slot in place); without a free slot, or off Linux, into ONE torch
    shared-memory block for the batch (one allocation and one descriptor).
    """
    dense = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.layout == torch.strided
             and not v.is_shared()]
    if not dense:
        return batch
    if sum(batch[k].numel() * batch[k].element_size() for k in dense) <= INLINE_BYTES:
        out = dict(batch)
        for k in dense:
            out[k] = _InlineTensor(batch[k].contiguous().numpy())
        return out
    offsets, total = {}, 0
    for k in dense:
        t = batch[k]
        total = -(-total // 64) * 64  # keep every tensor 64-byte aligned
        offsets[k] = total
        total += t.numel() * t.element_size()
    got = _ring.reserve("__batch__", total) if _ring.available() else None
    if got is not None:  # the worker's shared ring: the main process maps it once, not per batch
        slot, memory = got
        block = _SlotBlock(slot)
        out = dict(batch)
        for k in dense:
            t = batch[k]
            n = t.numel() * t.element_size()
            np.copyto(memory[offsets[k]:offsets[k] + n], t.contiguous().numpy().reshape(-1).view(np.uint8))
            out[k] = _BlockPart(block, offsets[k], t.numpy().dtype.str, tuple(t.shape))
        return out
    storage = torch.UntypedStorage._new_shared(max(total, 1))
    block = torch.empty(0, dtype=torch.uint8).set_(storage)
    out = dict(batch)
    for k in dense:
        t = batch[k]
        n = t.numel() * t.element_size()
        view = block[offsets[k]:offsets[k] + n].view(t.dtype).view(t.shape)
        view.copy_(t)
        out[k] = view
    return out
