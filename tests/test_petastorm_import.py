"""Importing Petastorm datasets: values equal what Petastorm's own reader returns, and no pickle runs code.

Fixtures (``tests/data/petastorm/``): ``hello_world`` (written by Petastorm 0.13.1 with Spark 4) and
``extras`` (written by ``make_fixtures.py`` with Petastorm 0.13.1 + Spark 3.5: every codec, JPEG and
16-bit PNG images, Fortran-ordered arrays, nullable tensors, every Spark scalar type, a field without
codec, a Decimal). ``*.expected.json`` hold every row as Petastorm's ``make_reader`` decoded it.
Malicious datasets are built here by copying a fixture and rewriting ``_common_metadata``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.converters import from_petastorm
from tensorstore_fs.converters._petastorm_schema import ALLOWED_GLOBALS, PetastormField, parse_unischema
from tensorstore_fs.converters.petastorm import read_petastorm_schema

from petastorm_files import copy_fixture, set_unischema

DATA = Path(__file__).parent / "data" / "petastorm"
HELLO = DATA / "hello_world"
EXTRAS = DATA / "extras"


# -------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------

def _expected(name: str) -> list[dict]:
    return json.loads((DATA / f"{name}.expected.json").read_text())["rows"]


def _decode_expected(e):
    """A value of *.expected.json -> what Petastorm returned (numpy array, str, scalar or None)."""
    if e is None:
        return None
    if e["dtype"] in ("str", "Decimal"):
        return e["value"]
    if e["dtype"] == "bytes":
        return base64.b64decode(e["b64"])
    if "shape" in e:
        return np.frombuffer(base64.b64decode(e["b64"]), np.dtype(e["dtype"])).reshape(e["shape"])
    return np.array(e["value"], dtype=np.dtype(e["dtype"]))[()]


def _ours(col, i):
    """Row ``i`` of a batch column as returned by Dataset.head(): None for null."""
    if isinstance(col, list):
        return col[i]
    if isinstance(col, np.ma.MaskedArray) and np.ma.getmaskarray(col[i:i + 1]).all():
        return None
    v = np.asarray(col[i]) if not isinstance(col, np.ma.MaskedArray) else np.asarray(col.data[i])
    return v.item() if v.dtype == object else v


def _copy(src: Path, tmp_path: Path, name: str = "ps") -> Path:
    return copy_fixture(src, tmp_path / name)


def _assert_nothing_committed(dest: Path) -> None:
    with pytest.raises(tsfs.DatasetNotFoundError):
        tsfs.open_dataset(str(dest))
    data = dest / "data"
    assert not data.exists() or not any(data.iterdir()), "uncommitted shard files were left behind"


def _rewrite_cell(part: Path, field: str, row: int, fn) -> None:
    table = pq.read_table(part)
    cells = table.column(field).to_pylist()
    cells[row] = fn(cells[row])
    i = table.schema.get_field_index(field)
    table = table.set_column(i, table.schema.field(i), pa.array(cells, type=table.schema.field(i).type))
    pq.write_table(table, part)


# -------------------------------------------------------------------------------------------
# schema
# -------------------------------------------------------------------------------------------

def test_hello_world_unischema():
    ps = read_petastorm_schema(str(HELLO))
    assert ps.name == "HelloSchema"
    assert ps.names == ["id", "big_id", "name", "note", "image_png", "matrix", "matrix_z", "var_4d"]
    got = {f.name: (f.codec, f.numpy_type, f.shape, f.nullable) for f in ps.fields}
    assert got == {
        "id": ("ScalarCodec", "numpy.int32", (), False),
        "big_id": ("ScalarCodec", "numpy.int64", (), False),
        "name": ("ScalarCodec", "numpy.str_", (), False),
        "note": ("ScalarCodec", "numpy.str_", (), True),
        "image_png": ("CompressedImageCodec", "numpy.uint8", (16, 24, 3), False),
        "matrix": ("NdarrayCodec", "numpy.float32", (8, 8), False),
        "matrix_z": ("CompressedNdarrayCodec", "numpy.float64", (4, 5), False),
        "var_4d": ("NdarrayCodec", "numpy.uint8", (None, 3, 2, None), False),
    }
    assert ps.field("id").spark_type == "IntegerType()"
    assert (ps.field("image_png").image_format, ps.field("image_png").image_quality) == ("png", 80)


def test_hello_world_tsfs_schema():
    schema = read_petastorm_schema(str(HELLO)).to_schema()
    got = {f.name: (f.dtype, f.shape, f.nullable) for f in schema.fields}
    assert got == {
        "id": ("int32", (), False),
        "big_id": ("int64", (), False),
        "name": ("string", (), False),
        "note": ("string", (), True),
        "image_png": ("uint8", (16, 24, 3), False),
        "matrix": ("float32", (8, 8), False),
        "matrix_z": ("float64", (4, 5), False),
        "var_4d": ("uint8", (None, 3, 2, None), False),
    }
    assert schema.metadata == {"imported_from": "petastorm", "petastorm.unischema": "HelloSchema"}
    assert "CompressedImageCodec('png', 80)" in schema["image_png"].description


def test_extras_tsfs_schema():
    schema = read_petastorm_schema(str(EXTRAS)).to_schema()
    got = {f.name: (f.dtype, f.shape, f.nullable) for f in schema.fields}
    assert got == {
        "id": ("int32", (), False), "tiny": ("int8", (), False), "small": ("int16", (), False),
        "big": ("int64", (), False), "score": ("float32", (), False), "weight": ("float64", (), True),
        "flag": ("bool", (), False), "label": ("string", (), True), "no_codec": ("uint16", (), False),
        "price": ("string", (), False), "emb": ("float16", (4,), True), "fortran": ("float64", (3, 2), False),
        "points_z": ("int32", (None, 3), True), "img_jpeg": ("uint8", (16, 24, 3), False),
        "img_gray": ("uint8", (None, None), False), "img16": ("uint16", (8, 8), False),
    }
    assert "DecimalType(10,2)" in schema["price"].description


@pytest.mark.parametrize("proto", [0, 2])
def test_old_protocol_pickles(proto):
    """Protocols 0 and 2 (copy_reg._reconstructor, __builtin__, tuple-based namedtuples) parse alike."""
    current = read_petastorm_schema(str(EXTRAS))
    data = (DATA / f"extras.unischema.p{proto}.pickle").read_bytes()
    assert parse_unischema(data) == current


def test_legacy_package_names():
    """Datasets of Petastorm's predecessor name ``av.ml.dataset_toolkit`` still parse."""
    data = (DATA / "extras.unischema.p0.pickle").read_bytes()
    legacy = data.replace(b"cpetastorm.", b"cav.ml.dataset_toolkit.")
    assert legacy != data
    assert parse_unischema(legacy) == read_petastorm_schema(str(EXTRAS))


