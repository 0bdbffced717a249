"""Hostile and damaged input to the converters (issue 17, items 7, 8, 12, 13): a pickle bomb, a
pickle that tries to change the library's state, a TFRecord length field of 2**60, non-UTF-8
feature keys, damaged HDF5 files; and fuzzing of the TFRecord, Example, HDF5 and pickle readers:
every input is either imported or refused with a TensorstoreError, never anything else."""

from __future__ import annotations

import gzip
import struct
import tempfile
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
from fsspec.implementations.local import LocalFileSystem
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorstore_fs as tsfs
from tensorstore_fs.converters import from_hdf5, from_petastorm, from_tfrecord, to_hdf5, to_tfrecord
from tensorstore_fs.converters import _petastorm_schema as ps_schema
from tensorstore_fs.converters._example import BYTES, INT64, example_head, value_header, varint
from tensorstore_fs.converters._petastorm_schema import ALLOWED_GLOBALS, UnpickleLimits, parse_unischema
from tensorstore_fs.converters._tfrecord_io import frame, masked_crc, read_records
from tensorstore_fs.converters.petastorm import read_petastorm_schema
from tensorstore_fs.errors import CorruptDatasetError, TensorstoreError, UnsupportedFormatError

from petastorm_files import copy_fixture, set_unischema

DATA = Path(__file__).parent / "data" / "petastorm"
HELLO = DATA / "hello_world"
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


# ================================================================================================
# Petastorm pickles (items 7 and 8)

