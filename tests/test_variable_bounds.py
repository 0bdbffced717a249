"""Variable-shape rows from someone else's dataset cannot hurt the reader (issue 17, items 9 and 11).

* Padding is bounded: each batch is padded to its own widest extents, and past a cap
  (``max_padded_bytes``; by default the larger of 1 GiB and 16x the rows' own bytes) the read
  raises InvalidArgumentError naming the field, the batch's rows and the shape, instead of
  allocating: a valid 400 KB dataset of a (1, 100000) and a (100000, 1) row would pad to 1e10 values.
* Stored shapes are checked when rows are decoded: a negative dimension, a product that wraps
  around int64, a fixed dimension other than the schema's are a CorruptDatasetError naming the
  file, the row group, the field and the row (in every mode, flat included), never a raw ValueError.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorstore_fs as tsfs
from tensorstore_fs._crc import crc32c
from tensorstore_fs.errors import CorruptDatasetError, InvalidArgumentError
from tensorstore_fs.ragged import MAX_DIM, MAX_ROW_BYTES, padded_shape, shape_fault
from tensorstore_fs.read import ReadOptions

# -- item 9: padding bounded by the batch and a cap ---------------------------------------------


def _hostile(tmp_path) -> tsfs.Dataset:
    """Two float16 rows, 400 KB in all, whose per-dimension max is (100000, 100000): 37.3 GiB padded."""
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float16", (None, None))])
    rows = [np.ones((1, 100_000), np.float16), np.ones((100_000, 1), np.float16)]
    return tsfs.write_dataset(str(tmp_path / "hostile"), {"id": np.arange(2), "x": rows}, schema)


PAD_ERROR = (r"field 'x': padding this batch of 2 rows .* shape \(2, 100000, 100000\) of float16, 37\.3 GiB, past "
             r"the padding cap of 1\.0 GiB .*the widest rows of the batch: row [01] \(1\d*, 1\d*\), "
             r"row [01] \(1\d*, 1\d*\)\. Pass a larger max_padded_bytes=.*variable='flat'")


def test_to_batches_refuses_to_pad_a_hostile_batch(tmp_path):
    ds = _hostile(tmp_path)
    with pytest.raises(InvalidArgumentError, match=PAD_ERROR):
        next(ds.to_batches(variable="pad", batch_size=2))
    # unpadded modes read it, and a batch of one row pads to that row's own shape
    flat = next(ds.to_batches(variable="flat", batch_size=2))["x"]
    assert flat.shapes.tolist() == [[1, 100_000], [100_000, 1]] and len(flat.values) == 200_000
    rows = next(ds.to_batches(variable="list", batch_size=2))["x"]
    assert [r.shape for r in rows] == [(1, 100_000), (100_000, 1)]
    one = [b["x"].shape for b in ds.to_batches(variable="pad", batch_size=1)]
    assert one == [(1, 1, 100_000), (1, 100_000, 1)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_torch_dataset_refuses_to_pad_a_hostile_batch(tmp_path, shuffle):
    pytest.importorskip("torch")
    from tensorstore_fs.readers.torch import TorchDataset

    ds = _hostile(tmp_path)
    with pytest.raises(InvalidArgumentError, match=PAD_ERROR):
        next(iter(TorchDataset(ds, batch_size=2, shuffle=shuffle)))  # variable="pad" is its default
    got = next(iter(TorchDataset(ds, batch_size=2, shuffle=shuffle, variable="flat")))
    assert got["x"].numel() == 200_000


def test_tf_dataset_refuses_to_pad_a_hostile_batch(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from tensorstore_fs.readers.tf import make_tf_dataset

    ds = _hostile(tmp_path)
    with pytest.raises(tf.errors.OpError, match="InvalidArgumentError: " + PAD_ERROR):
        next(iter(make_tf_dataset(ds, batch_size=2, variable="pad")))
    ragged = next(iter(make_tf_dataset(ds, batch_size=2)))["x"]
    assert int(tf.size(ragged.flat_values)) == 200_000


def _lengths(tmp_path) -> tsfs.Dataset:
    """Token rows of lengths 1, 2, 100, 3, 1, 1 (a long row in the second batch of two)."""
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("tok", "int32", (None,))])
    lengths = [1, 2, 100, 3, 1, 1]
    rows = [np.full(n, i, np.int32) for i, n in enumerate(lengths)]
    return tsfs.write_dataset(str(tmp_path / "tok"), {"id": np.arange(6), "tok": rows}, schema)


def _widths(batches, key="tok") -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in b[key].shape) for b in batches]


def test_each_batch_is_padded_to_its_own_widest_rows(tmp_path):
    ds = _lengths(tmp_path)
    want = [(2, 2), (2, 100), (2, 1)]
    assert _widths(ds.to_batches(variable="pad", batch_size=2)) == want
    pytest.importorskip("torch")
    from tensorstore_fs.readers.torch import TorchDataset

    assert _widths(TorchDataset(ds, batch_size=2)) == want
    got = {tuple(b["id"].tolist()): tuple(b["tok"].shape) for b in TorchDataset(ds, batch_size=2, shuffle=True)}
    lengths = [1, 2, 100, 3, 1, 1]
    assert all(w == (2, max(lengths[i] for i in ids)) for ids, w in got.items())


def test_tf_pads_each_batch_not_each_chunk(tmp_path):
    """tf.data takes several batches per Python call: a padded field still gets each batch's own width."""
    pytest.importorskip("tensorflow")
    from tensorstore_fs.readers.tf import make_tf_dataset

    ds = _lengths(tmp_path)
    assert _widths(make_tf_dataset(ds, batch_size=2, variable="pad")) == [(2, 2), (2, 100), (2, 1)]


