"""Shared rings: DataLoader workers gather shuffled tensor rows into memory the main process maps once.

A shuffled batch of file-located rows (:class:`tensorstore_fs.parquet.filemap.FileRows`) must be copied
once, row by row. In the main process that gather is its largest cost when two workers feed it;
in a worker, the bytes must then reach the main process, and torch's own hand-off creates a new
shared-memory file per batch and passes its descriptor over a socket (a round trip a batch).

A ring is one anonymous shared-memory file per worker and column, with ``RING_SLOTS`` slots of
one batch each. The worker gathers a batch into a free slot and sends ``(ring, slot)``; the
descriptor travels only until the main process has mapped the ring. The main process views the
slot in place (no copy) and marks it free the moment nothing refers to that batch any more (a
finalizer on the array that owns the view). A worker that finds no free slot
sends the rows' file location instead, so a consumer that keeps batches never stalls a worker.

Linux only (``os.memfd_create``); elsewhere workers keep sending file locations.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import threading
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..read import FileRows

__all__ = ["RING_SLOTS", "SlotRows", "attach", "available", "gather_to_ring", "reserve"]

logger = logging.getLogger(__name__)

RING_SLOTS = 8  # batches a worker may have in flight per column before it falls back
HEADER = 64  # bytes: one state byte per slot (0 free, 1 in use), then the "main has it" flag
_MAPPED = RING_SLOTS  # index of that flag


def available() -> bool:
    return hasattr(os, "memfd_create")


# -- worker side -----------------------------------------------------------------------------------
class _WorkerRing:
    """One column's ring in a DataLoader worker."""

    def __init__(self, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.size = HEADER + RING_SLOTS * slot_bytes
        self.fd = os.memfd_create("tsfs-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self.state = np.frombuffer(self.mm, np.uint8, count=HEADER)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex}"

    def acquire(self) -> int | None:
        free = np.flatnonzero(self.state[:RING_SLOTS] == 0)
        if not len(free):
            return None
        i = int(free[0])
        self.state[i] = 1
        return i

    def slot(self, i: int) -> np.ndarray:
        return np.frombuffer(self.mm, np.uint8, count=self.slot_bytes, offset=HEADER + i * self.slot_bytes)


_worker_rings: dict[str, _WorkerRing] = {}
_worker_pid = os.getpid()


def reserve(key: str, nbytes: int, dtype: str = "|u1", shape: tuple[int, ...] | None = None
            ) -> "tuple[SlotRows, np.ndarray] | None":
    """A free slot of this process's ring for ``key`` (created on first use, sized for this
    batch; a bigger batch gets a new ring), marked in use: ``(its location, its first nbytes
    bytes to fill)``. The location describes ``shape`` of ``dtype`` (default: the bytes). None
    when no slot is free."""
    global _worker_pid
    if _worker_pid != os.getpid():  # a forked child never shares its parent's rings
        _worker_rings.clear()
        _worker_pid = os.getpid()
    ring = _worker_rings.get(key)
    if ring is None or ring.slot_bytes < nbytes:
        try:
            ring = _worker_rings[key] = _WorkerRing(max(nbytes, 1))
        except OSError as e:  # no shared memory to be had (limits, sandboxes): the callers fall back
            logger.debug("no shared ring for %s (%d bytes a slot): %s", key, nbytes, e)
            return None
    i = ring.acquire()
    if i is None:
        return None
    return SlotRows(ring, i, dtype, (nbytes,) if shape is None else shape), ring.slot(i)[:nbytes]


def gather_to_ring(key: str, rows: FileRows) -> "SlotRows | None":
    """Gather ``rows`` into a free slot of this process's ring for ``key``; None when no slot is free."""
    got = reserve(key, len(rows) * rows.row_nbytes, rows.dtype, (len(rows), *rows.row_shape))
    if got is None:
        return None
    slot, memory = got
    try:
        rows.gather_into(memory)
    except BaseException:
        slot.release()
        raise
    return slot


@dataclass(frozen=True, eq=False)
class SlotRows:
    """A gathered batch column in a worker's ring: pickles as the slot's location (plus the
    ring's descriptor until the main process has mapped the ring)."""

    ring: _WorkerRing
    slot: int
    dtype: str
    shape: tuple[int, ...]

    def release(self) -> None:
        """Give the slot back unsent (filling it failed)."""
        self.ring.state[self.slot] = 0

    def location(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import DupFd

        r = self.ring
        fd = None if r.state[_MAPPED] else DupFd(r.fd)
        return r.id, os.getpid(), fd, r.size, r.slot_bytes, self.slot, self.dtype, self.shape


# -- main-process side -----------------------------------------------------------------------------
@dataclass(eq=False)
class _MainRing:
    mm: mmap.mmap
    pid: int
    state: np.ndarray


_rings: dict[str, _MainRing] = {}
# the arrays owning the slots handed out, by (ring, slot): every view of a slot's array — reshapes,
# slices, a torch tensor made from it — refers to it (numpy points views at the first array in
# the chain that has a non-array base), so the slot is free again exactly when it is collected
_owners: "weakref.WeakValueDictionary[tuple[str, int], np.ndarray]" = weakref.WeakValueDictionary()
_lock = threading.Lock()  # batches may be unpickled on the DataLoader's pin-memory thread


def _free(state: np.ndarray, slot: int, pid: int) -> None:
    if os.getpid() == pid:  # a forked child dropping its copy of a batch frees nothing
        state[slot] = 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attach(ring_id: str, pid: int, fd: Any, size: int, slot_bytes: int, slot: int, dtype: str,
           shape: tuple[int, ...]) -> np.ndarray:
    """In the main process: the ``(shape)`` array of ``dtype`` in ``slot`` of ring ``ring_id``
    (mapped on first sight from ``fd``), viewed in place. Writable; the slot is given back to
    its worker when the last reference to the array (or any view or tensor of it) goes."""
    with _lock:
        ring = _rings.get(ring_id)
        if fd is not None:
            received = fd.detach()
            try:
                if ring is None:
                    mm = mmap.mmap(received, size)
                    ring = _rings[ring_id] = _MainRing(mm, pid, np.frombuffer(mm, np.uint8, count=HEADER))
                    ring.state[_MAPPED] = 1
                    for other in [k for k, r in _rings.items() if not _alive(r.pid)]:
                        del _rings[other]  # a finished worker's ring: its held slots keep it mapped
            finally:
                os.close(received)
        if ring is None:
            raise RuntimeError(f"a batch refers to shared ring {ring_id} that this process never mapped")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        start = HEADER + slot * slot_bytes
        owner = np.frombuffer(memoryview(ring.mm)[start:start + nbytes], dtype=dtype)
        weakref.finalize(owner, _free, ring.state, slot, os.getpid())  # the state keeps the ring's map alive
        _owners[ring_id, slot] = owner
        return owner.reshape(shape)
