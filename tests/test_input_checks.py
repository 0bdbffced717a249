"""Writer input checks of issue 17: reserved field names, duplicate columns, lossy casts and values
the writer used to let through as raw exceptions. Every refusal is a SchemaError naming the field
(and row and value where there is one), and nothing is committed or left behind."""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorstore_fs as tsfs
from tensorstore_fs import schema as schema_mod
from tensorstore_fs.schema import RESERVED_SUFFIXES


def _refused(tmp_path, data, schema, match, **options):
    """``write_dataset`` raises SchemaError matching ``match`` and leaves nothing at the URL."""
    url = str(tmp_path / "ds")
    with pytest.raises(tsfs.SchemaError, match=match):
        tsfs.write_dataset(url, data, schema, **options)
    with pytest.raises(tsfs.DatasetNotFoundError):
        tsfs.open_dataset(url)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------------------------------------
# Reserved names
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, match", [
    ("tok__shape", r"field name 'tok__shape' is reserved: it ends with '__shape'"),
    ("tok__offsets", r"field name 'tok__offsets' is reserved: it ends with '__offsets'"),
    ("img__valid", r"field name 'img__valid' is reserved: it ends with '__valid'"),
    ("__pad__", r"field name '__pad__' is reserved: names starting with '__'"),
    ("__row_id__", r"field name '__row_id__' is reserved: names starting with '__'"),
    ("__shape__tok", r"field name '__shape__tok' is reserved: names starting with '__'"),
])
def test_reserved_names_are_refused(name, match):
    with pytest.raises(tsfs.SchemaError, match=match):
        tsfs.Field(name, "int32")


def test_reserved_suffixes_cover_what_readers_add(tmp_path):
    """Every key a padded or flat read adds next to a field ends with a reserved suffix."""
    schema = tsfs.Schema([tsfs.Field("tok", "int32", (None,), nullable=True), tsfs.Field("lab", "int8", nullable=True)])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"tok": [np.arange(3, dtype=np.int32), None],
                                                   "lab": np.ma.MaskedArray([1, 2], mask=[False, True])}, schema)
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from tensorstore_fs.readers.torch import TorchDataset

    keys = set()
    for variable in ("pad", "flat"):
        batch = next(iter(DataLoader(TorchDataset(ds, batch_size=2, variable=variable), batch_size=None)))
        keys |= {k for k in batch if isinstance(batch[k], torch.Tensor)}
    derived = {k for k in keys if k not in schema.names and not k.startswith("__")}
    assert derived and all(k.endswith(RESERVED_SUFFIXES) for k in derived), derived


def test_a_reserved_name_in_a_batch_is_refused_without_writing(tmp_path):
    data = {"tok": [np.arange(3, dtype=np.int32)], "tok__shape": [np.array([7], np.int64)]}
    _refused(tmp_path, data, None, r"field name 'tok__shape' is reserved: it ends with '__shape'")


def _legacy_schema(*fields):
    """Fields built as an older writer (before the suffixes were reserved) could."""
    token = schema_mod._STORED.set(True)
    try:
        return tsfs.Schema([tsfs.Field(*f) for f in fields])
    finally:
        schema_mod._STORED.reset(token)


def test_old_dataset_with_a_reserved_suffix_still_opens(tmp_path, caplog):
    url = str(tmp_path / "ds")
    schema = _legacy_schema(("x__shape", "int32"), ("tok", "int32", (None,)))
    with tsfs.DatasetWriter(url, schema) as w:
        w.write({"x__shape": np.arange(3, dtype=np.int32), "tok": [np.arange(i + 1, dtype=np.int32) for i in range(3)]})
    with caplog.at_level(logging.WARNING, logger="tensorstore_fs.schema"):
        ds = tsfs.open_dataset(url)
    assert "'x__shape' ends with the reserved suffix '__shape'" in caplog.text
    assert ds.schema.names == ["x__shape", "tok"]
    assert ds.to_table().column("x__shape").to_pylist() == [0, 1, 2]
    ds.verify()


def test_old_dataset_whose_field_collides_with_a_derived_name_is_refused_clearly(tmp_path):
    url = str(tmp_path / "ds")
    schema = _legacy_schema(("tok", "int32", (None,)), ("tok__shape", "int64", (1,)))
    with tsfs.DatasetWriter(url, schema) as w:
        w.write({"tok": [np.arange(2, dtype=np.int32)], "tok__shape": np.array([[7]])})
    with pytest.raises(tsfs.CorruptDatasetError,
                       match=r"manifest-0000000001.json: field 'tok__shape' collides with the '__shape' array readers "
                             r"derive from field 'tok'.*read the shard files with pyarrow"):
        tsfs.open_dataset(url)
    with pytest.raises(tsfs.UnsupportedFormatError, match="collides"):
        tsfs.Schema.from_json(schema.to_json())


