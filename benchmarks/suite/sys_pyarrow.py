"""Raw pyarrow on the same bytes: the reference every figure is divided by.

* write     ``pq.write_table`` of one table built zero-copy from the source arrays in tsfs's storage layout
            (tensors ``fixed_size_binary``, token rows ``large_binary`` + the shape column) with tsfs's
            Parquet settings (snappy + statistics for scalars, dictionaries where tsfs uses them, no compression for tensors, the
            row-group size in rows of tsfs's file): what tsfs's writer costs at the least.
* reads     the tsfs dataset's own shard files: ``pq.ParquetFile(path, memory_map=True, pre_buffer=False)``
            (pre-buffering a map only costs) opened once, every
            row group read whole, ``np.frombuffer`` of the tensor buffers (offset honoured), ``to_numpy()``
            of scalars, token rows as flat values + offsets (no per-row objects), then cut into the
            256-row batches every reader hands its consumer (numpy views, no copy; the rows left at a
            row group's end form a shorter batch). No shuffle. ``pyarrow-rg``: the same without
            cutting, one batch per row group (sequential read and projection only; shown, never
            divided by: the consumer's cost per batch falls on 256-row readers alone).
* filter    ``pyarrow.dataset`` over those files with the same expression (row-group statistics pruning).
* project   ``read_row_group(g, columns=["label"])``.
* ttfb      ``pyarrow.dataset`` over the 1000-shard copy's ``data/`` folder, first batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from suite.data import BATCH, Ragged, Spec
from suite.harness import PassOut, Skip, consume

FORMAT = "pyarrow"
READERS = {"pyarrow": "raw pyarrow: ParquetFile(mmap) + np.frombuffer, cut into 256-row views (reference)",
           "pyarrow-rg": "raw pyarrow read like the reference, one batch per whole row group (not cut; not divided by)"}


def arrow_table(s: Spec, src: dict[str, Any]):
    """The source as one Arrow table in tsfs's storage layout, zero-copy where possible."""
    import numpy as np
    import pyarrow as pa

    from bench_core import fsb

    arrays, names = [], []
    for c in s.cols:
        if c.is_variable:
            flat, off = src["tokens_flat"], src["tokens_offsets"]
            offs = np.ascontiguousarray(off * 4)
            arrays.append(pa.Array.from_buffers(pa.large_binary(), s.rows,
                                                [None, pa.py_buffer(offs), pa.py_buffer(np.ascontiguousarray(flat))]))
            names.append(c.name)
            lengths = np.diff(off).astype(np.int32)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(lengths, type=pa.int32()), 1))
            names.append(f"__shape__{c.name}")
        elif c.is_scalar:
            arrays.append(pa.array(np.asarray(src[c.name])))
            names.append(c.name)
        else:
            arrays.append(fsb(np.asarray(src[c.name])))
            names.append(c.name)
    return pa.table(arrays, names=names)


def write(s: Spec, src: dict[str, Any], out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from tensorstore_fs.writer import DEFAULT_SCALAR_COMPRESSION, dictionary_columns

    t = arrow_table(s, src)
    scalars = [c.name for c in s.cols if c.is_scalar]
    compression = {n: (DEFAULT_SCALAR_COMPRESSION if n in scalars else "none") for n in t.column_names}
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, str(out / "part-0.parquet"), row_group_size=ctx["tsfs_rg_rows"], compression=compression,
                   use_dictionary=dictionary_columns(t, scalars) or False, write_statistics=scalars)
    return {"row_group_rows": ctx["tsfs_rg_rows"]}


def decode(t, s: Spec) -> dict[str, Any]:
    """Arrow table / record batch in tsfs layout -> numpy (the reference decode)."""
    import numpy as np

    from _common import np_fixed

    out: dict[str, Any] = {}
    for name in t.column_names:
        if name.startswith("__"):
            continue
        col = t.column(name)
        if hasattr(col, "num_chunks"):
            col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        c = s.col(name)
        n = len(col)
        if c.is_variable:
            offs = np.frombuffer(col.buffers()[1], dtype=np.int64, count=n + 1, offset=col.offset * 8)
            flat = np.frombuffer(col.buffers()[2], dtype=np.int32) if n else np.zeros(0, np.int32)
            out[name] = Ragged(flat, offs // 4)
        elif c.is_scalar:
            out[name] = col.to_numpy()
        else:
            out[name] = np_fixed(col, c.dtype, c.shape)
    return out


def cut(batch: dict[str, Any], rows: int):
    """``batch`` (numpy columns, Ragged token rows) as views of ``rows`` rows each."""
    n = len(next(iter(batch.values()))) if batch else 0
    for a in range(0, n, rows):
        b = min(n, a + rows)
        yield {k: Ragged(v.flat, v.offsets[a:b + 1]) if isinstance(v, Ragged) else v[a:b] for k, v in batch.items()}


def reader(name: str, s: Spec, ctx: dict[str, Any], measure: str):
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    keys = {c: c for c in s.names}
    files = ctx["tsfs_files"]
    if measure == "shuffle":
        raise Skip("raw pyarrow has no shuffle; shuffled reads are compared with its sequential read")
    if name == "pyarrow-rg" and measure not in ("seq", "project"):
        raise Skip("shown for the sequential read and the projection only")
    if measure in ("seq", "project"):
        opened = [pq.ParquetFile(f, memory_map=True, pre_buffer=False) for f in files]  # opened once, like tsfs
        cols = ["label"] if measure == "project" else None
        k = {"label": "label"} if cols else keys
        id_key = None if cols else "id"

        def batches():
            for pf in opened:
                for g in range(pf.num_row_groups):
                    whole = decode(pf.read_row_group(g, columns=cols), s)
                    if name == "pyarrow-rg":
                        yield whole
                    else:
                        yield from cut(whole, BATCH)

        def run(epoch: int) -> PassOut:
            return consume(batches(), k, id_key)
        return run, {}
    if measure == "filter":
        expr = pc.field("id") < s.filter_k

        def run(epoch: int) -> PassOut:
            dset = pads.dataset(files, format="parquet")
            return consume((c for b in dset.to_batches(filter=expr) if b.num_rows for c in cut(decode(b, s), BATCH)),
                           keys, "id")
        return run, {}
    if measure == "ttfb":
        url = ctx["ttfb_paths"].get("tsfs")
        if url is None:
            raise Skip("no 1000-shard dataset")
        folder = str(Path(url) / "data")

        def run(epoch: int) -> PassOut:
            dset = pads.dataset(folder, format="parquet")
            return consume((decode(b, s) for b in dset.to_batches() if b.num_rows), keys, "id", limit=1)
        return run, {}
    raise ValueError(measure)
