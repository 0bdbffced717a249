"""HDF5 converter: tsfs -> HDF5 -> tsfs round trips, plain-h5py readability, import of foreign
files, compression and chunking, and bad inputs (nothing partial is ever left behind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorstore_fs as tsfs
from tensorstore_fs.converters import from_hdf5, to_hdf5
from tensorstore_fs.schema import DTYPES

h5py = pytest.importorskip("h5py")

NUMERIC = tuple(d for d in DTYPES if d not in ("string", "bytes"))
SMALL_GROUPS = dict(row_group_bytes=256, shard_bytes=2048)  # many row groups and shards
_CHARS = list("abcXYZ09 _-é中😀\n\t")  # no NUL: HDF5 strings cannot hold it (tested separately)


# ------------------------------------------------------------------------------------------------
# Data generation and comparison
# ------------------------------------------------------------------------------------------------

@st.composite
def field_st(draw, name: str) -> tsfs.Field:
    dtype = draw(st.sampled_from(tuple(DTYPES)))
    kind = "scalar" if dtype in ("string", "bytes") else draw(st.sampled_from(("scalar", "fixed", "variable")))
    dims = {"scalar": st.just([]),
            "fixed": st.lists(st.integers(1, 3), min_size=1, max_size=3),
            "variable": st.lists(st.one_of(st.none(), st.integers(1, 3)), min_size=1, max_size=3)}[kind]
    shape = draw(dims)
    if kind == "variable" and None not in shape:
        shape[0] = None
    return tsfs.Field(name, dtype, tuple(shape), nullable=draw(st.booleans()), description=draw(st.text(max_size=5)))


@st.composite
def schema_st(draw) -> tsfs.Schema:
    return tsfs.Schema([draw(field_st(f"f{i}")) for i in range(draw(st.integers(1, 4)))])


def rand_array(rng: np.random.Generator, dtype: str, shape: tuple) -> np.ndarray:
    """Random values of any bit pattern (NaN payloads, infinities, -0.0 included)."""
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    n = int(np.prod(shape, dtype=np.int64))
    return rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8).view(dt).reshape(shape)


def rand_rows(rng: np.random.Generator, f: tsfs.Field, n: int) -> list:
    """One field's rows as Python/numpy values, None for null rows."""
    valid = rng.random(n) > 0.3 if f.nullable else np.ones(n, bool)
    rows: list = []
    for ok in valid:
        if f.dtype == "string":
            v = "".join(rng.choice(_CHARS, size=int(rng.integers(0, 5))))
        elif f.dtype == "bytes":
            v = rng.integers(0, 256, size=int(rng.integers(0, 5)), dtype=np.uint8).tobytes()
        else:
            v = rand_array(rng, f.dtype, tuple(int(rng.integers(0, 4)) if d is None else d for d in f.shape))
        rows.append(v if ok else None)
    return rows


def as_column(f: tsfs.Field, rows: list):
    """Rows -> a column the writer accepts: dense (masked) arrays for fixed shapes, lists otherwise."""
    if f.is_variable or f.dtype in ("string", "bytes"):
        return rows
    valid = np.array([r is not None for r in rows], dtype=bool)
    dense = np.stack([r if r is not None else np.zeros(f.shape, f.numpy_dtype) for r in rows]) if rows \
        else np.zeros((0, *f.shape), f.numpy_dtype)
    if not f.nullable:
        return dense
    return np.ma.MaskedArray(dense, mask=np.broadcast_to((~valid).reshape((-1,) + (1,) * len(f.shape)), dense.shape))


def read_rows(ds: tsfs.Dataset) -> dict[str, list]:
    """Every field of ``ds`` as a list of per-row values (None for null rows)."""
    out: dict[str, list] = {n: [] for n in ds.schema.names}
    for batch in ds.to_batches(batch_size=5):
        for name, col in batch.items():
            if isinstance(col, np.ma.MaskedArray):
                mask = np.ma.getmaskarray(col).reshape(len(col), -1).all(axis=1) if len(col) else []
                out[name] += [None if m else v for m, v in zip(mask, col.data)]
            else:
                out[name] += list(col)
    return out


