"""h5py: one HDF5 file, chunked, uncompressed, written with plain h5py (``create_dataset(data=...)``).

Layout: one dataset per column (``tabular``'s 16 float features packed as one ``x (n, 16)`` dataset,
as an h5py user stores a feature matrix; token rows as an ``h5py.vlen_dtype(int32)`` dataset); chunks
of whole rows, about 1 MiB each (a power of two rows), the size of h5py's default chunk cache.

Reads: batch slices ``d[a:a+256]``; shuffled: a permutation per epoch cut into batches, each batch's
indices sorted, 1-D datasets read with one fancy index ``d[idx]``, multi-dimensional ones row by row
into a preallocated batch (fancy indexing of (3,64,64) rows measured ~12x slower than that loop); the
filter reads every batch and keeps ``id < k`` with a numpy mask; the projection reads only ``label``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..consume import PassOut, consume
from ..data import BATCH, TAB_FEATURES, Spec, columns
from ..harness import Skip

FORMAT = "h5py"


def _chunk_rows(row_nbytes: int, n: int) -> int:
    r = max(1, (1 << 20) // max(1, row_nbytes))
    return min(n, 1 << (r.bit_length() - 1))


def _layout(s: Spec, src: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    cols = columns(s, src)
    if s.kind == "tabular":
        x = np.stack([np.asarray(cols.pop(f)) for f in TAB_FEATURES], axis=1)
        cols["x"] = x
    if s.kind == "tokens":
        obj = np.empty(s.rows, dtype=object)
        obj[:] = cols["tokens"]
        cols["tokens"] = obj
    return cols


def prepare(s: Spec, src: dict[str, Any]) -> dict[str, Any]:
    """Untimed: the arrays h5py is handed (features stacked, token rows as an object array)."""
    return _layout(s, src)


def write(s: Spec, cols: dict[str, Any], out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    import h5py
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    chunks = {}
    with h5py.File(out / "data.h5", "w") as f:
        for name, v in cols.items():
            if v.dtype == object:
                rows = _chunk_rows(1024, s.rows)
                f.create_dataset(name, data=v, dtype=h5py.vlen_dtype(np.int32), chunks=(rows,))
            else:
                v = np.asarray(v)
                rows = _chunk_rows(v.itemsize * int(np.prod(v.shape[1:], dtype=np.int64)), s.rows)
                f.create_dataset(name, data=v, chunks=(rows, *v.shape[1:]))
            chunks[name] = rows
    return {"chunk_rows": chunks}


def reader(name: str, s: Spec, ctx: dict[str, Any], measure: str):
    import h5py
    import numpy as np

    if measure == "ttfb":
        raise Skip("one HDF5 file per dataset: no sharded layout to open")
    f = h5py.File(Path(ctx["paths"]["h5py"]) / "data.h5", "r")
    names = ["label"] if measure == "project" else list(f.keys())
    dsets = {k: f[k] for k in names}
    keys = {k: k for k in names}
    id_key = None if measure == "project" else "id"
    n = s.rows

    def slices():
        for a in range(0, n, BATCH):
            yield {k: d[a:a + BATCH] for k, d in dsets.items()}

    if measure in ("seq", "project"):
        def run(epoch: int) -> PassOut:
            return consume(slices(), keys, id_key)
    elif measure == "filter":
        k = s.filter_k

        def filtered():
            for b in slices():
                m = b["id"] < k
                if m.any():
                    yield {c: v[m] for c, v in b.items()}

        def run(epoch: int) -> PassOut:
            return consume(filtered(), keys, "id")
    elif measure == "shuffle":
        def take(d, idx):
            if d.ndim == 1:
                return d[idx]
            out = np.empty((len(idx), *d.shape[1:]), dtype=d.dtype)
            for j, i in enumerate(idx):
                out[j] = d[i]
            return out

        def shuffled(epoch: int):
            perm = np.random.default_rng(epoch).permutation(n)
            for a in range(0, n, BATCH):
                idx = np.sort(perm[a:a + BATCH])
                yield {c: take(d, idx) for c, d in dsets.items()}

        def run(epoch: int) -> PassOut:
            return consume(shuffled(epoch), keys, "id")
    else:
        raise ValueError(measure)
    return run, {"close": f.close}
