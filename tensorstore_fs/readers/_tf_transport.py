"""How the tf.data adapter's batches cross from Python into TensorFlow (private to ``readers.tf``).

* :func:`to_tensor` — a numpy column as a tensor, zero-copy where TensorFlow may use the memory;
* :class:`Ragged` — a variable-shape field as flat values plus row lengths, assembled in the graph;
* :func:`drain_at_exit` — pipelines still running at interpreter exit are ended first.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from ..ragged import RaggedRows
from ..read import ALIGN, aligned_empty
from ..schema import Field

__all__ = ["EXITING", "READERS", "Ragged", "tf_dtype", "to_tensor"]


# Interpreter exit with a pipeline still running (``num_epochs=None``, a prefetch): TensorFlow's
# threads keep calling the Python chunk function, and once Python is finalizing they wait forever
# for the GIL while the iterator's destructor waits for them -- the process never exits. So at
# exit every reader ends its passes (the chunk function answers "no more" at once) and the
# calls already running are let finish first.
READERS: "weakref.WeakSet[Any]" = weakref.WeakSet()  # the live TFReaders
EXITING = threading.Event()
# no chunk call running for this long: the pipelines have drained (a process that still holds a
# reader pays this once at exit; a pass may be starting between two calls, so it is not skipped)
EXIT_QUIET_S = 0.05
EXIT_WAIT_S = 5.0


def drain_at_exit() -> None:
    EXITING.set()
    readers = list(READERS)
    if not readers:
        return  # no reader alive: nothing can call back into Python
    start = quiet = time.monotonic()
    while time.monotonic() - start < EXIT_WAIT_S:
        if any(r._in_flight for r in readers):
            quiet = time.monotonic()
        elif time.monotonic() - quiet >= EXIT_QUIET_S:
            return
        time.sleep(0.002)  # the GIL is free meanwhile: waiting calls run and see EXITING


atexit.register(drain_at_exit)


@dataclass(frozen=True)
class Ragged:
    """How one variable-shape field travels: flat values plus one row-length vector per
    variable dimension (fixed dimensions become uniform row partitions in the graph)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: tf.DType

    @property
    def last_variable(self) -> int:
        return max(i for i, d in enumerate(self.shape) if d is None)

    @property
    def inner(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.shape[self.last_variable + 1:])

    def components(self, rows: RaggedRows, np_dtype: np.dtype) -> dict[str, np.ndarray]:
        """Numpy components of a batch of rows (a null row is an empty tensor): the rows' flat
        values as they were decoded (no per-row work) and the row lengths of each variable dimension."""
        j = self.last_variable
        shapes = rows.shapes.astype(np.int64, copy=False).reshape(len(rows), len(self.shape))
        if rows.valid is not None and not rows.valid.all():  # null rows: empty, fixed dims kept
            shapes = shapes.copy()
            shapes[~rows.valid] = [0 if d is None else d for d in self.shape]
        flat = rows.values[rows.offsets[0]:rows.offsets[-1]] if len(rows) else np.zeros(0, np_dtype)
        out = {self.name: flat.astype(np_dtype, copy=False).reshape((-1,) + self.inner)}
        for k in range(j + 1):
            if self.shape[k] is None:  # lengths of dimension k, once per element of the levels above
                repeats = np.prod(shapes[:, :k], axis=1) if k else np.ones(len(rows), np.int64)
                out[f"{self.name}/{k}"] = np.repeat(shapes[:, k], repeats)
        return out

    def signature(self) -> dict[str, tf.TensorSpec]:
        sig = {self.name: tf.TensorSpec((None,) + self.inner, self.dtype)}
        sig.update({f"{self.name}/{k}": tf.TensorSpec((None,), tf.int64)
                    for k in range(self.last_variable + 1) if self.shape[k] is None})
        return sig

    def assemble(self, parts: Mapping[str, tf.Tensor]) -> tf.RaggedTensor:
        rt = parts[self.name]
        for k in range(self.last_variable, -1, -1):
            if self.shape[k] is None:
                rt = tf.RaggedTensor.from_row_lengths(rt, parts[f"{self.name}/{k}"], validate=False)
            else:
                rt = tf.RaggedTensor.from_uniform_row_length(rt, self.shape[k], validate=False)
        return rt


def tf_dtype(f: Field) -> tf.DType:
    return tf.string if f.dtype in ("string", "bytes") else tf.as_dtype(f.numpy_dtype)


def to_tensor(a: np.ndarray, dtype: tf.DType) -> tf.Tensor:
    """A numpy batch column as a tensor: zero-copy through DLPack when TensorFlow may use the
    memory as it is (``ALIGN``-byte aligned: TensorFlow kernels abort on less), else one copy into
    an aligned buffer (strings: ``tf.constant``)."""
    if a.dtype == object or a.size == 0:
        return tf.constant(a.tolist() if a.dtype == object else a, dtype=dtype, shape=a.shape)
    if not (a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGN == 0):
        _, out = aligned_empty(a.shape, a.dtype)
        np.copyto(out, a)
        a = out
    return tf.experimental.dlpack.from_dlpack(a.__dlpack__())