# ---------------------------------------------------------------------------------------------
# Duplicate columns
# ---------------------------------------------------------------------------------------------

def test_duplicate_columns_are_refused(tmp_path):
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32")])
    table = pa.Table.from_arrays([pa.array([1, 2]), pa.array([1.0, 2.0], pa.float32()), pa.array([3, 4])],
                                 names=["id", "x", "id"])
    match = r"column 'id' appears more than once in the batch \(pyarrow {}, again at position 2\)"
    _refused(tmp_path, table, schema, match.format("Table"))
    _refused(tmp_path, table, None, match.format("Table"))  # also when the schema is inferred
    _refused(tmp_path, table.to_batches()[0], schema, match.format("RecordBatch"))
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame([[1, 1.0, 3], [2, 2.0, 4]], columns=["id", "x", "id"])
    _refused(tmp_path, frame, schema, r"column 'id' appears more than once in the batch \(pandas DataFrame")


# ---------------------------------------------------------------------------------------------
# Lossy casts
# ---------------------------------------------------------------------------------------------

LOSSY = [
    # (field, column, error, what allow_lossy_cast=True stores)
    (("h", "float16"), np.array([1.0, 2.0, 1e6]),
     r"field 'h': value 1000000.0 overflows float16 \(largest finite 65504\) at row 2; pass allow_lossy_cast=True",
     np.array([1.0, 2.0, np.inf], np.float16)),
    (("h", "float16"), [0.5, -1e6, 3],
     r"field 'h': value -1000000.0 overflows float16 .* at row 1", np.array([0.5, -np.inf, 3], np.float16)),
    (("h", "float16"), np.array([1, 70000], np.int32),
     r"field 'h': value 70000 overflows float16 .* at row 1", np.array([1, np.inf], np.float16)),
    (("h", "float16"), np.array([65535], np.uint16),
     r"field 'h': value 65535 overflows float16 .* at row 0", np.array([np.inf], np.float16)),
    (("v", "float32", (2,)), np.array([[0.0, 1.0], [2.0, 1e39], [1e300, 0.0]]),
     r"field 'v': value 1e\+39 overflows float32 \(largest finite 3.40282e\+38\) at row 1",
     np.array([[0, 1], [2, np.inf], [np.inf, 0]], np.float32)),
    (("v", "float16", (None,)), [np.zeros(2), np.array([1.0, 7e4, 1.0])],
     r"field 'v': value 70000.0 overflows float16 .* at row 1", None),
    (("i", "int32"), np.array([0, 2**31, -2**40], np.int64),
     r"field 'i': value 2147483648 does not fit int32 \[-2147483648, 2147483647\] at row 1; pass allow_lossy_cast",
     np.array([0, -2**31, 0], np.int32)),
    (("i", "uint8"), [1, 2, 256],
     r"field 'i': value 256 does not fit uint8 \[0, 255\] at row 2", np.array([1, 2, 0], np.uint8)),
    (("i", "int64"), np.array([2**63], np.uint64),
     r"field 'i': value 9223372036854775808 does not fit int64 .* at row 0", np.array([-2**63], np.int64)),
    (("i", "int16"), np.array([1.0, -2.5, 3.0]),
     r"field 'i': expected int16 values, got float64; floats are not cast to integers \(at row 1\): value -2.5; "
     r"pass allow_lossy_cast=True", np.array([1, -2, 3], np.int16)),
    (("i", "int8", (2,)), [[1, 2], [3.75, 4]],
     r"field 'i': expected int8 values, got float64; floats are not cast to integers \(at row 1\): value 3.75",
     np.array([[1, 2], [3, 4]], np.int8)),
]


@pytest.mark.parametrize("spec, column, match, lossy", LOSSY, ids=[f"lossy{i}" for i in range(len(LOSSY))])
def test_lossy_casts_are_refused_unless_allowed(tmp_path, spec, column, match, lossy):
    schema = tsfs.Schema([tsfs.Field(*spec)])
    _refused(tmp_path, {spec[0]: column}, schema, match)
    ds = tsfs.write_dataset(str(tmp_path / "lossy"), {spec[0]: column}, schema, allow_lossy_cast=True)
    values = ds.head(10)[spec[0]]
    if lossy is None:
        assert np.isinf(values[1]).any()
    else:
        assert np.asarray(values).dtype == lossy.dtype
        np.testing.assert_array_equal(np.asarray(values), lossy)