def test_the_cap_is_configurable(tmp_path):
    schema = tsfs.Schema([tsfs.Field("x", "float32", (None, None))])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"x": [np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)]},
                            schema)
    # padded: (2, 3, 3) float32 = 72 bytes
    assert next(ds.to_batches(variable="pad", max_padded_bytes=72))["x"].shape == (2, 3, 3)
    with pytest.raises(InvalidArgumentError, match=r"\(2, 3, 3\) of float32, 72 B, past the padding cap of 71 B "
                                                   r"\(max_padded_bytes=71\)"):
        next(ds.to_batches(variable="pad", max_padded_bytes=71))
    pytest.importorskip("torch")
    from tensorstore_fs.readers.torch import TorchDataset

    with pytest.raises(InvalidArgumentError, match="max_padded_bytes=71"):
        next(iter(TorchDataset(ds, batch_size=2, max_padded_bytes=71)))
    assert next(iter(TorchDataset(ds, batch_size=2, max_padded_bytes=72)))["x"].shape == (2, 3, 3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1GiB", True])
def test_a_bad_cap_is_refused(bad):
    with pytest.raises(InvalidArgumentError, match="max_padded_bytes must be a positive int or None"):
        ReadOptions(max_padded_bytes=bad)


def test_padded_shape_counts_without_wrapping():
    shapes = np.array([[2**31 - 1, 1, 1], [1, 2**31 - 1, 2**31 - 1]], np.int64)  # 2**93 values: wraps in int64
    with pytest.raises(InvalidArgumentError, match=r"\(2, 2147483647, 2147483647, 2147483647\)"):
        padded_shape("f", shapes, np.dtype(np.float64), 2**31, None)
    assert padded_shape("f", np.zeros((0, 2), np.int64), np.dtype(np.uint8), 0) == (0, 0, 0)


# -- item 11: stored shapes checked --------------------------------------------------------------

SCHEMA3 = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("v", "int32", (None, None, None)),
                       tsfs.Field("w", "float32", (None, 4))])


def _shaped(tmp_path) -> tsfs.Dataset:
    """Several row groups; row i of v has shape (i % 3, 3, 1) (empty rows included), of w (i % 2 + 1, 4)."""
    n = 256
    v = [np.full((i % 3, 3, 1), i, np.int32) for i in range(n)]
    w = [np.full((i % 2 + 1, 4), i, np.float32) for i in range(n)]
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(n), "v": v, "w": w}, SCHEMA3,
                            row_group_bytes=2000)
    assert len(ds.files) == 1 and len(ds.manifest.shards[0].row_groups) > 2
    return ds


def _damage_shapes(ds: tsfs.Dataset, column: str, row_group: int, old: tuple[int, ...], new: tuple[int, ...]
                   ) -> tuple[str, int]:
    """Rewrite the shard with the first row of ``row_group`` whose stored shape is ``old`` claiming
    ``new`` in ``__shape__<column>`` (everything else as it was), and record the new file's size
    and CRC in the manifest (with a valid checksum): only the stored shape gives it away.
    Returns the file's name and the row (in its row group)."""
    path = ds.files[0]
    pf = pq.ParquetFile(path)
    row = -1
    with pq.ParquetWriter(path + ".new", pf.schema_arrow) as w:
        for rg in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(rg)
            if rg == row_group:
                name = "__shape__" + column
                dims = t.column(name).combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1).copy()
                row = int(np.flatnonzero((dims == old).all(axis=1))[0])
                dims[row] = new
                arr = pa.FixedSizeListArray.from_arrays(pa.array(dims.reshape(-1), pa.int32()), dims.shape[1])
                t = t.set_column(t.column_names.index(name), t.schema.field(name), arr)
            w.write_table(t)  # one row group per call: the layout the manifest records
    os.replace(path + ".new", path)
    with open(path, "rb") as fh:
        data = fh.read()
    mpath = os.path.join(ds.url, "_tsfs", "manifest-0000000001.json")
    with open(mpath) as fh:
        body = json.load(fh)
    body.pop("checksum")
    body["bytes"] += len(data) - body["shards"][0]["bytes"]
    body["shards"][0]["bytes"], body["shards"][0]["crc32c"] = len(data), f"{crc32c(data):08x}"
    body["checksum"] = f"{crc32c(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()):08x}"
    with open(mpath, "w") as fh:
        json.dump(body, fh)
    return os.path.basename(path), row


