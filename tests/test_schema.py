"""Schema and Field: validation on construction, JSON round trip, inference."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.schema import DTYPES, SCHEMA_FORMAT_VERSION


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_round_trips_through_json(dtype):
    shape = () if dtype in ("string", "bytes") else (3, None)
    f = tsfs.Field("x", dtype, shape, nullable=True, description="d")
    schema = tsfs.Schema([f], metadata={"k": "v"})
    again = tsfs.Schema.from_json(schema.to_json())
    assert again == schema
    assert again["x"].shape == shape


@pytest.mark.parametrize(
    "given, expected",
    [(np.float32, "float32"), (np.dtype("<i8"), "int64"), (np.dtype(">u2"), "uint16"), (bool, "bool"),
     (str, "string"), (bytes, "bytes"), ("U", "string"), ("S", "bytes")],
    ids=["np-type", "le-dtype", "be-dtype", "py-bool", "py-str", "py-bytes", "unicode", "bytestring"],
)
def test_dtype_spellings_normalise(given, expected):
    assert tsfs.Field("x", given).dtype == expected


def test_shape_normalisation():
    assert tsfs.Field("x", "float32", 5).shape == (5,)
    assert tsfs.Field("x", "float32", [3, -1]).shape == (3, None)
    assert tsfs.Field("x", "float32", (3, None, None)).is_variable
    assert tsfs.Field("x", "float32", (3, 4)).is_fixed_tensor
    assert tsfs.Field("x", "float32").is_scalar


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "x", "dtype": "complex64"}, r"field 'x': unsupported dtype .*complex64.*expected one of bool"),
        ({"name": "x", "dtype": "float32", "shape": (3, 0)}, r"field 'x': shape dimensions must be positive"),
        ({"name": "x", "dtype": "float32", "shape": (2.5,)}, r"field 'x': shape dimensions must be positive"),
        ({"name": "x", "dtype": "float32", "shape": "abc"}, r"field 'x': shape dimensions"),
        ({"name": "", "dtype": "int8"}, r"field name '' is invalid"),
        ({"name": "a b", "dtype": "int8"}, r"field name 'a b' is invalid"),
        ({"name": "__pad__", "dtype": "bool"}, r"field name '__pad__' is reserved"),
        ({"name": "s", "dtype": "string", "shape": (3,)}, r"field 's': dtype string supports only scalar shape"),
        ({"name": "x", "dtype": "int8", "nullable": "yes"}, r"field 'x': nullable must be a bool"),
    ],
    ids=["dtype", "zero-dim", "float-dim", "str-shape", "empty-name", "space", "reserved", "string-tensor", "nullable"],
)
def test_bad_fields_are_rejected(kwargs, match):
    with pytest.raises(tsfs.SchemaError, match=match):
        tsfs.Field(**kwargs)


def test_schema_validation():
    with pytest.raises(tsfs.SchemaError, match=r"duplicate field names in schema: \['a'\]"):
        tsfs.Schema([tsfs.Field("a", "int8"), tsfs.Field("a", "int16")])
    with pytest.raises(tsfs.SchemaError, match="at least one field"):
        tsfs.Schema([])
    with pytest.raises(tsfs.SchemaError, match="expects Field objects"):
        tsfs.Schema(["a"])
    with pytest.raises(ValueError):  # SchemaError is also a ValueError
        tsfs.Schema([])


def test_schema_is_frozen_and_hashable():
    s = tsfs.Schema([tsfs.Field("a", "int8")])
    with pytest.raises(AttributeError):
        s.fields = ()
    with pytest.raises(AttributeError):
        s.fields[0].name = "b"
    assert hash(s) == hash(tsfs.Schema([tsfs.Field("a", "int8")]))
    assert s.field("a").dtype == "int8"
    with pytest.raises(tsfs.SchemaError, match=r"unknown field 'b'; schema fields are \['a'\]"):
        s.field("b")


def test_json_has_format_version_and_rejects_unknown_versions():
    s = tsfs.Schema([tsfs.Field("a", "int8", description="label")])
    d = json.loads(s.to_json())
    assert d["format_version"] == SCHEMA_FORMAT_VERSION
    assert d["fields"][0] == {"name": "a", "dtype": "int8", "shape": [], "nullable": False,
                              "description": "label", "encoding": "raw"}
    d["format_version"] = 99
    with pytest.raises(tsfs.UnsupportedFormatError, match="format_version 99 is not supported"):
        tsfs.Schema.from_dict(d)
    d["format_version"] = SCHEMA_FORMAT_VERSION
    d["fields"][0]["encoding"] = "jpeg"
    with pytest.raises(tsfs.UnsupportedFormatError, match="encoding 'jpeg' is not supported"):
        tsfs.Schema.from_dict(d)
    with pytest.raises(tsfs.SchemaError, match="not valid JSON"):
        tsfs.Schema.from_json("{nope")


def test_infer_schema_from_columns_and_rows():
    cols = {
        "id": np.arange(4),
        "img": np.zeros((4, 3, 8, 8), np.uint8),
        "name": np.array(["a", "b", "c", "d"]),
    }
    s = tsfs.infer_schema(cols)
    assert [(f.name, f.dtype, f.shape) for f in s] == [
        ("id", "int64", ()), ("img", "uint8", (3, 8, 8)), ("name", "string", ())
    ]
    rows = [
        {"tok": np.arange(3, dtype=np.int32), "img": np.zeros((3, 2, 5)), "label": 1, "txt": "a", "b": b"x"},
        {"tok": np.arange(5, dtype=np.int32), "img": np.zeros((3, 4, 5)), "label": None, "txt": "b", "b": b"y"},
    ]
    s = tsfs.infer_schema(rows)
    assert s["tok"].shape == (None,) and s["tok"].dtype == "int32"
    assert s["img"].shape == (3, None, 5) and s["img"].dtype == "float64"
    assert s["label"].nullable and s["label"].dtype == "int64"
    assert s["txt"].dtype == "string" and s["b"].dtype == "bytes"


@pytest.mark.parametrize(
    "data, match",
    [
        ({}, "empty batch"),
        ([{"a": None}], "field 'a': it holds no values"),
        ([{"a": np.zeros(2)}, {"a": np.zeros((2, 2))}], "field 'a': rows have different ranks"),
        ([{"a": [1, [2]]}], "field 'a': values are ragged"),
    ],
    ids=["empty", "all-null", "ranks", "ragged"],
)
def test_infer_schema_errors(data, match):
    with pytest.raises(tsfs.SchemaError, match=match):
        tsfs.infer_schema(data)


def test_fixed_rows_over_parquets_value_limit_are_refused_up_front():
    # a fixed-shape row is one fixed_len_byte_array value, whose length is an int32: larger rows
    # were an OverflowError from pyarrow when the first batch was written
    from tensorstore_fs.schema import MAX_FIXED_ROW_BYTES

    assert tsfs.Field("x", "uint8", (MAX_FIXED_ROW_BYTES,)).row_nbytes == MAX_FIXED_ROW_BYTES
    for dtype, shape in (("uint8", (MAX_FIXED_ROW_BYTES + 1,)), ("float32", (2**20, 2**20)), ("int16", (2**30,))):
        with pytest.raises(tsfs.SchemaError, match=r"field 'x': a row of shape .* bytes; a fixed-shape tensor row "
                                                   r"holds at most 2,147,483,647"):
            tsfs.Field("x", dtype, shape)
    assert tsfs.Field("x", "float32", (None, 2**20)).is_variable  # a variable shape has no such limit