@pytest.mark.parametrize("column, match", [
    (np.array([1.0, np.nan]),
     r"field 'i': value nan has no int32 value \(NaN, inf or outside \[-2147483648, 2147483647\]\) at row 1"),
    (np.array([np.inf]), r"field 'i': value inf has no int32 value"),
    (np.array([0.0, 3e9]), r"field 'i': value 3000000000.0 has no int32 value .* at row 1"),
    (np.array([-np.inf], np.float16), r"field 'i': value -inf has no int32 value"),
])
def test_floats_with_no_integer_value_are_refused_even_when_lossy(tmp_path, column, match):
    schema = tsfs.Schema([tsfs.Field("i", "int32")])
    _refused(tmp_path, {"i": column}, schema, match, allow_lossy_cast=True)
    _refused(tmp_path, {"i": column}, schema, r"field 'i': expected int32 values, got float.*floats are not cast")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_what_is_not_a_loss(tmp_path, dtype):
    """inf and NaN stay themselves, values round to the nearest float (65519 -> 65504 in float16)."""
    values = np.array([np.inf, -np.inf, np.nan, 0.1, 65519.0, -65519.0])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"x": values}, tsfs.Schema([tsfs.Field("x", dtype)]))
    got = ds.to_table().column("x").to_numpy()
    np.testing.assert_array_equal(got, values.astype(dtype))
    assert np.isfinite(got[3:]).all()


def test_allow_lossy_cast_on_the_writer_and_its_check(tmp_path):
    schema = tsfs.Schema([tsfs.Field("h", "float16")])
    with pytest.raises(tsfs.InvalidArgumentError, match="allow_lossy_cast must be a bool, got 'yes'"):
        tsfs.DatasetWriter(str(tmp_path / "a"), schema, allow_lossy_cast="yes")
    with tsfs.DatasetWriter(str(tmp_path / "b"), schema) as w:
        with pytest.raises(tsfs.SchemaError, match="overflows float16"):
            w.write({"h": [1e6]})
        w.write({"h": [1.0]})  # the writer stays usable, the refused batch is not written
    assert tsfs.open_dataset(str(tmp_path / "b")).to_table().column("h").to_pylist() == [1.0]
    with tsfs.DatasetWriter(str(tmp_path / "c"), schema, allow_lossy_cast=True) as w:
        w.write({"h": [1e6]})
    assert tsfs.open_dataset(str(tmp_path / "c")).to_table().column("h").to_pylist() == [math.inf]


# ---------------------------------------------------------------------------------------------
# Values that used to raise raw exceptions
# ---------------------------------------------------------------------------------------------

TEXT = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("s", "string", nullable=True)])


@pytest.mark.parametrize("column", [["a", None, "b\ud800c"], np.array(["a", "x", "b\ud800c"])], ids=["list", "numpy"])
def test_lone_surrogate_is_a_schema_error(tmp_path, column):
    data = {"id": np.arange(3), "s": column}
    _refused(tmp_path, data, TEXT, r"field 's': the string at row 2 cannot be stored as UTF-8: it holds a lone "
                                   r"surrogate '\\ud800' at position 1")


def test_bad_value_after_flushed_row_groups_leaves_no_shard(tmp_path):
    """A refused batch after row groups (and a whole shard) hit the disk: nothing committed, no
    shard file left, the previous version intact."""
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, {"id": np.arange(2), "s": ["x", "y"]}, TEXT)
    before = sorted(p.name for p in (tmp_path / "ds" / "data").iterdir())
    good = {"id": np.arange(5000), "s": ["v" * 50] * 5000}
    batches = [good, good, {"id": np.arange(2), "s": ["ok", "\udcff"]}]
    with pytest.raises(tsfs.SchemaError, match=r"field 's': the string at row 1"):
        tsfs.write_dataset(url, iter(batches), mode="append", row_group_bytes=64 << 10, shard_bytes=256 << 10)
    assert sorted(p.name for p in (tmp_path / "ds" / "data").iterdir()) == before
    ds = tsfs.open_dataset(url)
    assert (ds.version, len(ds)) == (1, 2)


ALL = tsfs.Schema([
    tsfs.Field("i", "int32"), tsfs.Field("f", "float16"), tsfs.Field("b", "bool"), tsfs.Field("s", "string"),
    tsfs.Field("y", "bytes"), tsfs.Field("t", "float32", (2, 2)), tsfs.Field("v", "int16", (None, 2)),
])


def _good(n=2):
    return {"i": np.arange(n, dtype=np.int32), "f": np.zeros(n, np.float16), "b": np.zeros(n, bool), "s": ["a"] * n,
            "y": [b"x"] * n, "t": np.zeros((n, 2, 2), np.float32), "v": [np.zeros((1, 2), np.int16)] * n}