def test_unsupported_dtype_names_the_field():
    f = PetastormField("when", "numpy.datetime64", "unsupported", (), "ScalarCodec", False, "TimestampType()")
    with pytest.raises(tsfs.UnsupportedFormatError, match=r"'when'.*numpy.datetime64.*columns="):
        f.to_field()


# -------------------------------------------------------------------------------------------
# values against Petastorm's own reader
# -------------------------------------------------------------------------------------------

def _compare(ds: tsfs.Dataset, expected: list[dict], nan_is_null: set[str] = frozenset()) -> None:
    batch = ds.head(len(ds))
    assert len(ds) == len(expected)
    for i, row in enumerate(expected):
        for name, e in row.items():
            if name not in batch:
                continue
            want, got = _decode_expected(e), _ours(batch[name], i)
            where = f"row {i} field {name}"
            if name in nan_is_null and isinstance(want, float) and math.isnan(want):
                # Petastorm's make_reader goes through pandas and turns a null float into NaN;
                # the import keeps the null.
                assert got is None, where
            elif want is None:
                assert got is None, where
            elif isinstance(want, np.ndarray):
                assert isinstance(got, np.ndarray), where
                assert got.dtype == want.dtype.newbyteorder("="), where
                assert got.shape == want.shape, where
                np.testing.assert_array_equal(got, want, err_msg=where)
            elif isinstance(want, (str, bytes)):
                assert got == want, where
            else:
                assert np.asarray(got).dtype == np.asarray(want).dtype, where
                assert got == want, where


def test_hello_world_matches_petastorm(tmp_path):
    ds = from_petastorm(str(HELLO), str(tmp_path / "out"))
    assert isinstance(ds, tsfs.Dataset) and ds.version == 1
    _compare(ds, _expected("hello_world"))
    ds.verify()


def test_extras_match_petastorm(tmp_path):
    ds = from_petastorm(str(EXTRAS), str(tmp_path / "out"), batch_rows=5)
    _compare(ds, _expected("extras"), nan_is_null={"weight"})
    assert ds.head(3, columns=["price"])["price"].tolist() == ["0.00", "3.01", "6.02"]


