"""TFRecord converter: files we write read by TensorFlow, files TensorFlow writes read by us, round
trips, corruption, refusals, and writing with TensorFlow not importable."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorstore_fs as ts
from tensorstore_fs.converters._example import Feature, decode_column, parse_example, varint
from tensorstore_fs.converters._tfrecord_io import frame, is_gzip
from tensorstore_fs.converters.tfrecord import TFRecordSpec, from_tfrecord, make_parse_fn, to_tfrecord
from tensorstore_fs.errors import (
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    SchemaError,
    UnsupportedFormatError,
)
from tensorstore_fs.schema import Field, Schema

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")  # imported once for the module (~4 s)

MIXED = Schema([
    Field("image", "uint8", (3, 4, 5)),
    Field("emb", "float32", (6,)),
    Field("tokens", "int32", (None,)),
    Field("boxes", "float64", (None, 4)),
    Field("mask", "bool", (2, 3)),
    Field("big", "uint64", (2,)),
    Field("id", "int64"),
    Field("label", "int32"),
    Field("flag", "bool"),
    Field("half", "float16"),
    Field("exact", "float64"),
    Field("u64", "uint64"),
    Field("name", "string"),
    Field("blob", "bytes"),
    Field("maybe_text", "string", nullable=True),
    Field("maybe_vec", "float32", (3,), nullable=True),
    Field("maybe_int", "int16", nullable=True),
    Field("maybe_seq", "uint16", (None,), nullable=True),
])


def _mixed(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    null = np.arange(n) % 3 == 1
    return {
        "image": rng.integers(0, 256, (n, 3, 4, 5), dtype=np.uint8),
        "emb": rng.standard_normal((n, 6)).astype(np.float32),
        "tokens": [rng.integers(-9, 9, i % 4).astype(np.int32) for i in range(n)],
        "boxes": [rng.random((i % 3, 4)) for i in range(n)],
        "mask": rng.random((n, 2, 3)) > 0.5,
        "big": rng.integers(0, 2**63, (n, 2), dtype=np.uint64) * np.uint64(2),
        "id": np.arange(n, dtype=np.int64) * 1_000_003 - 7,
        "label": rng.integers(-5, 10, n).astype(np.int32),
        "flag": rng.random(n) > 0.5,
        "half": rng.standard_normal(n).astype(np.float16),
        "exact": rng.standard_normal(n) / 3,
        "u64": rng.integers(0, 2**63 - 1, n, dtype=np.uint64),
        "name": [f"row {i} ✓" for i in range(n)],
        "blob": [bytes([i % 256]) * (i % 5) for i in range(n)],
        "maybe_text": [None if z else f"t{i}" for i, z in enumerate(null)],
        "maybe_vec": np.ma.MaskedArray(rng.random((n, 3), dtype=np.float32), mask=np.repeat(null[:, None], 3, 1)),
        "maybe_int": np.ma.MaskedArray(rng.integers(-300, 300, n).astype(np.int16), mask=null),
        "maybe_seq": [None if z else np.arange(i % 3, dtype=np.uint16) for i, z in enumerate(null)],
    }


def _rows(values) -> list:
    """A column as a list of per-row values, None for nulls."""
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values).reshape(len(values), -1).all(axis=1)
        return [None if m else v for m, v in zip(mask, np.ma.getdata(values))]
    return list(values)


def _read_all(ds) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in ds.schema.names}
    for batch in ds.to_batches():
        for name in out:
            out[name] += _rows(batch[name])
    return out


def _assert_rows_equal(got: list, want: list, name: str) -> None:
    assert len(got) == len(want), name
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None or g is None:
            assert g is None and w is None, (name, i, g, w)
        elif isinstance(w, (str, bytes)):
            assert g == w, (name, i)
        else:
            g, w = np.asarray(g), np.asarray(w)
            assert g.dtype == w.dtype and g.shape == w.shape, (name, i, g.dtype, w.dtype, g.shape, w.shape)
            np.testing.assert_array_equal(g, w, err_msg=f"{name} row {i}")


@pytest.fixture(scope="module")
def mixed_ds(tmp_path_factory):
    return ts.write_dataset(str(tmp_path_factory.mktemp("mixed") / "ds"), _mixed(11), schema=MIXED)


# -- TensorFlow reads what we write ----------------------------------------------------------------

def _expected_tf(name: str, value):
    """What TensorFlow should give for one original value (nulls read as zeros / empty)."""
    f = MIXED[name]
    if value is None:
        return b"" if f.dtype in ("string", "bytes") else np.zeros([d or 0 for d in f.shape], f.numpy_dtype)
    if isinstance(value, str):
        return value.encode()
    return value


@pytest.mark.parametrize("compression,shards", [(None, 1), ("GZIP", 1), (None, 3), ("GZIP", 4)],
                         ids=["plain", "gzip", "plain-3-shards", "gzip-4-shards"])
def test_tf_data_reads_our_files_with_generated_parse_fn(mixed_ds, tmp_path, compression, shards):
    exp = to_tfrecord(mixed_ds, tmp_path / "out", shards=shards, compression=compression)
    assert exp.num_rows == 11 and len(exp.paths) == shards
    suffix = ".tfrecord.gz" if compression else ".tfrecord"
    assert [Path(p).name for p in exp.paths] == [f"part-{i:05d}-of-{shards:05d}{suffix}" for i in range(shards)]
    files = tf.data.TFRecordDataset(list(exp.paths), compression_type=exp.compression_type)
    ds = files.map(make_parse_fn(exp.spec_path))
    spec = ds.element_spec
    for f in MIXED.fields:
        assert spec[f.name].dtype == tf.as_dtype(f.numpy_dtype if f.dtype not in ("string", "bytes") else tf.string)
        assert spec[f.name].shape.as_list() == list(f.shape), f.name
        assert (f"{f.name}.valid" in spec) == f.nullable
    data = _mixed(11)
    elements = list(ds.as_numpy_iterator())
    assert len(elements) == 11
    for name in MIXED.names:
        want = [_expected_tf(name, v) for v in _rows(data[name])]
        _assert_rows_equal([e[name] for e in elements], want, name)
        if MIXED[name].nullable:
            assert [bool(e[f"{name}.valid"]) for e in elements] == [v is not None for v in _rows(data[name])]


def _plain_tf_spec(features_json: dict) -> dict:
    """A parse_single_example spec built from features.json alone, as a user would."""
    spec = {}
    for f in features_json["features"]:
        dtype = tf.as_dtype(f["tf_dtype"])
        if f["nullable"]:
            spec[f["key"]] = tf.io.VarLenFeature(dtype)
            continue
        spec[f["key"]] = tf.io.FixedLenFeature([] if f["encoding"] == "raw" else f["shape"], dtype)
        if f["shape_key"]:
            spec[f["shape_key"]] = tf.io.FixedLenFeature([len(f["shape"])], tf.int64)
    return spec


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_plain_parse_single_example_with_spec_from_features_json(mixed_ds, tmp_path, compression):
    exp = to_tfrecord(mixed_ds, tmp_path / "x.tfrecord", compression=compression)
    assert exp.spec_path.endswith("x.features.json")
    meta = json.loads(Path(exp.spec_path).read_text())
    assert meta["format"] == "tsfs TFRecord layout 1" and meta["num_rows"] == 11
    assert Schema.from_dict(meta["schema"]) == MIXED
    spec = _plain_tf_spec(meta)
    data = _mixed(11)
    raw_types = {"bool": tf.uint8, "uint64": tf.int64}
    for i, record in enumerate(tf.data.TFRecordDataset(exp.paths, compression_type=compression or "")):
        ex = tf.io.parse_single_example(record, spec)
        for f in meta["features"]:
            name, want = f["name"], _rows(data[f["name"]])[i]
            if f["nullable"]:
                assert (ex[name].values.shape[0] > 0) == (want is not None)
                continue
            got = ex[name]
            if f["encoding"] == "raw":
                got = tf.io.decode_raw(got, raw_types.get(f["dtype"], tf.as_dtype(f["stored_dtype"])))
                got = tf.reshape(got, ex[f["shape_key"]] if f["shape_key"] else f["shape"])
            got = got.numpy()
            if f["dtype"] == "string":
                assert got.decode() == want
            elif f["dtype"] == "bytes":
                assert got == want
            else:
                got = got.view(np.uint64) if f["dtype"] == "uint64" else got.astype(f["dtype"])
                np.testing.assert_array_equal(got, np.asarray(want), err_msg=name)


def test_parse_fn_accepts_export_dict_and_json(mixed_ds, tmp_path):
    exp = to_tfrecord(mixed_ds, tmp_path / "a.tfrecord")
    for spec in (exp, exp.spec, exp.spec.to_dict(), exp.spec.to_json()):
        first = next(iter(tf.data.TFRecordDataset(exp.paths).map(make_parse_fn(spec))))
        assert int(first["id"]) == -7
    with pytest.raises(UnsupportedFormatError, match="layout_version 2 is not supported"):
        make_parse_fn({**exp.spec.to_dict(), "layout_version": 2})


# -- we read what TensorFlow writes ----------------------------------------------------------------

def _tf_file(path: Path, compression: str | None, n: int = 7) -> None:
    options = tf.io.TFRecordOptions(compression_type=compression or "")
    rng = np.random.default_rng(3)
    with tf.io.TFRecordWriter(str(path), options) as w:
        for i in range(n):
            image = rng.integers(0, 256, (4, 5), dtype=np.uint8).tobytes()
            feats = {
                "image/raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i - 3])),
                "vec": tf.train.Feature(float_list=tf.train.FloatList(value=[i, i + 0.5, -i, 2.0 ** -i])),
                "tokens": tf.train.Feature(int64_list=tf.train.Int64List(value=list(range(i % 3)))),
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"héllo {i}".encode()])),
            }
            if i % 2 == 0:
                feats["sometimes"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[2**40 + i]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_import_tf_written_files_inferring_schema(tmp_path, compression):
    _tf_file(tmp_path / "in.tfrecord", compression)
    ds = from_tfrecord(tmp_path / "in.tfrecord", str(tmp_path / "ds"))
    s = ds.schema
    assert [(f.name, f.dtype, f.shape, f.nullable) for f in s] == [
        ("image_raw", "bytes", (), False), ("label", "int64", (), False), ("sometimes", "int64", (), True),
        ("text", "bytes", (), False), ("tokens", "int64", (None,), False), ("vec", "float32", (4,), False)]
    got = _read_all(ds)
    assert got["label"] == list(range(-3, 4))
    np.testing.assert_array_equal(np.stack(got["vec"])[:, 1], np.arange(7) + 0.5)
    assert [len(t) for t in got["tokens"]] == [i % 3 for i in range(7)]
    assert got["text"][1] == "héllo 1".encode()
    assert got["sometimes"] == [2**40 + i if i % 2 == 0 else None for i in range(7)]


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_import_tf_written_files_with_feature_spec(tmp_path, compression):
    _tf_file(tmp_path / "in.tfrecord", compression)
    features = {
        "image/raw": ("bytes", "uint8", (4, 5)),
        "label": ("int64", "int32"),
        "vec": {"kind": "float", "dtype": "float64", "shape": [4]},
        "text": ("bytes", "string"),
        "tokens": tf.io.VarLenFeature(tf.int64),
        "sometimes": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    }
    ds = from_tfrecord(str(tmp_path / "in.tfrecord"), str(tmp_path / "ds"), features=features, compression=compression)
    assert [(f.name, f.dtype, f.shape) for f in ds.schema] == [
        ("image_raw", "uint8", (4, 5)), ("label", "int32", ()), ("vec", "float64", (4,)), ("text", "string", ()),
        ("tokens", "int64", (None,)), ("sometimes", "int64", ())]
    got = _read_all(ds)
    rng = np.random.default_rng(3)
    assert got["image_raw"][0].dtype == np.uint8
    np.testing.assert_array_equal(got["image_raw"][0], rng.integers(0, 256, (4, 5), dtype=np.uint8))
    assert got["text"][2] == "héllo 2" and got["label"][6] == 3
    assert got["sometimes"][1] is None


def test_import_rejects_records_that_do_not_match_the_spec(tmp_path):
    _tf_file(tmp_path / "in.tfrecord", None)
    with pytest.raises(SchemaError, match=r"in\.tfrecord: record 0 at byte 0: feature 'image/raw'.*holds 20 bytes"):
        from_tfrecord(tmp_path / "in.tfrecord", str(tmp_path / "a"), features={"image/raw": ("bytes", "uint8", (3, 3))})
    with pytest.raises(SchemaError, match=r"record 1 .*feature 'sometimes'.*missing.*not nullable"):
        from_tfrecord(tmp_path / "in.tfrecord", str(tmp_path / "b"), features={"sometimes": ("int64", "int64")})
    with pytest.raises(SchemaError, match=r"feature 'label'.*value -3 does not fit uint8"):
        from_tfrecord(tmp_path / "in.tfrecord", str(tmp_path / "c"), features={"label": ("int64", "uint8")})
    for url in ("a", "b", "c"):
        with pytest.raises(DatasetNotFoundError):
            ts.open_dataset(str(tmp_path / url))


def test_reader_accepts_any_valid_encoding_and_tells_plain_from_gzip():
    def ld(tag: int, body: bytes) -> bytes:
        return bytes([tag]) + varint(len(body)) + body

    unpacked_ints = ld(0x1A, b"\x08\x05\x08" + varint(300))  # Int64List values as single varints
    mixed_floats = ld(0x12, ld(0x0A, struct.pack("<f", 1.0)) + b"\x0d" + struct.pack("<f", 2.0))
    entries = ld(0x0A, ld(0x12, unpacked_ints) + ld(0x0A, b"n")) + ld(0x0A, ld(0x0A, b"f") + ld(0x12, mixed_floats))
    parsed = parse_example(ld(0x0A, entries) + b"\x10\x07")  # value before key; an unknown field after
    n = decode_column(Feature("n", "n", "int64_list", "int64", (None,)), [parsed], str)
    f = decode_column(Feature("f", "f", "float_list", "float32", (2,)), [parsed], str)
    assert n[0].tolist() == [5, 300] and f.tolist() == [[1.0, 2.0]]
    out: list = []
    frame([bytes(35615)], out)  # a plain file whose first bytes are the gzip magic 1f 8b
    head = b"".join(out)[:12]
    assert head[:2] == b"\x1f\x8b" and not is_gzip(head)
    assert is_gzip(gzip.compress(b"".join(out))[:12])


# -- round trips -----------------------------------------------------------------------------------

def test_round_trip_mixed_with_columns_filter_and_shards(mixed_ds, tmp_path):
    exp = to_tfrecord(mixed_ds, tmp_path / "t", shards=2)
    back = from_tfrecord(tmp_path / "t", str(tmp_path / "back"))
    assert back.schema == MIXED
    got, want = _read_all(back), _read_all(mixed_ds)
    for name in MIXED.names:
        _assert_rows_equal(got[name], want[name], name)
    sel = to_tfrecord(mixed_ds, tmp_path / "sel.tfrecord.gz", columns=["id", "maybe_int"], filter=pc.field("label") > 2,
                      compression="GZIP")
    assert sel.num_rows == sum(1 for v in _mixed(11)["label"] if v > 2) and exp.num_rows == 11
    sub = from_tfrecord(sel.paths, str(tmp_path / "sub"), progress=True)
    assert sub.schema.names == ["id", "maybe_int"] and len(sub) == sel.num_rows
    Path(exp.spec_path).unlink()  # without features.json, schema= reads layout 1 exactly
    again = from_tfrecord(tmp_path / "t", str(tmp_path / "again"), schema=MIXED)
    _assert_rows_equal(_read_all(again)["boxes"], want["boxes"], "boxes")


_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
           "float64", "string", "bytes"]
_SHAPES = [(), (2,), (2, 3), (None,), (None, 2), (2, None, 1)]


@st.composite
def _datasets(draw):
    fields, data = [], {}
    n = draw(st.integers(0, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    for k in range(draw(st.integers(1, 3))):
        dtype = draw(st.sampled_from(_DTYPES))
        shape = () if dtype in ("string", "bytes") else draw(st.sampled_from(_SHAPES))
        f = Field(f"f{k}", dtype, shape, nullable=draw(st.booleans()))
        fields.append(f)
        rows = [_random_value(rng, f) for _ in range(n)]
        data[f.name] = [None if f.nullable and rng.random() < 0.3 else r for r in rows]
    return Schema(fields), data


def _random_value(rng, f: Field):
    shape = tuple(int(rng.integers(0, 3)) if d is None else d for d in f.shape)
    if f.dtype == "string":
        return "".join(rng.choice(list("aé✓z "), int(rng.integers(0, 4))))
    if f.dtype == "bytes":
        return rng.bytes(int(rng.integers(0, 4)))
    dt = f.numpy_dtype
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.random(shape) > 0.5
    info = np.iinfo(dt)
    hi = 2**63 - 1 if f.dtype == "uint64" and f.is_scalar else int(info.max)  # layout 1 refuses uint64 >= 2**63
    return rng.integers(int(info.min), hi, shape, dtype=dt, endpoint=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_datasets(), st.sampled_from([None, "GZIP"]), st.integers(1, 3))
def test_round_trip_preserves_values_dtypes_shapes(case, compression, shards):
    schema, data = case
    with tempfile.TemporaryDirectory() as d:
        ds = ts.write_dataset(f"{d}/ds", data, schema=schema)
        exp = to_tfrecord(ds, f"{d}/out", shards=shards, compression=compression)
        back = from_tfrecord(f"{d}/out", f"{d}/back")
        assert back.schema == schema and exp.num_rows == len(back) == len(ds)
        got = _read_all(back)
        for name, values in data.items():
            want = [v if v is None or isinstance(v, (str, bytes)) else np.asarray(v) for v in values]
            _assert_rows_equal(got[name], want, name)


# -- corruption --------------------------------------------------------------------------------------

def _offsets(raw: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(raw):
        out.append(pos)
        pos += 16 + struct.unpack_from("<Q", raw, pos)[0]
    return out


def _corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    off = _offsets(bytes(raw))
    if how == "data":
        raw[off[2] + 12 + 5] ^= 0x40
    elif how == "length":
        raw[off[2]] ^= 0x01
    elif how == "length-crc":
        raw[off[2] + 9] ^= 0x01
    elif how == "truncated":
        raw = raw[:off[2] + 30]
    elif how == "header":
        raw = raw[:off[2] + 7]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how,match", [
    ("data", r"record 2 at byte \d+: data checksum"),
    ("length", r"record 2 at byte \d+: length checksum"),
    ("length-crc", r"record 2 at byte \d+: length checksum"),
    ("truncated", r"record 2 at byte \d+: truncated"),
    ("header", r"record 2 at byte \d+: truncated record header"),
])
def test_corrupt_records_raise_and_commit_nothing(mixed_ds, tmp_path, how, match):
    exp = to_tfrecord(mixed_ds, tmp_path / "c.tfrecord")
    _corrupt(Path(exp.paths[0]), how)
    with pytest.raises(CorruptDatasetError, match=r"c\.tfrecord: " + match):
        from_tfrecord(exp.paths[0], str(tmp_path / "ds"))
    with pytest.raises(DatasetNotFoundError):
        ts.open_dataset(str(tmp_path / "ds"))


def test_corrupt_gzip_and_missing_records(mixed_ds, tmp_path):
    exp = to_tfrecord(mixed_ds, tmp_path / "g", shards=2, compression="GZIP")
    path = Path(exp.paths[1])
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(CorruptDatasetError, match=r"part-00001-of-00002\.tfrecord\.gz: record \d+ at byte \d+: "):
        from_tfrecord(tmp_path / "g", str(tmp_path / "a"), batch_rows=2, row_group_bytes=1, shard_bytes=1)
    assert not list((tmp_path / "a").rglob("*.parquet"))  # shards flushed before the error are gone
    exp = to_tfrecord(mixed_ds, tmp_path / "p.tfrecord")
    path = Path(exp.paths[0])
    raw = path.read_bytes()
    path.write_bytes(raw[:_offsets(raw)[-1]])  # cut exactly at a record boundary
    with pytest.raises(CorruptDatasetError, match=r"p\.tfrecord: holds 10 records, its features\.json lists 11"):
        from_tfrecord(path, str(tmp_path / "b"))
    for url in ("a", "b"):
        with pytest.raises(DatasetNotFoundError):
            ts.open_dataset(str(tmp_path / url))


# -- refusals ----------------------------------------------------------------------------------------

def test_uint64_scalar_beyond_int64_is_refused_and_nothing_written(tmp_path):
    ds = ts.write_dataset(str(tmp_path / "ds"), {"ok": np.arange(3), "u": np.array([1, 2**63, 3], dtype=np.uint64)})
    with pytest.raises(SchemaError, match=r"field 'u': value 9223372036854775808 at row 1 does not fit an int64_list"):
        to_tfrecord(ds, tmp_path / "out", shards=2)
    assert not (tmp_path / "out").exists()


def test_unsupported_specs_name_the_field(tmp_path):
    with pytest.raises(SchemaError, match=r"field 'x'.*'x.shape'|feature keys \['x.shape'\]"):
        ds = ts.write_dataset(str(tmp_path / "ds"), {"x": [np.zeros(2), np.zeros(3)], "x.shape": np.arange(2)},
                              schema=Schema([Field("x", "float32", (None,)), Field("x.shape", "int64")]))
        to_tfrecord(ds, tmp_path / "o")
    _tf_file(tmp_path / "in.tfrecord", None)
    with pytest.raises(SchemaError, match=r"field 'label'.*unsupported dtype 'complex64'"):
        from_tfrecord(tmp_path / "in.tfrecord", str(tmp_path / "a"), features={"label": ("int64", "complex64")})
    with pytest.raises(SchemaError, match=r"field 'vec'.*float_list holds dtypes"):
        from_tfrecord(tmp_path / "in.tfrecord", str(tmp_path / "b"), features={"vec": ("float", "int32", (4,))})
    with tf.io.TFRecordWriter(str(tmp_path / "multi.tfrecord")) as w:
        w.write(tf.train.Example(features=tf.train.Features(feature={"tags": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[b"a", b"b"]))})).SerializeToString())
    with pytest.raises(SchemaError, match=r"feature 'tags' holds up to 2 bytes values"):
        from_tfrecord(tmp_path / "multi.tfrecord", str(tmp_path / "c"))


def test_existing_targets_are_refused_unless_overwrite(mixed_ds, tmp_path):
    to_tfrecord(mixed_ds, tmp_path / "o", shards=3)
    with pytest.raises(DatasetExistsError, match=r"part-00000-of-00003\.tfrecord exists"):
        to_tfrecord(mixed_ds, tmp_path / "o", shards=3)
    with pytest.raises(DatasetExistsError, match=r"part\.features\.json exists"):
        to_tfrecord(mixed_ds, tmp_path / "o", shards=2)
    exp = to_tfrecord(mixed_ds, tmp_path / "o", shards=2, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord", "part.features.json"]
    assert TFRecordSpec.from_json(Path(exp.spec_path).read_text()).rows_per_file == (6, 5)
    assert len(from_tfrecord(tmp_path / "o", str(tmp_path / "ds"))) == 11


# -- no TensorFlow needed ------------------------------------------------------------------------------

def test_fsspec_urls_both_ways():
    root = f"memory://tfr-{os.getpid()}-{id(object())}"
    ds = ts.write_dataset(f"{root}/ds", {"x": np.arange(10, dtype=np.float32).reshape(5, 2), "s": list("abcde")})
    exp = to_tfrecord(ds, f"{root}/out/x.tfrecord", shards=2, compression="GZIP")
    assert exp.paths[0].startswith("memory://") and exp.paths[1].endswith("x-00001-of-00002.tfrecord.gz")
    back = from_tfrecord(f"{root}/out/x-*.tfrecord.gz", f"{root}/back")
    assert back.schema == ds.schema and _read_all(back)["s"] == list("abcde")


def test_writing_works_without_tensorflow(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # any import of tensorflow now fails
        import numpy as np
        import tensorstore_fs as ts
        from tensorstore_fs.converters import to_tfrecord
        ds = ts.write_dataset({str(tmp_path / 'ds')!r}, {{"x": np.arange(12, dtype=np.float32).reshape(4, 3),
                                                          "s": ["a", "b", "c", "d"]}})
        exp = to_tfrecord(ds, {str(tmp_path / 'out.tfrecord')!r})
        assert sys.modules["tensorflow"] is None and exp.num_rows == 4
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    parse = make_parse_fn(str(tmp_path / "out.features.json"))
    got = list(tf.data.TFRecordDataset(str(tmp_path / "out.tfrecord")).map(parse).as_numpy_iterator())
    np.testing.assert_array_equal(np.stack([g["x"] for g in got]), np.arange(12, dtype=np.float32).reshape(4, 3))
    assert [g["s"] for g in got] == [b"a", b"b", b"c", b"d"]
