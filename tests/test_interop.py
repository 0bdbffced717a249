"""Shard files are plain Parquet: pyarrow, pandas and DuckDB read them without tensorstore_fs.

Checked: row counts and scalar values (every scalar dtype, with and without nulls), strings and
bytes, fixed-shape tensor bytes (``np.frombuffer`` over the ``fixed_size_binary`` column),
variable-shape payloads with their ``__shape__<name>`` column, and the tensor schema JSON kept in
each file's key-value metadata under ``tensorstore_fs.schema``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.schema import DTYPES

duckdb = pytest.importorskip("duckdb")
pd = pytest.importorskip("pandas")

N = 257
NUMERIC = [d for d in DTYPES if d not in ("string", "bytes")]
SCHEMA_KEY = b"tensorstore_fs.schema"


def _values(rng: np.random.Generator, dtype: str, n: int) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(n) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        out = rng.integers(info.min, info.max, size=n, dtype=dt, endpoint=True)
        out[:2] = [info.min, info.max]
        return out
    out = rng.normal(0, 100, size=n).astype(dt)
    out[:3] = [np.nan, np.inf, -0.0]
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A multi-shard dataset holding every scalar dtype (plain and nullable), text, tensors."""
    rng = np.random.default_rng(2024)
    fields = [tsfs.Field("row", "int64")]
    data: dict = {"row": np.arange(N, dtype=np.int64)}
    expected: dict = {"row": (np.arange(N, dtype=np.int64), np.ones(N, bool))}
    for dtype in NUMERIC:
        vals = _values(rng, dtype, N)
        fields.append(tsfs.Field(f"{dtype}_", dtype))
        data[f"{dtype}_"] = vals
        expected[f"{dtype}_"] = (vals, np.ones(N, bool))
        valid = rng.random(N) >= 0.25
        vals_n = _values(rng, dtype, N)
        fields.append(tsfs.Field(f"{dtype}_n", dtype, nullable=True))
        data[f"{dtype}_n"] = [vals_n[i] if valid[i] else None for i in range(N)]
        expected[f"{dtype}_n"] = (vals_n, valid)
    s_valid = rng.random(N) >= 0.2
    strings = [f"s{i}-é中" if s_valid[i] else None for i in range(N)]
    blobs = [rng.integers(0, 256, size=i % 7, dtype=np.uint8).tobytes() for i in range(N)]
    fields += [tsfs.Field("s", "string", nullable=True), tsfs.Field("y", "bytes")]
    data.update(s=strings, y=blobs)
    img = rng.normal(size=(N, 3, 4, 2)).astype(np.float32)
    img[5, 0, 0, 0] = np.nan
    big = (rng.integers(0, 2**16, size=(N, 5)).astype(np.uint16))
    var = [rng.integers(-100, 100, size=(i % 4, 2)).astype(np.int32) if i % 9 else None for i in range(N)]
    fields += [tsfs.Field("img", "float32", (3, 4, 2)), tsfs.Field("u16v", "uint16", (5,), nullable=True),
               tsfs.Field("var", "int32", (None, 2), nullable=True)]
    big_valid = np.arange(N) % 11 != 3
    data.update(img=img, u16v=[big[i] if big_valid[i] else None for i in range(N)], var=var)
    schema = tsfs.Schema(fields, metadata={"source": "interop-test"})
    url = str(tmp_path_factory.mktemp("interop") / "ds")
    ds = tsfs.write_dataset(url, data, schema, row_group_bytes=4096, shard_bytes=16384)
    assert len(ds.shards) >= 3
    assert any(len(s.row_groups) > 1 for s in ds.shards)
    return ds, expected, {"s": strings, "y": blobs, "img": img, "u16v": (big, big_valid), "var": var}


def _plain(ds) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in ds.files])


