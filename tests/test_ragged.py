"""RaggedRows: flat values plus offsets for variable-shape fields (``to_batches(variable="flat")``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.encoding import _flat_rows, decode_column, pad_rows, variable_values
from tensorstore_fs.ragged import RaggedRows


def _rows():
    values = np.arange(20, dtype=np.int32)
    offsets = np.array([2, 5, 5, 11, 19], dtype=np.int64)
    shapes = np.array([[3], [0], [6], [8]], dtype=np.int64)
    return RaggedRows(values, offsets, shapes, np.array([True, True, False, True]))


def test_rows_slices_and_lengths():
    r = _rows()
    assert len(r) == 4 and r.dtype == np.int32
    assert np.array_equal(r[0], [2, 3, 4]) and r[1].size == 0 and r[2] is None
    assert np.array_equal(r[-1], np.arange(11, 19))
    assert np.array_equal(r.lengths, [3, 0, 6, 8])
    tail = r[1:]
    assert isinstance(tail, RaggedRows) and len(tail) == 3 and tail[1] is None
    assert np.shares_memory(tail.values, r.values)  # a view, never a copy
    assert [x is None for x in r.to_list()] == [False, False, True, False]
    assert len(r[3:1]) == 0 and "4 rows" in repr(r)
    with pytest.raises(IndexError):
        r[4]
    with pytest.raises(ValueError, match="step"):
        r[::2]
    with pytest.raises(ValueError, match="offsets"):
        RaggedRows(r.values, r.offsets[:-1], r.shapes)


def test_concat_rebases_offsets_and_fills_validity():
    r = _rows()
    plain = RaggedRows(np.arange(100, 105, dtype=np.int32), np.array([0, 2, 5]), np.array([[2], [3]]))
    both = RaggedRows.concat([r[1:], plain, r[:1]])
    assert len(both) == 6 and both.offsets[0] == 0 and not np.shares_memory(both.values, r.values)
    want = [r[1], r[2], r[3], plain[0], plain[1], r[0]]
    for got, w in zip(both, want):
        assert (got is None) if w is None else np.array_equal(got, w)
    assert both.valid.tolist() == [True, False, True, True, True, True]
    assert RaggedRows.concat([plain, plain]).valid is None
    with pytest.raises(ValueError):
        RaggedRows.concat([])


def test_values_not_element_aligned_in_the_payload_are_copied_once():
    # another writer's payload with rows at odd byte offsets: no typed view exists, so the rows
    # are copied into one flat array; values and shapes as the per-row decode gives them
    f = tsfs.Field("x", "int32", (None, 2))
    rows = [np.array([[1, 2]], np.int32), np.zeros((0, 2), np.int32), np.array([[3, 4], [5, 6]], np.int32)]
    payload = b"\x00" + b"".join(r.tobytes() for r in rows)
    offsets = np.array([1, 9, 9, 25], dtype=np.int64)
    arr = pa.Array.from_buffers(pa.large_binary(), 3, [None, pa.py_buffer(offsets), pa.py_buffer(payload)])
    shapes = pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 0, 2, 2, 2], pa.int32()), 2)
    flat = _flat_rows(arr, shapes, f)
    want = variable_values(arr, shapes, f)
    assert [r.shape for r in flat] == [r.shape for r in want] == [(1, 2), (0, 2), (2, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(flat, want))
    assert np.array_equal(flat.values, [1, 2, 3, 4, 5, 6]) and np.array_equal(flat.offsets, [0, 2, 2, 6])


def test_to_batches_variable_flat(tmp_path):
    rng = np.random.default_rng(2)
    toks = [rng.integers(0, 1000, int(rng.integers(0, 30))).astype(np.int32) for _ in range(700)]
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("toks", "int32", (None,))])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(700), "toks": toks}, schema, row_group_bytes=4000)
    assert len(ds.row_groups) > 3
    batches = list(ds.to_batches(batch_size=100, variable="flat"))
    assert [len(b["toks"]) for b in batches] == [100] * 7
    got = [r for b in batches for r in b["toks"]]
    assert all(np.array_equal(a, b) for a, b in zip(got, toks))
    empty = list(ds.to_batches(batch_size=100, variable="flat", filter=pa.compute.field("id") < 0))
    assert empty == []
    with pytest.raises(tsfs.InvalidArgumentError, match=r"variable must be one of \('list', 'pad', 'flat'\), got 'ragged'"):
        ds.to_batches(variable="ragged")


def test_the_old_variable_keywords_still_work_and_warn(tmp_path):
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("toks", "int32", (None,))])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(50), "toks": [np.arange(i % 4) for i in range(50)]},
                            schema)
    for old, new in (({"flat_variable": True}, "flat"), ({"pad_variable": True}, "pad"),
                     ({"pad_variable": False, "flat_variable": False}, "list")):
        with pytest.warns(DeprecationWarning, match="variable="):
            got = list(ds.to_batches(batch_size=20, **old))
        want = list(ds.to_batches(batch_size=20, variable=new))
        assert [list(b) for b in got] == [list(b) for b in want]
        for b, w in zip(got, want):
            assert type(b["toks"]) is type(w["toks"])
        with pytest.warns(DeprecationWarning):
            assert type(next(iter(ds.scanner(**old)))["toks"]) is type(want[0]["toks"])
    with pytest.warns(DeprecationWarning), pytest.raises(tsfs.InvalidArgumentError, match="exclusive"):
        ds.to_batches(pad_variable=True, flat_variable=True)
    with pytest.warns(DeprecationWarning), pytest.raises(tsfs.InvalidArgumentError, match="not with"):
        ds.to_batches(variable="pad", pad_variable=True)


@pytest.mark.parametrize("shape", [(None,), (None, 2), (2, None)])
def test_padding_slices_of_one_flat_decode_equals_padding_each_batch(tmp_path, shape):
    # the loaders decode a read's ragged rows flat once and pad each batch's slice (pad_rows);
    # it must equal decoding that batch padded (nulls, empty rows, a shape the fast pad declines)
    rng = np.random.default_rng(7)
    f = tsfs.Field("v", "float32", shape, nullable=True)

    def row(i):
        if i % 5 == 0:
            return None
        dims = [int(rng.integers(0, 4)) if d is None else d for d in shape]
        return rng.standard_normal(dims).astype(np.float32)

    rows = [row(i) for i in range(60)]
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"v": rows}, tsfs.Schema([f]))
    table = pa.concat_tables([tsfs.open_dataset(ds.url).scanner().row_group_tables().__next__()]).combine_chunks()
    flat = decode_column(table, f, flat=True)["v"]
    for a, b in [(0, 60), (0, 7), (7, 30), (30, 31), (31, 60), (12, 12)]:
        want = decode_column(table.slice(a, b - a), f, pad=True)
        got = pad_rows(flat[a:b], f)
        assert set(got) == set(want) == {"v", "v__shape"}
        for k in want:
            np.testing.assert_array_equal(np.ma.getdata(got[k]), np.ma.getdata(want[k]), err_msg=f"{k} [{a}:{b}]")
            assert got[k].dtype == want[k].dtype
