"""The benchmark datasets: their columns, the generator, their sources on disk.

* ``image``    ``id int64`` (sorted), ``label int32`` (0..9), ``image uint8 (3,64,64)``,
               ``embedding float32 (256,)``: 13,324 payload bytes a row (core, loader, tf, suite)
* ``tabular``  ``id int64``, ``label int32``, ``f00`` .. ``f15`` float32 scalars (76 bytes a row)
* ``tokens``   ``id int64``, ``label int32``, ``tokens int32 (None,)`` with lengths uniform in 16..512
               (12 + 4 * length bytes a row, ~1 KiB)

``id`` is the storage order (0..n-1), so it is also the row id for the shuffle statistics and the
1 % filter ``id < n // 100``. The suite saves every column as ``.npy`` under ``<work>/<kind>/src``
(token rows as one flat array plus int64 offsets), and every system's writer loads those arrays.

The Petastorm virtualenv (numpy 1.x) imports this module: module-level imports are the standard
library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

KINDS = ("image", "tabular", "tokens")
BATCH = 256              # rows per batch for every training-style reader
WRITE_BATCH_ROWS = 2048  # rows per batch a producer hands a writer
SHUFFLE_BUFFER = 1000    # rows in the shuffle buffer of WebDataset, TFRecord and Petastorm
TAB_FEATURES = tuple(f"f{i:02d}" for i in range(16))
TOKEN_LEN = (16, 512)    # inclusive bounds of token-sequence lengths
VOCAB = 32000
IMAGE_SHAPE = (3, 64, 64)
EMB_DIM = 256
ROW_NBYTES = 8 + 4 + 3 * 64 * 64 + 4 * EMB_DIM  # 13,324 payload bytes an image row


@dataclass(frozen=True)
class Col:
    """One logical column: dtype and per-row shape (``None`` = variable length)."""

    name: str
    dtype: str
    shape: tuple = ()

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()

    @property
    def is_variable(self) -> bool:
        return None in self.shape

    @property
    def row_nbytes(self) -> int:
        """Bytes of one fixed-shape row (itemsize times elements)."""
        import numpy as np

        n = 1
        for d in self.shape:
            n *= d
        return np.dtype(self.dtype).itemsize * n


@dataclass(frozen=True)
class Spec:
    """A dataset kind at a size."""

    kind: str
    rows: int
    cols: tuple = field(default=())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cols]

    def col(self, name: str) -> Col:
        return next(c for c in self.cols if c.name == name)

    @property
    def filter_k(self) -> int:
        """The 1 % filter keeps ``id < filter_k``."""
        return max(1, self.rows // 100)

    @property
    def tensors(self) -> list[Col]:
        return [c for c in self.cols if not c.is_scalar]


def spec(kind: str, rows: int) -> Spec:
    base = (Col("id", "int64"), Col("label", "int32"))
    if kind == "image":
        cols = base + (Col("image", "uint8", IMAGE_SHAPE), Col("embedding", "float32", (EMB_DIM,)))
    elif kind == "tabular":
        cols = base + tuple(Col(f, "float32") for f in TAB_FEATURES)
    elif kind == "tokens":
        cols = base + (Col("tokens", "int32", (None,)),)
    else:
        raise ValueError(kind)
    return Spec(kind, int(rows), cols)


def generate(s: Spec, seed: int = 0) -> dict[str, Any]:
    """The numpy columns of ``s`` (token rows as ``tokens_flat`` + ``tokens_offsets``)."""
    import numpy as np

    n = s.rows
    rng = np.random.default_rng(seed)
    out = {"id": np.arange(n, dtype=np.int64), "label": rng.integers(0, 10, n, dtype=np.int32)}
    if s.kind == "image":
        out["image"] = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
        out["embedding"] = rng.standard_normal((n, EMB_DIM), dtype=np.float32)
    elif s.kind == "tabular":
        for name in TAB_FEATURES:
            out[name] = rng.standard_normal(n, dtype=np.float32)
    else:
        lengths = rng.integers(TOKEN_LEN[0], TOKEN_LEN[1] + 1, n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        out["tokens_flat"] = rng.integers(0, VOCAB, int(offsets[-1]), dtype=np.int32)
        out["tokens_offsets"] = offsets
    return out


def save_source(src: dict[str, Any], folder: Path) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for k, v in src.items():
        np.save(folder / f"{k}.npy", np.ascontiguousarray(v))


def load_source(folder: Path | str, mmap: bool = False) -> dict[str, Any]:
    """The arrays :func:`save_source` wrote (read into memory unless ``mmap``)."""
    import numpy as np

    return {f[:-4]: np.load(os.path.join(folder, f), mmap_mode="r" if mmap else None)
            for f in sorted(os.listdir(folder)) if f.endswith(".npy")}


def columns(s: Spec, src: dict[str, Any]) -> dict[str, Any]:
    """Logical columns: arrays, and for ``tokens`` a list of per-row views."""
    out = {c.name: src[c.name] for c in s.cols if not c.is_variable}
    if s.kind == "tokens":
        flat, off = src["tokens_flat"], src["tokens_offsets"]
        out["tokens"] = [flat[off[i]:off[i + 1]] for i in range(len(off) - 1)]
    return out


def column_bytes(s: Spec, src: dict[str, Any], names: list[str] | None = None, rows: int | None = None) -> int:
    """Decoded payload bytes of ``names`` (default: every column) over the first ``rows`` rows
    (default: all): the GB/s numerator."""
    rows = s.rows if rows is None else rows
    total = 0
    for c in s.cols:
        if names is not None and c.name not in names:
            continue
        if c.is_variable:
            off = src["tokens_offsets"]
            total += int(off[rows] - off[0]) * 4
        else:
            total += c.row_nbytes * rows
    return int(total)


def tsfs_schema(s: Spec) -> Any:
    import tensorstore_fs as tsfs

    return tsfs.Schema([tsfs.Field(c.name, c.dtype, c.shape) for c in s.cols])


def write_batches(s: Spec, cols: dict[str, Any], rows: int = WRITE_BATCH_ROWS) -> Iterator[dict[str, Any]]:
    """Columnar batches of ``rows`` rows (what a producer hands a writer)."""
    for a in range(0, s.rows, rows):
        yield {k: v[a:a + rows] for k, v in cols.items()}


class Ragged:
    """Flat values plus offsets (what the raw pyarrow reference yields for token rows, and the
    consumer's view of tsfs's flat batches): ``len()`` is the number of rows, ``[i]`` one row (a view)."""

    __slots__ = ("flat", "offsets")

    def __init__(self, flat: Any, offsets: Any) -> None:
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Any:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]