@pytest.mark.parametrize("batch_rows", [1, 3, 1000])
def test_batch_size_does_not_change_values(tmp_path, batch_rows):
    """The whole-batch NdarrayCodec path and the per-cell path agree, with nulls at any position."""
    ds = from_petastorm(str(EXTRAS), str(tmp_path / "out"), columns=["id", "emb", "fortran", "points_z"],
                        batch_rows=batch_rows)
    _compare(ds, _expected("extras"))


def test_columns_select_and_order(tmp_path):
    ds = from_petastorm(str(HELLO), str(tmp_path / "out"), columns=["var_4d", "id"])
    assert ds.schema.names == ["var_4d", "id"]
    assert ds.head(20)["id"].tolist() == list(range(20))


def test_unknown_column(tmp_path):
    with pytest.raises(tsfs.InvalidArgumentError, match=r"'nope'.*\['id', 'big_id'"):
        from_petastorm(str(HELLO), str(tmp_path / "out"), columns=["id", "nope"])
    assert not (tmp_path / "out").exists()


def test_modes_and_progress(tmp_path):
    dest = tmp_path / "out"
    from_petastorm(str(HELLO), str(dest), columns=["id"])
    with pytest.raises(tsfs.DatasetExistsError):
        from_petastorm(str(HELLO), str(dest), columns=["id"])
    ds = from_petastorm(str(HELLO), str(dest), columns=["id"], mode="append", progress=True)
    assert (ds.version, len(ds)) == (2, 40)