def assert_rows_equal(got: list, want: list, what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} rows, want {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None or isinstance(w, (str, bytes)):
            assert g == w and type(g) is type(w), f"{what} row {i}: {g!r} != {w!r}"
            continue
        g, w = np.asarray(g), np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{what} row {i}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"
        assert g.tobytes() == w.tobytes(), f"{what} row {i}: values differ"  # floats bit for bit


def write(tmp_path, schema: tsfs.Schema, data: dict, **kw) -> tsfs.Dataset:
    return tsfs.write_dataset(str(tmp_path / f"ds-{uuid.uuid4().hex[:8]}"), data, schema, **{**SMALL_GROUPS, **kw})


def sample_dataset(tmp_path, n: int = 40) -> tsfs.Dataset:
    """id, image (uint8 3x8x8), embedding (float32 16), tokens (int32 variable, nullable), text."""
    rng = np.random.default_rng(0)
    schema = tsfs.Schema([
        tsfs.Field("id", "int64", description="row id"),
        tsfs.Field("image", "uint8", (3, 8, 8)),
        tsfs.Field("embedding", "float32", (16,)),
        tsfs.Field("tokens", "int32", (None,), nullable=True),
        tsfs.Field("caption", "string", nullable=True),
        tsfs.Field("blob", "bytes"),
    ])
    data = {
        "id": np.arange(n, dtype=np.int64),
        "image": rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8),
        "embedding": rng.normal(size=(n, 16)).astype(np.float32),
        "tokens": [None if i % 4 == 3 else np.arange(i % 7, dtype=np.int32) * i for i in range(n)],
        "caption": [None if i % 5 == 0 else f"row {i} é中" for i in range(n)],
        "blob": [bytes([i % 256, 0, 255]) * (i % 3) for i in range(n)],
    }
    return write(tmp_path, schema, data)


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(schema=schema_st(), n=st.integers(0, 12), seed=st.integers(0, 2**32 - 1),
       compression=st.sampled_from([None, "gzip", "lzf"]), chunk_rows=st.one_of(st.none(), st.integers(1, 5)),
       batch=st.integers(1, 7))
def test_roundtrip_property(tmp_path, schema, n, seed, compression, chunk_rows, batch):
    rng = np.random.default_rng(seed)
    rows = {f.name: rand_rows(rng, f, n) for f in schema.fields}
    ds = write(tmp_path, schema, {f.name: as_column(f, rows[f.name]) for f in schema.fields})
    path = tmp_path / f"{uuid.uuid4().hex[:8]}.h5"
    to_hdf5(ds, path, compression=compression, chunk_rows=chunk_rows, batch_size=batch)

    with h5py.File(path, "r") as h5:
        assert h5.attrs["tsfs_rows"] == n
        for f in schema.fields:
            node = h5[f.name]
            assert (node.attrs["dtype"], json.loads(node.attrs["shape"])) == (f.dtype, list(f.shape))
            if not (f.is_variable or f.dtype in ("string", "bytes")):
                assert node.dtype == f.numpy_dtype and node.shape == (n, *f.shape)
                assert node.chunks[1:] == f.shape and (chunk_rows is None or node.chunks[0] == chunk_rows)
                assert node.compression == compression

    back = from_hdf5(path, str(tmp_path / f"back-{uuid.uuid4().hex[:8]}"), batch_rows=batch, **SMALL_GROUPS)
    assert back.schema == schema and len(back) == n
    got = read_rows(back)
    for f in schema.fields:
        assert_rows_equal(got[f.name], rows[f.name], f.name)