READS = {
    "list": lambda ds: list(ds.to_batches(batch_size=4)),
    "pad": lambda ds: list(ds.to_batches(batch_size=4, variable="pad")),
    "flat": lambda ds: list(ds.to_batches(batch_size=4, variable="flat")),
    "filtered": lambda ds: list(ds.to_batches(batch_size=4, variable="flat", predicate=tsfs.in_range("id", 0, 10**6))),
    "torch": lambda ds: list(_torch(ds, shuffle=False)),
    "torch-shuffle": lambda ds: list(_torch(ds, shuffle=True)),
    "torch-flat": lambda ds: list(_torch(ds, shuffle=False, variable="flat")),
}


def _torch(ds, **kwargs):
    pytest.importorskip("torch")
    from tensorstore_fs.readers.torch import TorchDataset

    return TorchDataset(ds, batch_size=4, **kwargs)


DAMAGE = {  # (field, a row's stored shape, the shape it is made to claim, what the error says)
    # product 6 = the row's payload: passed the size check, then a raw ValueError (flat: handed out)
    "negative": ("v", (2, 3, 1), (-2, -3, 1), r"has shape \(-2, -3, 1\): a negative dimension"),
    # 2**22 * 2**21 * 2**21 = 2**64 wraps to 0 = the empty row's payload
    "overflow": ("v", (0, 3, 1), (2**22, 2**21, 2**21), r"has shape \(4194304, 2097152, 2097152\): "
                                                       r"18446744073709551616 values, more than a row can hold"),
    # 8 values as the row holds, but the schema's second dimension is 4
    "fixed dimension": ("w", (2, 4), (4, 2), r"has shape \(4, 2\), but the field's shape is \(None, 4\)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("read", list(READS))
def test_bad_stored_shapes_are_corrupt_naming_file_row_group_field_row(tmp_path, damage, read):
    ds = _shaped(tmp_path)
    field, old, new, what = DAMAGE[damage]
    name, row = _damage_shapes(ds, field, 1, old, new)
    ds = tsfs.open_dataset(ds.url)
    ds.verify()  # the file matches its manifest: only decoding can tell
    with pytest.raises(CorruptDatasetError, match=rf"{name}: row group 1: field '{field}': row {row} {what}"):
        READS[read](ds)


def test_the_damaged_shard_verifies_and_decode_column_names_the_row(tmp_path):
    """decode_column on its own (no file at hand) names the field and the row of the batch."""
    from tensorstore_fs.encoding import decode_column

    ds = _shaped(tmp_path)
    _, row = _damage_shapes(ds, "v", 1, (2, 3, 1), (-2, -3, 1))
    table = pq.ParquetFile(ds.files[0]).read_row_group(1)
    f = SCHEMA3.field("v")
    for mode in ({}, {"pad": True}, {"flat": True}):
        with pytest.raises(CorruptDatasetError, match=rf"field 'v': row {row} has shape \(-2, -3, 1\)") as e:
            decode_column(table, f, **mode)
        assert e.value.row == row


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(-2**31, 2**31 - 1), min_size=3, max_size=3), min_size=1, max_size=6),
       st.sampled_from([1, 2, 4, 8]))
def test_shape_fault_matches_exact_arithmetic(rows, itemsize):
    shp = np.array(rows, dtype=np.int32)
    fault = shape_fault(shp, (None, None, None), itemsize)

    def sound(r):
        count = itemsize
        for d in r:
            count *= d
        return min(r) >= 0 and max(r) <= MAX_DIM and count < MAX_ROW_BYTES

    bad = [i for i, r in enumerate(rows) if not sound(r)]
    assert (fault is None) == (not bad)
    if bad:
        assert fault[0] == bad[0]


def test_shape_fault_accepts_null_rows_of_zeros():
    shp = np.array([[3, 4], [0, 0], [1, 4]], np.int32)
    assert shape_fault(shp, (None, 4), 4, np.array([True, False, True])) is None
    assert shape_fault(shp, (None, 4), 4)[0] == 1  # a present row must have the fixed extent