def _same(a, b) -> bool:
    """Scalar equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ------------------------------------------------------------------------------------------------
# pyarrow
# ------------------------------------------------------------------------------------------------

def test_pyarrow_reads_row_counts_and_scalars(written):
    ds, expected, _ = written
    table = _plain(ds)
    assert table.num_rows == N == ds.num_rows
    for f, shard in zip(ds.files, ds.shards):
        md = pq.read_metadata(f)
        assert md.num_rows == shard.rows
        assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [g.rows for g in shard.row_groups]
    for name, (vals, valid) in expected.items():
        col = table.column(name)
        assert col.type == pa.from_numpy_dtype(np.dtype(vals.dtype)) or (vals.dtype == np.float16 and col.type == pa.float16())
        assert np.array_equal(col.is_valid().to_numpy(zero_copy_only=False), valid), name
        got = col.drop_null().to_numpy(zero_copy_only=False)
        assert got.dtype == vals.dtype, name
        assert np.array_equal(got, vals[valid], equal_nan=vals.dtype.kind == "f"), name
        if vals.dtype.kind == "f":
            assert np.array_equal(np.signbit(got), np.signbit(vals[valid])), name


def test_pyarrow_reads_text_columns(written):
    ds, _, raw = written
    table = _plain(ds)
    assert table.column("s").type == pa.string() and table.column("y").type == pa.binary()
    assert table.column("s").to_pylist() == raw["s"]
    assert table.column("y").to_pylist() == raw["y"]


def test_fixed_shape_tensor_bytes_via_np_frombuffer(written):
    ds, _, raw = written
    img = raw["img"]
    rows = []
    for f in ds.files:
        col = pq.read_table(f, columns=["img"]).column("img")
        assert col.type == pa.binary(3 * 4 * 2 * 4)
        for chunk in col.chunks:
            buf = chunk.buffers()[1]
            width = chunk.type.byte_width
            rows.append(np.frombuffer(buf, dtype="<f4", count=len(chunk) * width // 4,
                                      offset=chunk.offset * width).reshape(-1, 3, 4, 2))
    got = np.concatenate(rows)
    assert got.tobytes() == img.astype("<f4").tobytes()  # bit for bit, NaN included
    # the same through to_pylist (one bytes object per row)
    table = _plain(ds)
    assert [bytes(b) for b in table.column("img").to_pylist()] == [img[i].astype("<f4").tobytes() for i in range(N)]
    # a nullable fixed tensor: null rows are Parquet nulls, the rest little-endian bytes
    big, big_valid = raw["u16v"]
    col = table.column("u16v")
    assert np.array_equal(col.is_valid().to_numpy(zero_copy_only=False), big_valid)
    for i, b in enumerate(col.to_pylist()):
        if big_valid[i]:
            assert np.array_equal(np.frombuffer(b, dtype="<u2"), big[i])


def test_variable_shape_tensor_payload_and_shape_column(written):
    ds, _, raw = written
    table = _plain(ds)
    assert table.column("var").type == pa.large_binary()
    assert table.column("__shape__var").type.list_size == 2
    for i, (payload, shape) in enumerate(zip(table.column("var").to_pylist(), table.column("__shape__var").to_pylist())):
        want = raw["var"][i]
        if want is None:
            assert payload is None
            continue
        assert tuple(shape) == want.shape
        assert np.array_equal(np.frombuffer(payload, dtype="<i4").reshape(shape), want)


def test_schema_json_in_every_file_key_value_metadata(written):
    ds, _, _ = written
    for f in ds.files:
        kv = pq.read_metadata(f).metadata
        assert SCHEMA_KEY in kv
        parsed = tsfs.Schema.from_json(kv[SCHEMA_KEY])
        assert parsed == ds.schema
        assert parsed.metadata == {"source": "interop-test"}
        assert json.loads(kv[SCHEMA_KEY])["format_version"] == 1
        # the same key survives into the Arrow schema pyarrow reconstructs
        assert tsfs.Schema.from_json(pq.read_schema(f).metadata[SCHEMA_KEY]) == ds.schema


def test_parquet_statistics_agree_with_manifest(written):
    ds, _, _ = written
    for f, shard in zip(ds.files, ds.shards):
        md = pq.read_metadata(f)
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        for gi, g in enumerate(shard.row_groups):
            for name in ("row", "int64_", "uint8_n", "int16_"):
                st = md.row_group(gi).column(names.index(name)).statistics
                assert st is not None and st.null_count == g.stats[name]["nulls"]
                if st.null_count == g.rows:  # an all-null row group has no bounds in either
                    assert not st.has_min_max and "min" not in g.stats[name] and "max" not in g.stats[name]
                    continue
                assert st.has_min_max
                assert (st.min, st.max) == (g.stats[name]["min"], g.stats[name]["max"])


# ------------------------------------------------------------------------------------------------
# pandas
# ------------------------------------------------------------------------------------------------

def test_pandas_read_parquet(written):
    ds, expected, raw = written
    df = pd.concat([pd.read_parquet(f) for f in ds.files], ignore_index=True)
    assert len(df) == N
    assert df["row"].tolist() == list(range(N))
    for dtype in NUMERIC:
        vals, _ = expected[f"{dtype}_"]
        col = df[f"{dtype}_"]
        assert col.dtype == vals.dtype, dtype
        assert np.array_equal(col.to_numpy(), vals, equal_nan=vals.dtype.kind == "f"), dtype
    assert [None if (v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))) else v
            for v in df["s"].tolist()] == raw["s"]
    assert df["y"].tolist() == raw["y"]
    assert [bytes(b) for b in df["img"]] == [raw["img"][i].tobytes() for i in range(N)]


def test_pandas_read_parquet_nullable_columns(written):
    ds, expected, _ = written
    df = pd.concat([pd.read_parquet(f, dtype_backend="numpy_nullable") for f in ds.files], ignore_index=True)
    assert len(df) == N
    for dtype in NUMERIC:
        if dtype == "float16":
            continue  # pandas has no nullable float16 dtype
        vals, valid = expected[f"{dtype}_n"]
        col = df[f"{dtype}_n"]
        if vals.dtype.kind == "f":  # pandas' nullable Float dtypes turn NaN into <NA>
            valid = valid & ~np.isnan(vals)
        assert np.array_equal(~col.isna().to_numpy(), valid), dtype
        got = col[valid].to_numpy(dtype=vals.dtype)
        assert np.array_equal(got, vals[valid], equal_nan=vals.dtype.kind == "f"), dtype


# ------------------------------------------------------------------------------------------------
# DuckDB
# ------------------------------------------------------------------------------------------------

@pytest.fixture()
def con():
    c = duckdb.connect()
    yield c
    c.close()


def test_duckdb_row_count_and_aggregates(written, con):
    ds, expected, _ = written
    files = ds.files
    count, total, nulls, min_i8, max_u64 = con.sql(
        f"select count(*), sum(row), count(*) - count(int32_n), min(int8_), max(uint64_) "
        f"from read_parquet({files!r})").fetchall()[0]
    assert count == N
    assert total == N * (N - 1) // 2
    assert nulls == int((~expected["int32_n"][1]).sum())
    assert min_i8 == int(expected["int8_"][0].min())
    assert max_u64 == int(expected["uint64_"][0].max())
    per_file = con.sql(f"select filename, count(*) from read_parquet({files!r}, filename=true) group by filename").fetchall()
    assert dict(per_file) == {f: s.rows for f, s in zip(files, ds.shards)}


@pytest.mark.parametrize("dtype", NUMERIC)
def test_duckdb_scalar_values(written, con, dtype):
    ds, expected, _ = written
    rows = con.sql(f'select "{dtype}_", "{dtype}_n" from read_parquet({ds.files!r}) order by row').fetchall()
    assert len(rows) == N
    vals, _ = expected[f"{dtype}_"]
    vals_n, valid = expected[f"{dtype}_n"]
    for i, (a, b) in enumerate(rows):
        assert _same(a, vals[i].item()), (dtype, i, a, vals[i])
        if valid[i]:
            assert _same(b, vals_n[i].item()), (dtype, i, b, vals_n[i])
        else:
            assert b is None


def test_duckdb_text_and_tensor_bytes(written, con):
    ds, _, raw = written
    rows = con.sql(f"select s, y, img, var, __shape__var from read_parquet({ds.files!r}) order by row").fetchall()
    assert [r[0] for r in rows] == raw["s"]
    assert [r[1] for r in rows] == raw["y"]
    img = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(N, 3, 4, 2)
    assert img.tobytes() == raw["img"].tobytes()
    for i, (_, _, _, payload, shape) in enumerate(rows):
        want = raw["var"][i]
        if want is None:
            assert payload is None
        else:
            assert tuple(shape) == want.shape and payload == want.astype("<i4").tobytes()


def test_duckdb_sees_the_schema_metadata(written, con):
    ds, _, _ = written
    rows = con.sql(f"select file_name, value from parquet_kv_metadata({ds.files!r}) "
                   f"where key = '{SCHEMA_KEY.decode()}'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(ds.files)
    for _, value in rows:
        assert tsfs.Schema.from_json(value) == ds.schema


def test_duckdb_filter_agrees_with_tsfs_filter(written, con):
    import pyarrow.compute as pc

    ds, _, _ = written
    want = [r[0] for r in con.sql(
        f"select row from read_parquet({ds.files!r}) where int16_ > 0 and (s is null or uint8_n < 100) order by row").fetchall()]
    got = [int(x) for b in ds.to_batches(filter=(pc.field("int16_") > 0) & (pc.field("s").is_null() | (pc.field("uint8_n") < 100)),
                                          columns=["row"]) for x in b["row"]]
    assert got == want