def test_export_columns_filter_and_predicate(tmp_path):
    ds = sample_dataset(tmp_path)
    want = read_rows(ds)
    path = tmp_path / "sel.h5"
    to_hdf5(ds.url, path, columns=["tokens", "id"], filter=pc.field("id") >= 25,
            predicate=tsfs.in_lambda(["id"], lambda i: i % 2 == 1), batch_size=3)
    keep = [i for i in range(40) if i >= 25 and i % 2 == 1]
    with h5py.File(path, "r") as h5:
        assert sorted(k for k in h5.keys()) == ["__valid__", "id", "tokens"]
        assert h5["id"][:].tolist() == keep and h5.attrs["tsfs_rows"] == len(keep)
    back = read_rows(from_hdf5(path, str(tmp_path / "back")))
    assert list(back) == ["tokens", "id"]
    assert_rows_equal(back["tokens"], [want["tokens"][i] for i in keep], "tokens")


@pytest.mark.parametrize("compression, opts", [("gzip", None), ("gzip", 9), ("lzf", None)],
                         ids=["gzip", "gzip9", "lzf"])
def test_compression(tmp_path, compression, opts):
    ds = sample_dataset(tmp_path)
    path = tmp_path / "c.h5"
    to_hdf5(ds, path, compression=compression, compression_opts=opts)
    with h5py.File(path, "r") as h5:
        for name in ("image", "tokens/values", "tokens/offsets", "caption", "__valid__/tokens"):
            assert h5[name].compression == compression
            if opts is not None:
                assert h5[name].compression_opts == opts
    back = from_hdf5(path, str(tmp_path / "back"))
    got, want = read_rows(back), read_rows(ds)
    for name in ds.schema.names:
        assert_rows_equal(got[name], want[name], name)


