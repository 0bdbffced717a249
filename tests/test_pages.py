"""Direct (zero-copy) access to plain tensor pages, and its fallbacks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.parquet.pages import page_header, plain_values_offset
from tensorstore_fs.parquet.rowgroups import FILES
from tensorstore_fs.read.gather import Gatherer
from tensorstore_fs.read.scan import open_shard

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("img", "uint8", (3, 5, 7)),
                      tsfs.Field("emb", "float32", (9,)), tsfs.Field("opt", "float32", (2,), nullable=True)])


def _data(n):
    ids = np.arange(n)
    opt = [None if i % 3 == 0 else np.full(2, i, np.float32) for i in range(n)]
    return {"id": ids, "img": (ids[:, None, None, None] % 251 * np.ones((1, 3, 5, 7))).astype(np.uint8),
            "emb": np.repeat(ids[:, None], 9, axis=1).astype(np.float32), "opt": opt}


def _views(ds, rg_index=0):
    """The columns a gathered row group views in the file instead of decoding them."""
    ref = ds.row_groups[rg_index]
    f = open_shard(ds.storage, ds.manifest, ref.shard, ds.storage_schema)
    try:
        unit = Gatherer(ds.schema, ds.schema.names, "list").read_unit(f, ref.row_group, ds.schema.names)
        return dict(unit._views), ref
    finally:
        FILES.checkin(f)


def test_plain_tensor_pages_are_viewed_in_place(tmp_path):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _data(200), SCHEMA, row_group_bytes=4000)
    assert len(ds.row_groups) > 3
    for i in range(len(ds.row_groups)):
        views, ref = _views(ds, i)
        assert set(views) == {"img", "emb"}  # the nullable tensor is decoded by pyarrow
        rows = np.arange(ref.first_row, ref.first_row + ref.rows)
        assert np.array_equal(views["emb"][:, 0], rows)
        assert np.array_equal(views["img"][:, 2, 4, 6], rows % 251)


@pytest.mark.parametrize("opts", [{"compression": "zstd"}, {"compression": "snappy"}], ids=["zstd", "snappy"])
def test_compressed_tensor_columns_fall_back(tmp_path, opts):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _data(50), SCHEMA, **opts)
    views, _ = _views(ds)
    assert views == {}
    # and the shuffled stream still reads the right values
    from tensorstore_fs.readers.torch import TorchDataset

    got = {int(i): int(e[0]) for b in TorchDataset(ds, batch_size=7, shuffle=True, with_row_ids=True)
           for i, e in zip(b["__row_id__"], b["emb"])}
    assert got == {i: i for i in range(50)}


def test_foreign_multi_page_files_fall_back(tmp_path):
    n = 5000
    t = pa.table({"x": pa.array(np.arange(n))}, schema=pa.schema([pa.field("x", pa.int64(), nullable=False)]))
    path = str(tmp_path / "f.parquet")
    pq.write_table(t, path, data_page_size=1024, compression="none", use_dictionary=False)
    md = pq.ParquetFile(path).metadata
    with open(path, "rb") as fh:
        data = fh.read()
    read_at = lambda size, off: data[off:off + size]  # noqa: E731
    assert plain_values_offset(read_at, md.row_group(0).column(0), n, 8) is None  # several pages
    single = str(tmp_path / "g.parquet")
    pq.write_table(t, single, compression="none", use_dictionary=False, data_page_size=1 << 20)
    md = pq.ParquetFile(single).metadata
    with open(single, "rb") as fh:
        data = fh.read()
    off = plain_values_offset(lambda size, o: data[o:o + size], md.row_group(0).column(0), n, 8)
    assert off is not None
    assert np.array_equal(np.frombuffer(data, np.int64, count=n, offset=off), np.arange(n))
    nullable = str(tmp_path / "h.parquet")  # optional columns carry definition levels: no direct view
    pq.write_table(pa.table({"x": pa.array(np.arange(n))}), nullable, compression="none", use_dictionary=False,
                   data_page_size=1 << 20)
    md = pq.ParquetFile(nullable).metadata
    with open(nullable, "rb") as fh:
        data = fh.read()
    assert plain_values_offset(lambda size, o: data[o:o + size], md.row_group(0).column(0), n, 8) is None


@pytest.mark.parametrize("blob", [b"", b"\x00", b"\x15\x00\x15", bytes(range(256)), b"\xff" * 64],
                         ids=["empty", "stop", "truncated", "ramp", "ff"])
def test_garbage_headers_never_crash(blob):
    try:
        page_header(blob)
    except ValueError:
        pass

    class Col:
        compression = "UNCOMPRESSED"
        dictionary_page_offset = None
        data_page_offset = 0
        total_compressed_size = len(blob) + 10

    assert plain_values_offset(lambda size, off: blob[off:off + size], Col(), 2, 5) is None
