"""The vectorised decode paths give exactly what the simple per-row / pyarrow reads give."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.columns import normalize_batch
from tensorstore_fs.encoding import arrow_schema, decode_column, encode_batch, pad_variable, shape_column, variable_values
from tensorstore_fs.errors import CorruptDatasetError
from tensorstore_fs.parquet.batches import read_batches


# ------------------------------------------------------------------------------------------------
# read_batches against a plain pyarrow read
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multi_rg(tmp_path_factory):
    path = tmp_path_factory.mktemp("rbx") / "x.parquet"
    n = 7000
    rng = np.random.default_rng(3)
    blobs = [rng.bytes(int(k)) for k in rng.integers(0, 40, n)]
    table = pa.table({"a": np.arange(n), "f": rng.random(n).astype(np.float32), "b": pa.array(blobs, pa.large_binary())})
    pq.write_table(table, str(path), row_group_size=1013)
    return pq.ParquetFile(str(path)), table


def _check(out, sizes, then, expected):
    total = expected.num_rows
    want, left = [], total
    for s in list(sizes) + [then] * (total + 1):
        if left <= 0:
            break
        want.append(min(max(1, s), left))
        left -= want[-1]
    assert [b.num_rows for b in out] == want
    got = pa.Table.from_batches(out, schema=out[0].schema) if out else None
    assert got is not None and got.equals(expected.select(got.column_names))


@pytest.mark.parametrize("sizes,then", [
    ([], 1), ([], 256), ([1013], 1013), ([1012], 1014), ([3], 5000), ([], 10**9), ([7000], 1), ([500, 2000, 1], 333),
])
def test_read_batches_matches_pyarrow(multi_rg, sizes, then):
    pf, table = multi_rg
    rgs = list(range(pf.metadata.num_row_groups))
    _check(list(read_batches(pf, rgs, ["a", "f", "b"], sizes, then)), sizes, then, table)


def test_read_batches_random_plans_and_subsets(multi_rg):
    pf, table = multi_rg
    rng = np.random.default_rng(5)
    starts = np.r_[0, np.cumsum([pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)])]
    for _ in range(30):
        rgs = sorted(rng.choice(pf.metadata.num_row_groups, rng.integers(1, 5), replace=False).tolist())
        expected = pa.concat_tables([table.slice(starts[g], starts[g + 1] - starts[g]) for g in rgs]).combine_chunks()
        sizes = [int(x) for x in rng.integers(1, 2500, rng.integers(0, 4))]
        then = int(rng.integers(1, 3000))
        cols = ["b", "a"] if rng.random() < 0.5 else ["f"]
        _check(list(read_batches(pf, rgs, cols, sizes, then)), sizes, then, expected)


def test_read_batches_partial_skip(multi_rg):
    """Skipping rows (a first read that is thrown away) then reading across row-group ends."""
    pf, table = multi_rg
    for skip in (1, 1012, 1013, 1500):
        it = read_batches(pf, list(range(pf.metadata.num_row_groups)), ["a"], [skip, 2000, 37], 1)
        assert next(it).num_rows == skip
        a, b = next(it), next(it)
        assert a.column(0).to_pylist() == list(range(skip, skip + 2000))
        assert b.column(0).to_pylist() == list(range(skip + 2000, skip + 2037))
        it.close()


@pytest.mark.parametrize("limit", [1, 600, None])
def test_read_batches_limit_hint_changes_nothing(multi_rg, limit):
    pf, table = multi_rg
    out = list(read_batches(pf, [0, 1], ["a", "b"], [1], 700, limit=limit))
    _check(out, [1], 700, table.slice(0, 2026))


def test_dataset_batches_across_row_groups_and_shards():
    n = 5000
    rng = np.random.default_rng(0)
    schema = tsfs.Schema([tsfs.Field("x", "float32"), tsfs.Field("t", "int16", (None,)), tsfs.Field("label", "int32")])
    data = {"x": rng.random(n, dtype=np.float32), "t": [np.arange(k, dtype=np.int16) for k in rng.integers(0, 20, n)],
            "label": np.arange(n, dtype=np.int32)}
    with _memory_url() as url:
        ds = tsfs.write_dataset(url, data, schema, row_group_bytes=4096, shard_bytes=30000)
        assert len(ds.row_groups) > 3
        for bs in (1, 7, 256, 1000, 10**6):
            batches = list(ds.to_batches(batch_size=bs))
            assert [len(b["label"]) for b in batches[:-1]] == [bs] * (len(batches) - 1)
            assert np.array_equal(np.concatenate([b["label"] for b in batches]), data["label"])
            assert np.array_equal(np.concatenate([b["x"] for b in batches]), data["x"])
            rows = [r for b in batches for r in b["t"]]
            assert all(np.array_equal(r, e) for r, e in zip(rows, data["t"]))
        assert ds.head(3)["label"].tolist() == [0, 1, 2]
        assert ds.to_table().column("label").to_numpy().tolist() == data["label"].tolist()


class _memory_url:
    _n = 0

    def __enter__(self) -> str:
        type(self)._n += 1
        return f"memory://decode-speed-{id(self)}-{self._n}"

    def __exit__(self, *exc) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# variable-shape decoding against the per-row reference
# ------------------------------------------------------------------------------------------------

def _reference_rows(arr, shapes, f):
    n = len(arr)
    offs = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = arr.buffers()[2]
    payload = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(0, np.uint8)
    shp = shapes.flatten().to_numpy(zero_copy_only=False).reshape(n, len(f.shape))
    out = []
    for i in range(n):
        if not arr[i].is_valid:
            out.append(None)
            continue
        out.append(payload[offs[i]:offs[i + 1]].view(f.numpy_dtype.newbyteorder("<")).reshape(tuple(shp[i])))
    return out


def _encoded(f, rows):
    schema = tsfs.Schema([f])
    cols, _ = normalize_batch({f.name: rows}, schema)
    return encode_batch(cols, schema, arrow_schema(schema))


def _random_rows(rng, f, n, nulls, longest=6):
    rows = []
    for _ in range(n):
        if nulls and rng.random() < 0.2:
            rows.append(None)
            continue
        shape = tuple(int(rng.integers(0, longest)) if d is None else d for d in f.shape)
        rows.append((rng.integers(-100, 100, shape)).astype(f.numpy_dtype))
    return rows


SHAPES = [(None,), (None, 3), (None, 2, 2), (None, None), (2, None)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["int32", "float16", "uint8", "float64", "bool"])
@pytest.mark.parametrize("nulls", [False, True])
@pytest.mark.parametrize("longest", [6, 300], ids=["short", "long"])  # padding by mask / row by row
def test_variable_rows_and_padding_match_reference(shape, dtype, nulls, longest):
    rng = np.random.default_rng(len(shape) * 7 + len(dtype) + nulls + longest)
    f = tsfs.Field("v", dtype, shape, nullable=nulls)
    rows = _random_rows(rng, f, 60, nulls, longest if len(shape) == 1 or shape[1] is not None else 20)
    rb = _encoded(f, rows)
    for start, length in [(0, 60), (5, 30), (59, 1), (10, 0)]:
        part = rb.slice(start, length)
        arr, shp = part.column("v"), part.column(shape_column("v"))
        ref = _reference_rows(arr, shp, f) if length else []
        got = variable_values(arr, shp, f)
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert (g is None) == (r is None)
            if g is not None:
                assert g.shape == r.shape and g.dtype == r.dtype and np.array_equal(g, r)
                assert g.flags.writeable == r.flags.writeable
        padded = decode_column(part, f, pad=True)
        ref_pad, ref_shapes = pad_variable(ref, f)
        assert padded["v"].dtype == ref_pad.dtype and padded["v"].shape == ref_pad.shape
        assert np.array_equal(padded["v"], ref_pad)
        assert padded["v__shape"].dtype == ref_shapes.dtype and np.array_equal(padded["v__shape"], ref_shapes)


def test_unaligned_offsets_fall_back_to_per_row_views():
    f = tsfs.Field("v", "int32", (None,))
    rows = [np.arange(3, dtype=np.int32), np.arange(2, dtype=np.int32) + 10]
    payload = b"\x00" + b"".join(r.tobytes() for r in rows)  # every row starts one byte in
    offs = np.array([1, 13, 21], dtype=np.int64)
    arr = pa.Array.from_buffers(pa.large_binary(), 2, [None, pa.py_buffer(offs), pa.py_buffer(payload)])
    shp = pa.FixedSizeListArray.from_arrays(pa.array([3, 2], pa.int32()), 1)
    got = variable_values(arr, shp, f)
    assert [g.tolist() for g in got] == [r.tolist() for r in rows]
    table = pa.table({"v": arr, shape_column("v"): shp})
    out = decode_column(table, f, pad=True)
    assert out["v"].tolist() == [[0, 1, 2], [10, 11, 0]] and out["v__shape"].tolist() == [[3], [2]]


@pytest.mark.parametrize("bad_row", [0, 3, 8])
def test_corrupt_shape_names_first_bad_row(bad_row):
    f = tsfs.Field("tok", "int32", (None,))
    rb = _encoded(f, [np.arange(4, dtype=np.int32)] * 10)
    shapes = np.full(10, 4, np.int32)
    shapes[bad_row] = 5
    shapes[-1] = 6
    shp = pa.FixedSizeListArray.from_arrays(pa.array(shapes, pa.int32()), 1)
    with pytest.raises(CorruptDatasetError, match=rf"field 'tok': row {bad_row} payload holds 16 bytes .* needs 5"):
        variable_values(rb.column("tok"), shp, f)
    table = pa.table({"tok": rb.column("tok"), shape_column("tok"): shp})
    with pytest.raises(CorruptDatasetError, match=rf"row {bad_row} "):
        decode_column(table, f, pad=True)
