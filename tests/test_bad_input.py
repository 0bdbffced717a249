"""Data that violates the schema: a clear error naming field, row and expectation; nothing committed."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

import tensorstore_fs as tsfs

SCHEMA = tsfs.Schema([
    tsfs.Field("id", "int64"),
    tsfs.Field("label", "int8"),
    tsfs.Field("image", "uint8", (3, 4, 4)),
    tsfs.Field("tokens", "int32", (None,)),
    tsfs.Field("vol", "float32", (2, None, None)),
    tsfs.Field("name", "string"),
    tsfs.Field("score", "float32", nullable=True),
])


def good_rows(n=4):
    return [
        {"id": i, "label": i % 3, "image": np.full((3, 4, 4), i, np.uint8), "tokens": np.arange(i + 1, dtype=np.int32),
         "vol": np.zeros((2, i + 1, 3), np.float32), "name": f"r{i}", "score": None if i % 2 else 0.5}
        for i in range(n)
    ]


def good_columns(n=4):
    return {
        "id": np.arange(n), "label": np.arange(n, dtype=np.int8), "image": np.zeros((n, 3, 4, 4), np.uint8),
        "tokens": [np.arange(i + 1, dtype=np.int32) for i in range(n)],
        "vol": [np.zeros((2, 1, 1), np.float32)] * n, "name": [f"r{i}" for i in range(n)],
    }


def _bad_rows(row: int, **changes):
    rows = good_rows()
    for k, v in changes.items():
        if v is KeyError:
            del rows[row][k]
        else:
            rows[row][k] = v
    return rows


def _bad_cols(**changes):
    cols = good_columns()
    cols.update(changes)
    return cols


CASES = [
    (_bad_rows(2, image=np.zeros((4, 4, 3), np.uint8)), r"field 'image': expected shape \(3, 4, 4\), got \(4, 4, 3\) at row 2"),
    (_bad_rows(1, image=np.zeros((3, 4), np.uint8)), r"field 'image': expected shape \(3, 4, 4\), got \(3, 4\) at row 1"),
    (_bad_rows(3, tokens=np.zeros((2, 2), np.int32)), r"field 'tokens': expected shape \(None,\), got \(2, 2\) at row 3"),
    (_bad_rows(2, vol=np.zeros((3, 1, 1), np.float32)), r"field 'vol': expected shape \(2, None, None\), got \(3, 1, 1\) at row 2"),
    (_bad_rows(1, label=300), r"field 'label': value 300 does not fit int8 \[-128, 127\] at row 1"),
    (_bad_rows(2, id=2.5), r"field 'id': expected int64 values, got float64; floats are not cast to integers \(at row 2\)"),
    (_bad_rows(0, name=7), r"field 'name': expected string, got int 7 at row 0"),
    (_bad_rows(3, name=None), r"field 'name': null value at row 3 but the field is not nullable"),
    (_bad_rows(1, image=None), r"field 'image': null value at row 1 but the field is not nullable"),
    (_bad_rows(2, tokens=None), r"field 'tokens': null value at row 2 but the field is not nullable"),
    (_bad_rows(0, extra=1), r"unknown field 'extra' in batch; schema fields are \['id', 'label'"),
    (_bad_rows(0, tokens=[1, [2, 3]]), r"field 'tokens': values are ragged or non-numeric at row 0"),
    (_bad_rows(0, image=np.full((3, 4, 4), "x")), r"field 'image': expected uint8 values, got <U1 at row 0"),
    (_bad_cols(image=np.zeros((4, 4, 4, 3), np.uint8)), r"field 'image': expected shape \(3, 4, 4\), got \(4, 4, 3\) at row 0"),
    (_bad_cols(image=np.zeros((4, 48), np.uint8)), r"field 'image': expected shape \(3, 4, 4\) \(rank 3\), got \(48,\) \(rank 1\) at row 0"),
    (_bad_cols(label=np.array([1, 2, -129, 4])), r"field 'label': value -129 does not fit int8 \[-128, 127\] at row 2"),
    (_bad_cols(label=np.array([1.0, 2, 3, 4])), r"field 'label': expected int8 values, got float64"),
    (_bad_cols(id=np.array([True, False, True, True])), None),  # bool -> int64 is a safe cast: accepted
    (_bad_cols(label=np.arange(5, dtype=np.int8)), r"columns have different lengths"),
    ({k: v for k, v in good_columns().items() if k != "image"}, r"missing field 'image' \(not nullable\) in batch of 4 rows"),
    (_bad_cols(image=[np.zeros((3, 4, 4), np.uint8)] * 3 + [np.zeros((3, 4, 5), np.uint8)]),
     r"field 'image': expected shape \(3, 4, 4\), got \(3, 4, 5\) at row 3"),
    (_bad_cols(image=pa.array([b"x"] * 4)), r"field 'image': .*at row 0"),
]


@pytest.mark.parametrize("data, match", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_batches_raise_and_commit_nothing(tmp_path, data, match):
    url = str(tmp_path / "ds")
    if match is None:
        ds = tsfs.write_dataset(url, data, SCHEMA)
        assert len(ds) == 4
        return
    with pytest.raises(tsfs.SchemaError, match=match):
        tsfs.write_dataset(url, data, SCHEMA)
    with pytest.raises(tsfs.DatasetNotFoundError):
        tsfs.open_dataset(url)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_bad_batch_in_append_keeps_previous_version(tmp_path):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, good_rows(), SCHEMA)
    with pytest.raises(tsfs.SchemaError, match="at row 2"):
        tsfs.write_dataset(url, _bad_rows(2, image=np.zeros(3, np.uint8)), mode="append")
    ds = tsfs.open_dataset(url)
    assert ds.version == 1 and len(ds) == 4
    ds.verify()


def test_a_rejected_batch_leaves_the_writer_usable(tmp_path):
    url = str(tmp_path / "ds")
    with tsfs.DatasetWriter(url, SCHEMA) as w:
        w.write(good_rows(2))
        with pytest.raises(tsfs.SchemaError, match="field 'label'"):
            w.write(_bad_rows(1, label=1000))
        w.write(good_rows(3))
    assert len(tsfs.open_dataset(url)) == 5


def test_nulls_from_arrow_and_pandas_in_non_nullable_fields(tmp_path):
    schema = tsfs.Schema([tsfs.Field("a", "int32"), tsfs.Field("s", "string")])
    with pytest.raises(tsfs.SchemaError, match=r"field 'a': null value at row 1"):
        tsfs.write_dataset(str(tmp_path / "a"), pa.table({"a": pa.array([1, None], pa.int32()), "s": ["x", "y"]}), schema)
    pd = pytest.importorskip("pandas")
    with pytest.raises(tsfs.SchemaError, match=r"field 's': null value at row 0"):
        tsfs.write_dataset(str(tmp_path / "b"), pd.DataFrame({"a": [1, 2], "s": [None, "y"]}), schema)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"mode": "replace"}, tsfs.InvalidArgumentError, r"mode must be one of \('error', 'overwrite', 'append'\), got 'replace'"),
        ({"row_group_bytes": 0}, tsfs.InvalidArgumentError, r"row_group_bytes must be a positive int, got 0"),
        ({"shard_bytes": "1MB"}, tsfs.InvalidArgumentError, r"shard_bytes must be a positive int, got '1MB'"),
        ({"schema": {"a": "int8"}}, tsfs.InvalidArgumentError, r"schema must be a tensorstore_fs.Schema, got dict"),
    ],
    ids=["mode", "row-group", "shard", "schema-type"],
)
def test_bad_writer_arguments(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tsfs.DatasetWriter(str(tmp_path / "ds"), **kwargs)


def test_unsupported_batch_type(tmp_path):
    schema = tsfs.Schema([tsfs.Field("a", "int8")])
    with pytest.raises(tsfs.InvalidArgumentError, match="unsupported batch type builtins.int"):
        tsfs.write_dataset(str(tmp_path / "ds"), iter([5]), schema)
    with pytest.raises(tsfs.InvalidArgumentError, match="a list batch must hold row dicts; row 1 is int"):
        tsfs.write_dataset(str(tmp_path / "ds"), [{"a": 1}, 5], schema)


def test_modes(tmp_path):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, good_rows(), SCHEMA)
    with pytest.raises(tsfs.DatasetExistsError, match=r"already holds a dataset \(version 1\).*mode='overwrite'"):
        tsfs.write_dataset(url, good_rows(), SCHEMA)
    ds = tsfs.write_dataset(url, good_rows(2), SCHEMA, mode="overwrite")
    assert (ds.version, len(ds), ds.parent_version) == (2, 2, 1)
    assert len(tsfs.open_dataset(url, version=1)) == 4  # older versions stay readable by number
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    with pytest.raises(tsfs.DatasetExistsError, match="exists and is not empty"):
        tsfs.write_dataset(str(other), good_rows(), SCHEMA)
    with pytest.raises(tsfs.DatasetExistsError, match="not a tensorstore_fs dataset; refusing to overwrite"):
        tsfs.write_dataset(str(other), good_rows(), SCHEMA, mode="overwrite")
    assert (other / "readme.txt").read_text() == "mine"


def test_append_requires_the_same_schema(tmp_path):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, good_rows(), SCHEMA)
    other = tsfs.Schema([f if f.name != "label" else tsfs.Field("label", "int16") for f in SCHEMA])
    with pytest.raises(tsfs.SchemaError, match=r"append to .* needs the dataset's schema: field 'label'"):
        tsfs.write_dataset(url, good_rows(), other, mode="append")
    # no schema given: the dataset's is used, and the data is validated against it
    with pytest.raises(tsfs.SchemaError, match=r"unknown field 'zzz'"):
        tsfs.write_dataset(url, [{**good_rows(1)[0], "zzz": 1}], mode="append")
    assert tsfs.open_dataset(url).version == 1


def test_empty_commit_without_schema(tmp_path):
    with pytest.raises(tsfs.SchemaError, match="no schema was given"):
        with tsfs.DatasetWriter(str(tmp_path / "ds")):
            pass
    assert not os.path.exists(tmp_path / "ds" / "_tsfs")