def test_default_chunks_are_whole_samples_of_about_1mib(tmp_path):
    n = 3000
    schema = tsfs.Schema([tsfs.Field("image", "uint8", (3, 64, 64)), tsfs.Field("emb", "float32", (256,)),
                          tsfs.Field("label", "int64")])
    data = {"image": np.zeros((n, 3, 64, 64), np.uint8), "emb": np.zeros((n, 256), np.float32),
            "label": np.arange(n)}
    ds = tsfs.write_dataset(str(tmp_path / "ds"), data, schema)
    to_hdf5(ds, tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert h5["image"].chunks == (64, 3, 64, 64)  # 768 KiB: largest power of two of rows <= 1 MiB
        assert h5["emb"].chunks == (1024, 256)
        assert h5["label"].chunks == (n,)  # never more rows than the dataset has
    to_hdf5(ds, tmp_path / "b.h5", chunk_rows=7)
    with h5py.File(tmp_path / "b.h5", "r") as h5:
        assert [h5[k].chunks for k in ("image", "emb", "label")] == [(7, 3, 64, 64), (7, 256), (7,)]


# ------------------------------------------------------------------------------------------------
# The layout is readable without this library
# ------------------------------------------------------------------------------------------------

PLAIN_READER = textwrap.dedent("""
    import json, sys
    import h5py, numpy as np
    with h5py.File(sys.argv[1], "r") as f:
        g = f["tokens"]
        i = int(sys.argv[2])
        a, b = g["offsets"][i], g["offsets"][i + 1]
        row = g["values"][a:b].reshape(g["shapes"][i])
        schema = json.loads(f.attrs["tsfs_schema"])
        out = {
            "layout": f.attrs["tsfs_layout"],
            "rows": int(f.attrs["tsfs_rows"]),
            "fields": [x["name"] for x in schema["fields"]],
            "image_sum": int(f["image"][:].astype(np.int64).sum()),
            "image_shape": list(f["image"].shape),
            "embedding_row1": f["embedding"][1].tolist(),
            "token_row": row.tolist(),
            "token_valid": f["__valid__/tokens"][:].tolist(),
            "caption": [s if ok else None for s, ok in zip(f["caption"].asstr()[:], f["__valid__/caption"][:])],
            "blob": [bytes(x).hex() for x in f["blob"][:]],
            "id_description": f["id"].attrs["description"],
        }
    assert "tensorstore_fs" not in sys.modules
    print(json.dumps(out))
""")


def test_plain_h5py_reads_export_without_tsfs(tmp_path):
    ds = sample_dataset(tmp_path)
    want = read_rows(ds)
    path = tmp_path / "plain.h5"
    to_hdf5(ds, path)
    proc = subprocess.run([sys.executable, "-c", PLAIN_READER, str(path), "6"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout)
    assert got["layout"] == "tsfs HDF5 layout 1" and got["rows"] == 40
    assert got["fields"] == ds.schema.names
    assert got["image_shape"] == [40, 3, 8, 8]
    assert got["image_sum"] == int(np.stack(want["image"]).astype(np.int64).sum())
    assert got["embedding_row1"] == want["embedding"][1].tolist()
    assert got["token_row"] == want["tokens"][6].tolist() and len(got["token_row"]) == 6
    assert got["token_valid"] == [t is not None for t in want["tokens"]]
    assert got["caption"] == want["caption"]
    assert got["blob"] == [b.hex() for b in want["blob"]]
    assert got["id_description"] == "row id"


# ------------------------------------------------------------------------------------------------
# Import of files written by other tools
# ------------------------------------------------------------------------------------------------

def make_plain_file(path, n: int = 23) -> dict:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    vals = {
        "train.image": img,
        "train.label": np.arange(n, dtype=np.int64) % 10,
        "train.score": rng.normal(size=n).astype(">f4"),  # big-endian on disk
        "flag": np.arange(n) % 3 == 0,
        "meta.name": [f"sample {i} é" for i in range(n)],
        "meta.raw": [b"r%d" % i for i in range(n)],
        "tokens": [np.arange(i % 5, dtype=np.int16) for i in range(n)],
    }
    with h5py.File(path, "w") as f:
        f.create_dataset("train/image", data=img, chunks=(4, 3, 8, 8), compression="gzip")
        f.create_dataset("train/label", data=vals["train.label"], compression="gzip", compression_opts=9)
        f["train/label"].attrs["description"] = "class id"
        f.create_dataset("train/score", data=vals["train.score"])
        f.create_dataset("flag", data=vals["flag"])
        f.create_dataset("meta/name", data=vals["meta.name"], dtype=h5py.string_dtype())
        f.create_dataset("meta/raw", data=np.array(vals["meta.raw"]))  # fixed-length ASCII -> bytes
        tok = f.create_dataset("tokens", (n,), dtype=h5py.vlen_dtype(np.int16))
        for i, t in enumerate(vals["tokens"]):
            tok[i] = t
    return vals


def test_import_plain_file(tmp_path):
    vals = make_plain_file(tmp_path / "x.h5")
    ds = from_hdf5(tmp_path / "x.h5", str(tmp_path / "ds"), batch_rows=5, **SMALL_GROUPS)
    s = ds.schema
    assert s.names == ["flag", "meta.name", "meta.raw", "tokens", "train.image", "train.label", "train.score"]
    assert [(f.dtype, f.shape) for f in s.fields] == [
        ("bool", ()), ("string", ()), ("bytes", ()), ("int16", (None,)), ("uint8", (3, 8, 8)),
        ("int64", ()), ("float32", ())]
    assert s["train.label"].description == "class id"
    got = read_rows(ds)
    for name, want in vals.items():
        want = [np.asarray(v, dtype=np.dtype(v.dtype).newbyteorder("=")) if isinstance(v, np.ndarray) else v
                for v in want]
        assert_rows_equal(got[name], want, name)


def test_import_selected_datasets_and_schema(tmp_path):
    make_plain_file(tmp_path / "x.h5")
    ds = from_hdf5(tmp_path / "x.h5", str(tmp_path / "a"), datasets=["/train", "tokens"])
    assert ds.schema.names == ["train.image", "train.label", "train.score", "tokens"]
    schema = tsfs.Schema([tsfs.Field("train.label", "int8", nullable=True, description="cast")])
    ds = from_hdf5(tmp_path / "x.h5", str(tmp_path / "b"), schema=schema)
    assert ds.schema == schema
    assert ds.head(23)["train.label"].tolist() == (np.arange(23) % 10).tolist()


def test_reimport_selects_fields_of_own_layout(tmp_path):
    ds = sample_dataset(tmp_path)
    to_hdf5(ds, tmp_path / "a.h5")
    back = from_hdf5(tmp_path / "a.h5", str(tmp_path / "b"), datasets=["/caption", "tokens"])
    assert back.schema == ds.schema.select(["caption", "tokens"])


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------

def test_ragged_lengths(tmp_path):
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f["a"] = np.zeros(10)
        f["g/b"] = np.zeros((7, 2))
    with pytest.raises(tsfs.SchemaError, match=r"r\.h5: datasets differ in length.*/a: 10, /g/b: 7"):
        from_hdf5(tmp_path / "r.h5", str(tmp_path / "ds"))
    assert from_hdf5(tmp_path / "r.h5", str(tmp_path / "ds"), datasets=["g/b"]).schema["g.b"].shape == (2,)


def test_missing_and_non_hdf5_file(tmp_path):
    with pytest.raises(tsfs.DatasetNotFoundError, match=r"nope\.h5: no such HDF5 file"):
        from_hdf5(tmp_path / "nope.h5", str(tmp_path / "ds"))
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(tsfs.CorruptDatasetError, match=r"text\.h5: not an HDF5 file"):
        from_hdf5(tmp_path / "text.h5", str(tmp_path / "ds"))
    with h5py.File(tmp_path / "ok.h5", "w") as f:
        f["a"] = np.zeros(3)
    with pytest.raises(tsfs.InvalidArgumentError, match=r"no HDF5 object 'b'; datasets are \['/a'\]"):
        from_hdf5(tmp_path / "ok.h5", str(tmp_path / "ds"), datasets=["b"])


def _complex(f):
    f["bad"] = np.zeros(3, np.complex64)


def _compound(f):
    f["bad"] = np.zeros(3, dtype=[("x", "i4"), ("y", "f8")])


def _refs(f):
    f["ok"] = np.zeros(3)
    f.create_dataset("bad", (3,), dtype=h5py.ref_dtype)


def _zero_d(f):
    f["bad"] = np.float64(1.5)


def _bad_name(f):
    f["a b"] = np.zeros(3)


def _vlen_2d(f):
    f.create_dataset("bad", (2, 2), dtype=h5py.vlen_dtype(np.int32))


@pytest.mark.parametrize("make, match", [
    (_complex, r"dataset '/bad' \(dtype complex64.*unsupported dtype"),
    (_compound, r"dataset '/bad' \(dtype compound .*unsupported dtype"),
    (_refs, r"dataset '/bad' \(dtype object reference"),
    (_zero_d, r"dataset '/bad' .* is 0-d"),
    (_bad_name, r"dataset '/a b' .*field name 'a b' is invalid"),
    (_vlen_2d, r"dataset '/bad' .*supported in 1-D datasets only"),
], ids=["complex", "compound", "reference", "0-d", "name", "vlen-2d"])
def test_unsupported_datasets(tmp_path, make, match):
    with h5py.File(tmp_path / "u.h5", "w") as f:
        make(f)
    with pytest.raises(tsfs.SchemaError, match=r"u\.h5: " + match):
        from_hdf5(tmp_path / "u.h5", str(tmp_path / "ds"))
    assert not (tmp_path / "ds").exists()


def test_unknown_layout_version(tmp_path):
    to_hdf5(sample_dataset(tmp_path), tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "a") as f:
        f.attrs["tsfs_layout_version"] = 99
    with pytest.raises(tsfs.UnsupportedFormatError, match="layout version 99"):
        from_hdf5(tmp_path / "a.h5", str(tmp_path / "ds"))


def test_existing_target(tmp_path):
    ds = sample_dataset(tmp_path)
    path = tmp_path / "a.h5"
    path.write_bytes(b"keep me")
    with pytest.raises(tsfs.DatasetExistsError, match="already exists; pass overwrite=True"):
        to_hdf5(ds, path)
    assert path.read_bytes() == b"keep me"
    to_hdf5(ds, path, overwrite=True)
    assert h5py.is_hdf5(path)
    with pytest.raises(tsfs.DatasetExistsError):
        from_hdf5(path, ds.url)  # the writer's mode="error" protects datasets too


@pytest.mark.parametrize("kwargs", [dict(compression="zstd"), dict(compression="lzf", compression_opts=4),
                                    dict(chunk_rows=0), dict(batch_size=-1), dict(columns=["nope"])],
                         ids=["codec", "opts", "chunk_rows", "batch_size", "columns"])
def test_bad_export_arguments(tmp_path, kwargs):
    with pytest.raises(tsfs.InvalidArgumentError):
        to_hdf5(sample_dataset(tmp_path), tmp_path / "a.h5", **kwargs)
    assert not (tmp_path / "a.h5").exists()


def _files(d) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_failure_mid_export_leaves_nothing(tmp_path, existing):
    ds = sample_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    path = out / "a.h5"
    if existing:
        path.write_bytes(b"old")
    calls = []

    def boom(ids):
        calls.append(len(ids))
        if len(calls) == 3:  # a later row group, after batches were written
            raise RuntimeError("disk on fire")
        return np.ones(len(ids), bool)

    with pytest.raises(RuntimeError, match="disk on fire"):
        to_hdf5(ds, path, predicate=tsfs.in_lambda(["id"], boom), batch_size=2, overwrite=existing)
    assert len(calls) == 3
    assert _files(out) == (["a.h5"] if existing else [])
    if existing:
        assert path.read_bytes() == b"old"


def test_nul_in_string_fails_cleanly(tmp_path):
    ds = write(tmp_path, tsfs.Schema([tsfs.Field("s", "string")]), {"s": ["ok"] * 30 + ["a\x00b"]})
    with pytest.raises(tsfs.SchemaError, match=r"field 's': row 30 holds a NUL character"):
        to_hdf5(ds, tmp_path / "a.h5", batch_size=4)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".h5" or ".tmp-" in p.name]


def test_failure_mid_import_commits_nothing(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["v"] = np.concatenate([np.arange(100), [1000]])  # the last row does not fit int8
    url = tmp_path / "ds"
    schema = tsfs.Schema([tsfs.Field("v", "int8")])
    with pytest.raises(tsfs.SchemaError, match="value 1000 does not fit int8"):
        from_hdf5(tmp_path / "x.h5", str(url), schema=schema, batch_rows=10, row_group_bytes=16, shard_bytes=32)
    with pytest.raises(tsfs.DatasetNotFoundError):
        tsfs.open_dataset(str(url))
    assert not [p for p in _files(url) if p.endswith(".parquet")] if url.exists() else True
    assert os.path.exists(tmp_path / "x.h5")


def test_export_target_must_be_a_local_file(tmp_path):
    ds = sample_dataset(tmp_path)
    with pytest.raises(tsfs.InvalidArgumentError, match="local files only"):
        to_hdf5(ds, "s3://bucket/a.h5")
    with pytest.raises(tsfs.InvalidArgumentError, match="does not exist"):
        to_hdf5(ds, tmp_path / "no" / "a.h5")
    with pytest.raises(tsfs.DatasetExistsError, match="is a directory"):
        to_hdf5(ds, tmp_path, overwrite=True)
    assert to_hdf5(ds, f"file://{tmp_path / 'a.h5'}") == str(tmp_path / "a.h5")