def _sbu(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


# DUP + TUPLE2, 59 times: a 122-byte pickle whose value has 2**59 leaves (shared, so cheap to
# build; anything that walks it, repr or a recursive conversion, never finishes).
BOMB = b"\x80\x04N" + b"2\x86" * 59 + b"."


def test_bomb_is_122_bytes_of_exponential_structure():
    assert len(BOMB) == 122
    small = b"\x80\x04N" + b"2\x86" * 3 + b"."
    import pickle  # the test may unpickle its own harmless bytes; the library never imports pickle

    assert pickle.loads(small) == (((None, None),) * 2,) * 2


@pytest.mark.parametrize("payload", [
    BOMB,
    # the bomb as the arguments of an allow-listed constructor (which walks its arguments)
    b"cpetastorm.unischema\nUnischema\n(N" + b"2\x86" * 59 + b"tR.",
    # and as a dict key (hashing walks it)
    b"\x80\x04}N" + b"2\x86" * 59 + b"Ns.",
])
def test_pickle_bomb_fails_fast_with_bounded_memory(tmp_path, payload):
    ps = copy_fixture(HELLO, tmp_path / "ps")
    set_unischema(ps, payload)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDatasetError, match=r"_common_metadata: .*exceeds a safety limit: .*max_size="):
            from_petastorm(str(ps), str(tmp_path / "out"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes allocated"
    assert not (tmp_path / "out").exists()


def _ops(n: int) -> bytes:
    return b"\x80\x04" + b"N0" * n + b"N."


@pytest.mark.parametrize("payload, limits, name", [
    (b"\x80\x04N" + b"2\x86" * 30 + b".", UnpickleLimits(), "max_size"),
    (b"\x80\x04N" + b"\x85" * 101 + b".", UnpickleLimits(), "max_depth"),
    (_ops(600), UnpickleLimits(max_ops=1000), "max_ops"),
    (b"\x80\x04(" + b"N" * 11 + b"l.", UnpickleLimits(max_items=10), "max_items"),
    (b"\x80\x04]" + b"(" + b"N" * 6 + b"e(" + b"N" * 6 + b"e.", UnpickleLimits(max_items=10), "max_items"),
    (b"\x80\x04N" + b"".join(b"r" + struct.pack("<I", i) for i in range(11)) + b".", UnpickleLimits(max_memo=10),
     "max_memo"),
    (b"\x80\x04X" + struct.pack("<I", 50) + b"a" * 50 + b".", UnpickleLimits(max_bytes=40), "max_bytes"),
    (b"\x80\x04\x8b" + struct.pack("<i", 100) + b"\x01" * 100 + b".", UnpickleLimits(), "max_int_bytes"),
    (b"I" + b"9" * 100 + b"\n.", UnpickleLimits(), "max_int_bytes"),
    (b"\x80\x04X" + struct.pack("<I", 20) + b"a" * 20 + b"2\x86" * 3 + b".", UnpickleLimits(max_size=100),
     "max_size"),
])
def test_each_limit_is_named(payload, limits, name):
    with pytest.raises(CorruptDatasetError, match=rf"src\.pickle: .*safety limit: .*{name}="):
        parse_unischema(payload, "src.pickle", limits)


def test_limits_are_validated():
    with pytest.raises(tsfs.InvalidArgumentError, match="max_ops"):
        UnpickleLimits(max_ops=0)
    with pytest.raises(tsfs.InvalidArgumentError, match="limits"):
        parse_unischema(b"N.", "x", limits={"max_ops": 3})


def test_real_schemas_fit_well_within_the_limits():
    tight = UnpickleLimits(max_ops=5_000, max_memo=1_000, max_items=100, max_depth=20, max_size=50_000)
    for proto in ("p0", "p2"):
        data = (DATA / f"extras.unischema.{proto}.pickle").read_bytes()
        assert parse_unischema(data, limits=tight) == parse_unischema(data)


def _module_state() -> dict:
    """Every attribute of every allow-listed object (classes, functions, sentinels, type tokens)."""
    out = {}
    for key, obj in ALLOWED_GLOBALS.items():
        attrs = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
        out[key] = {k: v for k, v in attrs.items() if not k.startswith("__") or k == "__dict__"}
    out["_Record"] = dict(vars(ps_schema._Record))
    return out


_CODEC = "petastorm.codecs\nScalarCodec\n"
_STATE = b"(dVpickled_name\nVpetastorm.codecs.NdarrayCodec\nsVstate\n(dVx\nI1\nssb"


@pytest.mark.parametrize("payload, match", [
    # BUILD on an allow-listed class: would make every later ScalarCodec read as an NdarrayCodec
    (b"c" + _CODEC.encode() + _STATE + b".", "class petastorm.codecs.ScalarCodec"),
    (b"\x80\x04" + _sbu("petastorm.codecs") + _sbu("ScalarCodec") + b"\x93" + _STATE + b".", "class"),
    (b"cpetastorm.unischema\nUnischema\n" + _STATE + b".", "class petastorm.unischema.Unischema"),
    # on an allow-listed function, sentinel and type token
    (b"ccollections\nOrderedDict\n" + _STATE + b".", "function"),
    (b"cbuiltins\nobject\n(dVname\nVx\nsb.", "this pickle did not create"),
    (b"cnumpy\nint32\n(dVkind\nV<f8\nsb.", "this pickle did not create"),
    # the (state, slots) form
    (b"c" + _CODEC.encode() + b"N(dVpickled_name\nVx\ns\x86b.", "ScalarCodec, which this pickle did not create"),
    # a fresh instance, but only after it was placed inside another value
    (b"cpetastorm.unischema\nUnischema\n)Rq\x00\x850h\x00(dV_name\nVx\nsb.", "already placed inside"),
    # a fresh list changed after a tuple took it (its measured size would no longer be true)
    (b"\x80\x04]q\x00\x85h\x00Na.", "already placed inside"),
    # a list appended to itself
    (b"\x80\x04]q\x00h\x00a.", "already placed inside"),
])
def test_state_only_on_fresh_instances(tmp_path, payload, match):
    before = _module_state()
    with pytest.raises(TensorstoreError) as err:
        parse_unischema(payload, "hostile.pickle")
    assert "hostile.pickle" in str(err.value)
    if match is not None:
        assert isinstance(err.value, UnsupportedFormatError)
        assert match in str(err.value), str(err.value)
    assert _module_state() == before, "a pickle changed the library's state"
    # and a legitimate dataset read afterwards in the same process is read exactly
    hello = read_petastorm_schema(str(HELLO))
    assert hello.field("id").codec == "ScalarCodec" and hello.field("id").spark_type == "IntegerType()"
    assert hello.field("matrix").codec == "NdarrayCodec"


def test_legit_import_after_hostile_attempt(tmp_path):
    """The hostile BUILD in a dataset's _common_metadata, then a real Petastorm dataset imported."""
    evil = copy_fixture(HELLO, tmp_path / "evil")
    set_unischema(evil, b"c" + _CODEC.encode() + _STATE + b".")
    with pytest.raises(UnsupportedFormatError, match=r"evil/_common_metadata: .*BUILD .*ScalarCodec"):
        from_petastorm(str(evil), str(tmp_path / "evil_out"))
    ds = from_petastorm(str(HELLO), str(tmp_path / "out"))
    assert ds.schema == read_petastorm_schema(str(HELLO)).to_schema()
    rows = ds.head(len(ds))
    assert rows["id"].dtype == np.int32 and rows["matrix"].shape[1:] == (8, 8)


def test_oversized_common_metadata_is_refused_before_reading(tmp_path, monkeypatch):
    from tensorstore_fs.converters import petastorm

    ps = copy_fixture(HELLO, tmp_path / "ps")
    monkeypatch.setattr(petastorm, "MAX_COMMON_METADATA_BYTES", 100)
    with pytest.raises(CorruptDatasetError, match=r"_common_metadata is \d+ bytes, more than the 100"):
        from_petastorm(str(ps), str(tmp_path / "out"))


_PICKLES = [(DATA / f"extras.unischema.{p}.pickle").read_bytes() for p in ("p0", "p2")]


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 flip bits, 1 set byte, 2 delete bytes, 3 insert a
    byte, 4 truncate. Positions wrap around the current length."""
    b = bytearray(data)
    for kind, pos, value in edits:
        if not b:
            break
        pos %= len(b)
        if kind == 0:
            b[pos] ^= (value % 255) + 1
        elif kind == 1:
            b[pos] = value
        elif kind == 2:
            del b[pos:pos + 1 + value % 8]
        elif kind == 3:
            b[pos:pos] = bytes([value])
        else:
            del b[pos:]
    return bytes(b)


# in-place edits (flip, set) keep the structure around them, so they reach deeper than cuts and shifts
EDITS = st.lists(st.tuples(st.sampled_from((0, 1, 0, 1, 2, 3, 4)), st.integers(0, 1 << 20), st.integers(0, 255)),
                 min_size=1, max_size=4)


@FUZZ
@given(which=st.integers(0, 1), edits=EDITS)
def test_fuzz_unischema_pickle(which, edits):
    data = _mutate(_PICKLES[which], edits)
    try:
        parse_unischema(data, "fuzzed.pickle")
    except TensorstoreError as e:
        assert "fuzzed.pickle" in str(e)


# ================================================================================================
# TFRecord (items 12 and 13)

def _nothing_committed(url: Path) -> None:
    try:
        tsfs.open_dataset(str(url))
    except tsfs.DatasetNotFoundError:
        return
    raise AssertionError(f"{url}: a dataset was committed although the import failed")


def _record(data: bytes) -> bytes:
    out: list = []
    frame([data], out)
    return b"".join(bytes(p) for p in out)


def _example(entries: list[bytes]) -> bytes:
    body = b"".join(entries)
    return example_head(len(body)) + body


def _int_entry(key: bytes, value: int) -> bytes:
    v = varint(value)
    return value_header(key, INT64, len(v)) + v


def test_length_field_of_2_pow_60_with_valid_crc(tmp_path):
    good = _record(_example([_int_entry(b"x", 1)]))
    head = struct.pack("<Q", 1 << 60)
    bad = head + struct.pack("<I", masked_crc(head)) + b"\0" * 32
    path = tmp_path / "big.tfrecord"
    path.write_bytes(good + bad)
    with pytest.raises(CorruptDatasetError, match=rf"big\.tfrecord: record 1 at byte {len(good)}: truncated or "
                                                  r"corrupt length: the length field says 1152921504606846976 "
                                                  r"bytes, the file ends 28 bytes into the record"):
        from_tfrecord(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    gz = tmp_path / "big.tfrecord.gz"
    gz.write_bytes(gzip.compress(good + bad))
    with pytest.raises(CorruptDatasetError, match=rf"big\.tfrecord\.gz: record 1 at byte {len(good)}: .*"
                                                  r"max_record_bytes=2147483647"):
        from_tfrecord(str(gz), str(tmp_path / "out"))


def test_gzip_length_below_the_maximum_reads_only_what_is_there(tmp_path):
    """A gzip stream's length is unknown: a 1.5 GiB length over 32 bytes of data is found
    truncated after reading what is there (no 1.5 GiB allocation)."""
    head = struct.pack("<Q", 3 << 29)
    path = tmp_path / "t.tfrecord.gz"
    path.write_bytes(gzip.compress(head + struct.pack("<I", masked_crc(head)) + b"\0" * 32))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDatasetError, match=r"record 0 at byte 0: truncated: the record holds 1610612736 "
                                                      r"bytes, the file ends 32 bytes into it"):
            list(read_records(LocalFileSystem(), str(path), "GZIP"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20


def test_max_record_bytes_is_configurable(tmp_path):
    path = tmp_path / "r.tfrecord"
    rec = _example([value_header(b"b", BYTES, 300) + b"z" * 300])
    path.write_bytes(_record(rec) * 3)
    assert len(from_tfrecord(str(path), str(tmp_path / "ok"))) == 3
    with pytest.raises(CorruptDatasetError, match=rf"record 0 at byte 0: its length field says {len(rec)} bytes, "
                                                  r"more than max_record_bytes=100"):
        from_tfrecord(str(path), str(tmp_path / "out"), max_record_bytes=100)
    with pytest.raises(tsfs.InvalidArgumentError, match="max_record_bytes"):
        from_tfrecord(str(path), str(tmp_path / "out"), max_record_bytes=0)


def test_non_utf8_feature_key(tmp_path):
    path = tmp_path / "k.tfrecord"
    ok = _record(_example([_int_entry(b"x", 1)]))
    path.write_bytes(ok + _record(_example([_int_entry(b"x", 2), _int_entry(b"bad\xff\xfekey", 3)])))
    with pytest.raises(CorruptDatasetError, match=rf"k\.tfrecord: record 1 at byte {len(ok)}: feature key "
                                                  r"b'bad\\xff\\xfekey' is not UTF-8"):
        from_tfrecord(str(path), str(tmp_path / "out"))
    # with the features named, a record's other keys are not read
    ds = from_tfrecord(str(path), str(tmp_path / "named"), features={"x": ("int64", "int64")})
    assert ds.head(2)["x"].tolist() == [1, 2]


def test_hostile_variable_shape_feature(tmp_path):
    """A shape feature whose dims wrap around int64 to match the data, or is not varints."""
    schema = tsfs.Schema([tsfs.Field("t", "uint8", (None, None))])
    feats = {"t": ("bytes", "uint8", (None, None))}
    for shape_bytes, match in [
        (varint(1 << 32) + varint(1 << 32), r"holds 0 bytes, shape \(4294967296, 4294967296\)"),
        (b"\xff\xff", "malformed|shape feature"),
    ]:
        path = tmp_path / "s.tfrecord"
        rec = _example([value_header(b"t", BYTES, 0), value_header(b"t.shape", INT64, len(shape_bytes)) + shape_bytes])
        path.write_bytes(_record(rec))
        with pytest.raises(TensorstoreError, match=rf"s\.tfrecord: record 0 at byte 0: feature 't'.*({match})"):
            from_tfrecord(str(path), str(tmp_path / "out"), features=feats)
        with pytest.raises(TensorstoreError, match=r"s\.tfrecord: record 0"):
            from_tfrecord(str(path), str(tmp_path / "out"), schema=schema)


def _small_dataset(root: Path) -> tsfs.Dataset:
    n = 12
    schema = tsfs.Schema([
        tsfs.Field("id", "int64"),
        tsfs.Field("img", "uint8", (2, 3)),
        tsfs.Field("seq", "int16", (None, 2), nullable=True),
        tsfs.Field("score", "float32"),
        tsfs.Field("exact", "float64"),
        tsfs.Field("flag", "bool"),
        tsfs.Field("name", "string", nullable=True),
        tsfs.Field("blob", "bytes"),
        tsfs.Field("maybe", "int32", nullable=True),
    ])
    data = {
        "id": np.arange(n, dtype=np.int64),
        "img": np.arange(n * 6, dtype=np.uint8).reshape(n, 2, 3),
        "seq": [None if i % 4 == 1 else np.full((i % 3, 2), i, np.int16) for i in range(n)],
        "score": np.linspace(0, 1, n, dtype=np.float32),
        "exact": np.linspace(-1, 1, n),
        "flag": np.arange(n) % 2 == 0,
        "name": [None if i % 5 == 2 else f"row {i} é" for i in range(n)],
        "blob": [bytes([i]) * (i % 4) for i in range(n)],
        "maybe": np.ma.MaskedArray(np.arange(n, dtype=np.int32), mask=np.arange(n) % 3 == 0),
    }
    return tsfs.write_dataset(str(root), data, schema)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dataset exported by our own writers: the TFRecord file, its features.json, the HDF5 file."""
    root = tmp_path_factory.mktemp("exported")
    ds = _small_dataset(root / "ds")
    export = to_tfrecord(ds, str(root / "tf" / "data.tfrecord"))
    to_hdf5(ds, root / "data.h5")
    records = [bytes(d) for _, _, d in read_records(LocalFileSystem(), export.paths[0], None)]
    return {"tfrecord": Path(export.paths[0]).read_bytes(), "spec": Path(export.spec_path).read_bytes(),
            "records": records, "hdf5": (root / "data.h5").read_bytes(), "rows": len(ds)}


def _import_tfrecord(data: bytes, spec: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.tfrecord"
        path.write_bytes(data)
        if spec is not None:
            (Path(tmp) / "data.features.json").write_bytes(spec)
        try:
            from_tfrecord(str(path), str(Path(tmp) / "out"))
        except TensorstoreError as e:
            assert "data.tfrecord" in str(e) or "features" in str(e), str(e)
            _nothing_committed(Path(tmp) / "out")


def test_exported_files_import(exported):
    _import_tfrecord(exported["tfrecord"], exported["spec"])
    _import_tfrecord(exported["tfrecord"], None)


@FUZZ
@given(with_spec=st.booleans(), edits=EDITS)
def test_fuzz_tfrecord_file(exported, with_spec, edits):
    _import_tfrecord(_mutate(exported["tfrecord"], edits), exported["spec"] if with_spec else None)


@FUZZ
@given(with_spec=st.booleans(), index=st.integers(0, 11), edits=EDITS)
def test_fuzz_example_protos(exported, with_spec, index, edits):
    """Damaged Examples inside valid framing (CRCs recomputed): the Example parser and the column
    decoders must name the damage."""
    records = list(exported["records"])
    records[index % len(records)] = _mutate(records[index % len(records)], edits)
    _import_tfrecord(b"".join(_record(r) for r in records), exported["spec"] if with_spec else None)


# ================================================================================================
# HDF5 (item 13)

def _import_hdf5(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.h5"
        path.write_bytes(data)
        try:
            from_hdf5(path, str(Path(tmp) / "out"))
        except TensorstoreError as e:
            assert "data.h5" in str(e), str(e)
            _nothing_committed(Path(tmp) / "out")


def test_exported_hdf5_imports(exported):
    _import_hdf5(exported["hdf5"])


def _damage(path: Path, how: str) -> None:
    with h5py.File(path, "r+") as h5:
        if how == "drop shapes":
            del h5["seq/shapes"]
        elif how == "bad offsets":
            h5["seq/offsets"][3] = -5
        elif how == "negative shape":
            h5["seq/shapes"][2] = (-2, 2)
        elif how == "huge shape":
            h5["seq/shapes"][2] = (1 << 40, 2)
        elif how == "bad schema":
            h5.attrs["tsfs_schema"] = "{not json"
        elif how == "bad rows":
            h5.attrs["tsfs_rows"] = "many"
        elif how == "valid not bool":
            del h5["__valid__/maybe"]
            h5["__valid__/maybe"] = np.zeros(12, np.float32)
        elif how == "field is a group":
            del h5["img"]
            h5.create_group("img")
        elif how == "wrong tensor shape":
            del h5["img"]
            h5["img"] = np.zeros((12, 4), np.uint8)
        elif how == "bad utf-8":
            del h5["name"]
            h5.create_dataset("name", data=np.array([b"\xff\xfe"] * 12, dtype=object),
                              dtype=h5py.string_dtype("utf-8"))


@pytest.mark.parametrize("how, match", [
    ("drop shapes", r"/seq/shapes should be an HDF5 Dataset, found nothing"),
    ("bad offsets", r"/seq/offsets of rows 0-12 are not increasing"),
    ("negative shape", r"/seq/shapes row 2 is \(-2, 2\)"),
    ("huge shape", r"row 2 spans 4 values but its shape \(1099511627776, 2\) needs 2199023255552"),
    ("bad schema", r"attribute 'tsfs_schema' is not a valid schema"),
    ("bad rows", r"attribute 'tsfs_rows' is 'many', not a row count"),
    ("valid not bool", r"/__valid__/maybe \(nulls of field 'maybe'\) is float32"),
    ("field is a group", r"/img \(field 'img'\) should be an HDF5 Dataset, found Group"),
    ("wrong tensor shape", r"/img \(field 'img'\) is uint8 \(12, 4\), the schema says uint8"),
    ("bad utf-8", r"cannot read rows 0-12 of /name .*UnicodeDecodeError"),
])
def test_damaged_hdf5_names_the_object(tmp_path, exported, how, match):
    path = tmp_path / "d.h5"
    path.write_bytes(exported["hdf5"])
    _damage(path, how)
    with pytest.raises(CorruptDatasetError, match=rf"d\.h5: .*{match}"):
        from_hdf5(path, str(tmp_path / "out"))
    _nothing_committed(tmp_path / "out")


def test_truncated_hdf5(tmp_path, exported):
    data = exported["hdf5"]
    for cut in (len(data) // 2, len(data) - 100, 600):
        path = tmp_path / f"cut{cut}.h5"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptDatasetError, match=rf"cut{cut}\.h5"):
            from_hdf5(path, str(tmp_path / f"out{cut}"))


@FUZZ
@given(edits=EDITS)
def test_fuzz_hdf5_file(exported, edits):
    _import_hdf5(_mutate(exported["hdf5"], edits))