@pytest.mark.parametrize("change, match", [
    ({"i": 5}, r"field 'i': a column must be a sequence with one entry per row .*got int 5"),
    ({"s": "ab"}, r"field 's': a column must hold one entry per row, got a single str 'ab'"),
    ({"i": [1, 2**70]}, r"field 'i': value 1180591620717411303424 does not fit int32 .* at row 1"),
    ({"f": [1.0, 10**400]}, r"field 'f': value 1000000000.* overflows float16 at row 1"),
    ({"f": [1, 10**30]}, r"field 'f': value 1e\+30 overflows float16 .* at row 1"),
    ({"i": [1, "2"]}, r"field 'i': expected int32, got str '2' at row 1"),
    ({"i": [1, 2.0 + 1j]}, r"field 'i': expected int32, got complex .* at row 1"),
    ({"i": [1, None]}, r"field 'i': null value at row 1 but the field is not nullable"),
    ({"f": [1.0, [2.0]]}, r"field 'f': expected float16, got list .* at row 1"),
    ({"s": ["a", b"b"]}, r"field 's': expected string, got bytes b'b' at row 1"),
    ({"y": [b"a", "b"]}, r"field 'y': expected bytes, got str 'b' at row 1"),
    ({"t": [np.zeros((2, 2)), [[1, 2], [3]]]}, r"field 't': values are ragged or non-numeric at row 1"),
    ({"t": [np.zeros((2, 2)), np.zeros((2, 3))]}, r"field 't': expected shape \(2, 2\), got \(2, 3\) at row 1"),
    ({"t": [np.zeros((2, 2)), "ab"]}, r"field 't': expected shape \(2, 2\), got \(\) at row 1"),
    ({"t": [np.zeros((2, 2)), [["a", "b"], ["c", "d"]]]}, r"field 't': expected float32 values, got <U1 at row 1"),
    ({"v": [np.zeros((1, 2), np.int16), np.zeros((1, 3), np.int16)]}, r"field 'v': expected shape \(None, 2\), got \(1, 3\) at row 1"),
    ({"v": [np.zeros((1, 2), np.int16), {"a": 1}]}, r"field 'v': values are ragged or non-numeric at row 1"),
    ({"b": [True, 2]}, r"field 'b': expected bool values, got int64"),
    ({"i": np.array(["1", "2"])}, r"field 'i': expected int32 values, got <U1 at row 0"),
    ({"i": np.array([1 + 0j, 2])}, r"field 'i': expected int32 values, got complex128"),
    ({"i": np.array(["2020-01-01", "2020-01-02"], "datetime64[D]")}, r"field 'i': expected int32 values, got datetime64"),
], ids=lambda v: None if isinstance(v, (str, type(None))) else "-".join(v))
def test_bad_values_get_schema_errors(tmp_path, change, match):
    _refused(tmp_path, {**_good(), **change}, ALL, match)


@pytest.mark.parametrize("rows", [
    [np.zeros((1, 2), np.int8), np.zeros((0, 2**31), np.int8)],  # the same dtype: one vectorised shape check
    [np.zeros((1, 2), np.int8), np.zeros((0, 2**31), np.int64)],  # cast row by row
])
def test_a_variable_dimension_beyond_int32_is_refused(tmp_path, rows):
    """Shape columns are int32; only an empty row can claim a larger extent."""
    schema = tsfs.Schema([tsfs.Field("w", "int8", (None, None))])
    _refused(tmp_path, {"w": rows}, schema,
             r"field 'w': row 1 has shape \(0, 2147483648\); a variable dimension holds at most 2147483647 values")


_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.one_of(st.characters(), st.sampled_from("\ud800\udcff")), max_size=4),
    st.binary(max_size=4), st.lists(st.integers(-300, 300), max_size=5),
    st.lists(st.lists(st.floats(-1e5, 1e5), min_size=2, max_size=3), max_size=3), st.complex_numbers(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(ALL.names), st.lists(_VALUE, min_size=2, max_size=2), min_size=1),
       st.booleans())
def test_any_value_gets_a_library_error_or_is_written(tmp_path, change, lossy):
    """Random values in every kind of field: the writer accepts them or raises a TensorstoreError,
    never a raw exception."""
    with tsfs.DatasetWriter(str(tmp_path / "fuzz"), ALL, mode="overwrite", allow_lossy_cast=lossy) as w:
        try:
            w.write({**_good(), **change})
        except tsfs.TensorstoreError:
            pass
        w.abort()