def test_no_petastorm_pyspark_or_opencv_imported(tmp_path):
    code = (
        "import sys, tensorstore_fs.converters as c\n"
        f"c.from_petastorm({str(EXTRAS)!r}, {str(tmp_path / 'out')!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('petastorm', 'pyspark', 'cv2'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_pillow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"Pillow.*tensorstore_fs\[image\]"):
        from_petastorm(str(HELLO), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    ds = from_petastorm(str(HELLO), str(tmp_path / "out2"), columns=["id", "matrix"])
    assert len(ds) == 20


# -------------------------------------------------------------------------------------------
# malicious pickles
# -------------------------------------------------------------------------------------------

def _sbu(text: str) -> bytes:
    """Pickle opcode SHORT_BINUNICODE."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    code = f"open({str(marker)!r}, 'w').close()".encode()
    unischema_field = b"\x80\x04" + _sbu("petastorm.unischema") + _sbu("UnischemaField") + b"\x93"
    return {
        # protocol 0 GLOBAL + REDUCE
        "os.system": b"cos\nsystem\n(V" + cmd + b"\ntR.",
        "posix.system": b"cposix\nsystem\n(V" + cmd + b"\ntR.",
        "builtins.exec": b"cbuiltins\nexec\n(V" + code + b"\ntR.",
        "__builtin__.eval": b"c__builtin__\neval\n(V" + code + b"\ntR.",
        "subprocess.call": b"csubprocess\ncall\n((Vtouch\nV" + str(marker).encode() + b"\nltR.",
        # protocol 4: STACK_GLOBAL reaching through an allowed class's attributes
        "petastorm.unischema.Unischema.__init__.__globals__": (
            b"\x80\x04" + _sbu("petastorm.unischema") + _sbu("Unischema.__init__.__globals__") + b"\x93."),
        # getattr via an allowed module name, then a call
        "builtins.getattr": b"cbuiltins\ngetattr\n(cbuiltins\nobject\nV__subclasses__\ntR)R.",
        # a valid-looking field whose codec is a REDUCE of os.system (the payload hides inside)
        "os.system inside a UnischemaField": (
            unischema_field + b"(Vx\ncnumpy\nuint8\n)cos\nsystem\n(V" + cmd + b"\ntRI00\ntR."),
        # Petastorm's own restricted unpickler allows every 'numpy.*' and 'builtins.*' name
        "numpy.load": b"cnumpy\nload\n(V/etc/passwd\ntR.",
        "numpy.testing._private.utils.runstring": (
            b"cnumpy.testing._private.utils\nrunstring\n(V" + code + b"\n(dtR."),
        # a petastorm-looking class that is not on the allow-list
        "petastorm.codecs.Evil": b"cpetastorm.codecs\nEvil\n)R.",
        "petastorm.unischema._NamedtupleCache": b"cpetastorm.unischema\n_NamedtupleCache\n.",
    }


def test_control_payload_really_runs_code_under_plain_pickle(tmp_path):
    """Sanity check of the test itself: plain ``pickle.loads`` of a payload does create the marker."""
    marker = tmp_path / "control_marker"
    payload = _payloads(marker)["os.system"]
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=payload, check=True, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("name", list(_payloads(Path("/x"))))
def test_malicious_unischema_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[name]
    ps = _copy(HELLO, tmp_path)
    set_unischema(ps, payload)
    refused = name.split(" ")[0]
    with pytest.raises(tsfs.UnsupportedFormatError, match=rf"asks for {refused.replace('.', '[.]')}\b.*allow-list"):
        read_petastorm_schema(str(ps))
    with pytest.raises(tsfs.UnsupportedFormatError, match="allow-list"):
        from_petastorm(str(ps), str(tmp_path / "out"))
    assert not marker.exists(), "the pickle ran code"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload, match", [
    (b"\x80\x04\x8c\x05numpy\x8c\x05dtype\x93\x8c\x02O8\x89\x88\x87R.", r"numpy.dtype\('O8'\)"),
    (b"c_codecs\nencode\n(V" + b"a" * 100 + b"\nVlatin1\ntR.", "short latin1"),
    (b"ccopy_reg\n_reconstructor\n(cbuiltins\nobject\ncbuiltins\nobject\nNtR.", "_reconstructor"),
    (b"cpetastorm.unischema\nUnischema\n)R.", "Unischema has no fields"),
])
def test_allowed_callables_refuse_bad_arguments(payload, match):
    with pytest.raises(tsfs.CorruptDatasetError, match=match):
        parse_unischema(payload)


@pytest.mark.parametrize("payload, match", [
    (b"not a pickle", "cannot be read"),
    (pickle.dumps({"a": 1}), "not a petastorm Unischema"),
    (b"\x80\x04N.", "not a petastorm Unischema"),
])
def test_garbage_unischema(tmp_path, payload, match):
    ps = _copy(HELLO, tmp_path)
    set_unischema(ps, payload)
    with pytest.raises(tsfs.CorruptDatasetError, match=match):
        from_petastorm(str(ps), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_allow_list_holds_no_real_callables():
    """Every allowed global is a local stand-in, a harmless type token or a small local function."""
    import collections
    import copyreg
    import os as os_mod

    for (module, name), obj in ALLOWED_GLOBALS.items():
        assert obj not in (os_mod.system, eval, exec, getattr, collections.OrderedDict, copyreg._reconstructor,
                           np.dtype, np.load, object, tuple), (module, name)
        mod = getattr(obj, "__module__", None) or type(obj).__module__
        assert mod == "tensorstore_fs.converters._petastorm_schema", (module, name, mod)


# -------------------------------------------------------------------------------------------
# corrupt cells, not-Petastorm inputs
# -------------------------------------------------------------------------------------------

def _part0(ps: Path) -> Path:
    return sorted(ps.glob("part-00000-*.parquet"))[0]


@pytest.mark.parametrize("field, fn, match", [
    ("matrix", lambda c: c[:-7], r"needs 384 bytes, it holds 377"),
    ("matrix", lambda c: b"garbage" + c[7:], "bad magic"),
    ("matrix", lambda c: c.replace(b"(8, 8)", b"(8, 7)").replace(b"}    ", b"}     "), "needs"),
    ("var_4d", lambda c: c[:-1], "needs"),
    ("matrix_z", lambda c: c[:40], "not a valid np.savez_compressed cell"),
    ("image_png", lambda c: c[:100], "image does not decode"),
])
def test_corrupt_cell_names_file_row_field(tmp_path, field, fn, match):
    ps = _copy(HELLO, tmp_path)
    part = _part0(ps)
    _rewrite_cell(part, field, 3, fn)
    dest = tmp_path / "out"
    with pytest.raises(tsfs.CorruptDatasetError, match=rf"{part.name} row 3, field '{field}'.*{match}"):
        from_petastorm(str(ps), str(dest), batch_rows=4)
    _assert_nothing_committed(dest)


def test_object_array_cell_is_refused_without_unpickling(tmp_path):
    """An NdarrayCodec cell holding an object array (a pickle inside .npy) is refused unread."""
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil[0] = Boom()
    import io

    buf = io.BytesIO()
    np.save(buf, evil, allow_pickle=True)
    ps = _copy(HELLO, tmp_path)
    _rewrite_cell(_part0(ps), "var_4d", 2, lambda c: buf.getvalue())
    with pytest.raises(tsfs.CorruptDatasetError, match=r"row 2, field 'var_4d'.*dtype object"):
        from_petastorm(str(ps), str(tmp_path / "out"))
    assert not marker.exists()
    _assert_nothing_committed(tmp_path / "out")


def test_shape_mismatch_cell(tmp_path):
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 4), np.float32))
    ps = _copy(HELLO, tmp_path)
    _rewrite_cell(_part0(ps), "matrix", 9, lambda c: buf.getvalue())
    with pytest.raises(tsfs.CorruptDatasetError, match=r"row 9, field 'matrix'.*shape \(4, 4\).*\(8, 8\)"):
        from_petastorm(str(ps), str(tmp_path / "out"))


def test_failure_in_second_file_commits_nothing(tmp_path):
    ps = _copy(HELLO, tmp_path)
    part1 = sorted(ps.glob("part-00001-*.parquet"))[0]
    _rewrite_cell(part1, "matrix_z", 9, lambda c: b"PK" + c[2:-30])
    dest = tmp_path / "out"
    with pytest.raises(tsfs.CorruptDatasetError, match=rf"{part1.name} row 9, field 'matrix_z'"):
        from_petastorm(str(ps), str(dest), batch_rows=2, row_group_bytes=1024)
    _assert_nothing_committed(dest)


def test_missing_path(tmp_path):
    with pytest.raises(tsfs.DatasetNotFoundError, match="does not exist"):
        from_petastorm(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_plain_parquet_directory(tmp_path):
    src = tmp_path / "plain"
    src.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), src / "part-0.parquet")
    with pytest.raises(tsfs.DatasetNotFoundError, match=r"plain is not a Petastorm dataset.*_common_metadata"):
        read_petastorm_schema(str(src))
    pq.write_metadata(pa.schema([("x", pa.int64())]), src / "_common_metadata")
    with pytest.raises(tsfs.UnsupportedFormatError, match=r"not a Petastorm dataset.*no Unischema"):
        from_petastorm(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_tsfs_dataset_is_not_petastorm(tmp_path):
    tsfs.write_dataset(str(tmp_path / "t"), {"x": np.arange(3)})
    with pytest.raises(tsfs.DatasetNotFoundError, match="not a Petastorm dataset"):
        from_petastorm(str(tmp_path / "t"), str(tmp_path / "out"))


def test_non_nullable_field_with_nulls(tmp_path):
    ps = _copy(HELLO, tmp_path)
    part = _part0(ps)
    table = pq.read_table(part)
    i = table.schema.get_field_index("name")
    names = table.column("name").to_pylist()
    names[4] = None
    table = table.set_column(i, pa.field("name", pa.string()), pa.array(names, pa.string()))
    pq.write_table(table, part)
    with pytest.raises(tsfs.CorruptDatasetError, match=r"row 4, field 'name'.*not nullable"):
        from_petastorm(str(ps), str(tmp_path / "out"))


def test_opcode_decoder_matches_pickletools():
    """The library decodes Petastorm's pickle itself (it never imports pickle); its opcode reader
    agrees with the standard library's disassembler on every protocol."""
    import pickle
    import pickletools
    from collections import OrderedDict as OD

    from tensorstore_fs.converters._petastorm_schema import _genops

    value = [None, True, False, 0, -1, 255, 65535, -(2**31), 2**31, 2**70, -(2**70), 1.5, float("inf"),
             "", "é", "x" * 300, b"", b"\x00" * 300, (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4),
             {"a": [1, 2]}, {1, 2}, frozenset({3}), OD(a=1)]
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(value, protocol=proto)
        ours = list(_genops(data))
        theirs = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
        assert [n for n, _ in ours] == [n for n, _ in theirs], proto
        for (name, a), (_, b) in zip(ours, theirs):
            if name in ("GLOBAL", "INST", "FLOAT", "BINFLOAT") or a == b:
                continue
            assert a == b or (name == "INT" and bool(a) == b), (proto, name, a, b)


def test_library_never_imports_pickle():
    import re
    from pathlib import Path

    import tensorstore_fs

    root = Path(tensorstore_fs.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+(c?pickle|pickletools|dill|cloudpickle)\b", p.read_text(), re.M)]
    assert offenders == []
