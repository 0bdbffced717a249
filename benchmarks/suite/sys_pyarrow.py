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
from typing import Any, Callable, Iterator

from ..consume import PassOut, consume
from ..data import BATCH, Ragged, Spec
from ..harness import Skip

FORMAT = "pyarrow"


def fsb(a: Any) -> Any:
    """numpy (n, ...) array -> Arrow ``fixed_size_binary(row bytes)``, zero-copy."""
    import numpy as np
    import pyarrow as pa

    a = np.ascontiguousarray(a)
    nbytes = a.itemsize * (a.size // len(a))
    return pa.Array.from_buffers(pa.binary(nbytes), len(a), [None, pa.py_buffer(a.reshape(-1).view(np.uint8))])


def np_fixed(arr: Any, dtype: str, shape: tuple[int, ...]) -> Any:
    """``fixed_size_binary`` Arrow array -> zero-copy (n, *shape) numpy view (honours ``arr.offset``)."""
    import numpy as np

    n = len(arr)
    rb = arr.type.byte_width
    flat = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=n * rb, offset=arr.offset * rb)
    return flat.view(dtype).reshape((n, *shape))


def arrow_table(s: Spec, src: dict[str, Any]) -> Any:
    """The source as one Arrow table in tsfs's storage layout, zero-copy where possible."""
    import numpy as np
    import pyarrow as pa

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


def decode(t: Any, s: Spec) -> dict[str, Any]:
    """Arrow table / record batch in tsfs layout -> numpy (the reference decode)."""
    import numpy as np

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


def cut(batch: dict[str, Any], rows: int) -> Iterator[dict[str, Any]]:
    """``batch`` (numpy columns, Ragged token rows) as views of ``rows`` rows each."""
    n = len(next(iter(batch.values()))) if batch else 0
    for a in range(0, n, rows):
        b = min(n, a + rows)
        yield {k: Ragged(v.flat, v.offsets[a:b + 1]) if isinstance(v, Ragged) else v[a:b] for k, v in batch.items()}


def _whole_or_cut(batch: dict[str, Any], rows: int | None) -> Iterator[dict[str, Any]]:
    return iter([batch]) if rows is None else cut(batch, rows)


def row_groups(files: list[str], s: Spec, columns: list[str] | None = None, rows: int | None = None,
               reopen: bool = False) -> Callable[[], Iterator[dict[str, Any]]]:
    """The reference read, as a function that makes one pass: every row group of every file,
    memory-mapped without pre-buffering, decoded (:func:`decode`), cut into ``rows``-row views
    where given. The files are opened once, as tsfs keeps its own open across passes, or every
    pass with ``reopen``."""
    import pyarrow.parquet as pq

    def open_(path: str) -> Any:
        return pq.ParquetFile(path, memory_map=True, pre_buffer=False)

    kept = None if reopen else [open_(f) for f in files]

    def batches() -> Iterator[dict[str, Any]]:
        for pf in map(open_, files) if kept is None else kept:
            for g in range(pf.num_row_groups):
                yield from _whole_or_cut(decode(pf.read_row_group(g, columns=columns), s), rows)

    return batches


def filtered(files: list[str], s: Spec, k: int, rows: int | None = None) -> Iterator[dict[str, Any]]:
    """One pass of ``pyarrow.dataset`` over ``files`` with the filter ``id < k`` (row-group
    statistics pruning), decoded, cut into ``rows``-row views where given."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    for b in pads.dataset(files, format="parquet").to_batches(filter=pc.field("id") < k):
        if b.num_rows:
            yield from _whole_or_cut(decode(b, s), rows)


def reader(name: str, s: Spec, ctx: dict[str, Any], measure: str) -> tuple[Callable[[int], PassOut], dict[str, Any]]:
    import pyarrow.dataset as pads

    keys = {c: c for c in s.names}
    files = ctx["tsfs_files"]
    if measure == "shuffle":
        raise Skip("raw pyarrow has no shuffle; shuffled reads are compared with its sequential read")
    if name == "pyarrow-rg" and measure not in ("seq", "project"):
        raise Skip("shown for the sequential read and the projection only")
    if measure in ("seq", "project"):
        cols = ["label"] if measure == "project" else None
        batches = row_groups(files, s, cols, None if name == "pyarrow-rg" else BATCH)

        def run(epoch: int) -> PassOut:
            return consume(batches(), {"label": "label"} if cols else keys, None if cols else "id")
        return run, {}
    if measure == "filter":
        def run(epoch: int) -> PassOut:
            return consume(filtered(files, s, s.filter_k, BATCH), keys, "id")
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
