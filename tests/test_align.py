"""Tensor values at 64-byte aligned file offsets: the Thrift footer codec, the aligning stream and
the writer's files, read back by pyarrow and by DuckDB (an independent Parquet reader)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.parquet.thrift import decode_struct, encode_struct
from tensorstore_fs.parquet.align import ALIGNMENT, AligningStream, header_length
from tensorstore_fs.parquet.pages import plain_values_offset


def _footer(data: bytes) -> bytes:
    size = struct.unpack("<i", data[-8:-4])[0]
    return data[-8 - size:-8]


def _table(rng: np.random.Generator, rows: int, widths: list[int]) -> pa.Table:
    cols = {f"t{i}": pa.array([rng.bytes(w) for _ in range(rows)], pa.binary(w)) for i, w in enumerate(widths)}
    cols["label"] = pa.array(rng.integers(0, 10, rows))
    cols["name"] = pa.array([f"n{x}" for x in rng.integers(0, 99, rows)])
    cols["tokens"] = pa.array([list(range(int(k))) for k in rng.integers(0, 5, rows)], pa.list_(pa.int32()))
    schema = pa.schema([pa.field(n, t.type, nullable=not n.startswith("t")) for n, t in cols.items()])
    return pa.table(cols, schema=schema)


def _parquet_writer(sink, table: pa.Table) -> pq.ParquetWriter:
    return pq.ParquetWriter(sink, table.schema, compression={c: "none" if c.startswith("t") else "zstd"
                                                             for c in table.column_names},
                            use_dictionary=["name"], write_statistics=["label"], data_page_size=1 << 24)


def _write_aligned(table: pa.Table, groups: list[int], widths: list[int]) -> bytes:
    out = io.BytesIO()
    stream = AligningStream(out)
    writer = _parquet_writer(stream, table)
    at = 0
    for rows in groups:
        stream.expect([rows * w for w in widths])
        writer.write_table(table.slice(at, rows), row_group_size=rows)
        at += rows
    stream.footer_next()
    writer.close()
    stream.finish()
    return out.getvalue()


def _value_offsets(data: bytes, groups: list[int], widths: list[int]) -> list[int | None]:
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    return [plain_values_offset(lambda size, o: data[o:o + size], meta.row_group(g).column(c), rows, w)
            for g, rows in enumerate(groups) for c, w in enumerate(widths)]


@pytest.mark.parametrize("options", [{}, {"use_dictionary": False, "write_statistics": False}, {"compression": "zstd"},
                                     {"write_page_index": True}, {"data_page_size": 64}],
                         ids=["default", "plain", "zstd", "page-index", "small-pages"])
def test_thrift_codec_rewrites_pyarrow_footers_byte_for_byte(options):
    rng = np.random.default_rng(1)
    table = _table(rng, 500, [13, 64])
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=120, **options)
    footer = _footer(buf.getvalue())
    tree, end = decode_struct(footer)
    assert end == len(footer)
    assert encode_struct(tree) == footer


@pytest.mark.parametrize("seed", range(12))
def test_aligned_values_read_back_equal(seed):
    rng = np.random.default_rng(seed)
    widths = [int(w) for w in rng.integers(1, 5000, 2)]
    groups = [int(g) for g in rng.integers(1, 40, 5)]
    table = _table(rng, sum(groups), widths)
    data = _write_aligned(table, groups, widths)
    offsets = _value_offsets(data, groups, widths)
    assert all(o is not None and o % ALIGNMENT == 0 for o in offsets), offsets
    assert pq.read_table(io.BytesIO(data)).equals(table)


def test_how_pyarrow_cuts_its_writes_does_not_matter():
    rng = np.random.default_rng(7)
    widths, groups = [300, 1000], [17, 5, 30]
    table = _table(rng, sum(groups), widths)
    whole = _write_aligned(table, groups, widths)
    # pyarrow's own bytes for the same file, and where its row groups end
    raw = io.BytesIO()
    writer = _parquet_writer(raw, table)
    cuts, at = [raw.tell()], 0
    for rows in groups:
        writer.write_table(table.slice(at, rows), row_group_size=rows)
        at += rows
        cuts.append(raw.tell())
    writer.close()
    plain = raw.getvalue()
    assert len(plain) < len(whole)  # padding went in
    # fed to the stream in pieces of 1 to 7 bytes, they come out as the same aligned file
    out = io.BytesIO()
    stream = AligningStream(out)
    stream.write(plain[:cuts[0]])
    pos, step = cuts[0], 1
    for i, rows in enumerate(groups):
        stream.expect([rows * w for w in widths])
        while pos < cuts[i + 1]:
            end = min(cuts[i + 1], pos + step)
            stream.write(plain[pos:end])
            pos, step = end, step % 7 + 1
    stream.footer_next()
    stream.write(plain[pos:])
    stream.finish()
    assert out.getvalue() == whole


def test_an_unexpected_page_leaves_its_row_group_as_pyarrow_wrote_it():
    rng = np.random.default_rng(3)
    widths, groups = [256, 100], [10, 10]
    table = _table(rng, 20, widths)
    out = io.BytesIO()
    stream = AligningStream(out)
    writer = _parquet_writer(stream, table)
    stream.expect([999, 999])  # wrong sizes: nothing is moved in this row group
    writer.write_table(table.slice(0, 10), row_group_size=10)
    assert stream.padded == 0
    stream.expect([10 * w for w in widths])
    writer.write_table(table.slice(10, 10), row_group_size=10)
    stream.footer_next()
    writer.close()
    stream.finish()
    data = out.getvalue()
    assert pq.read_table(io.BytesIO(data)).equals(table)
    offsets = _value_offsets(data, groups, widths)
    assert offsets[2] % ALIGNMENT == 0 and offsets[3] % ALIGNMENT == 0


SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("label", "int16"),
                      tsfs.Field("img", "uint8", (3, 7, 5)), tsfs.Field("emb", "float64", (3,)),
                      tsfs.Field("opt", "float32", (2,), nullable=True), tsfs.Field("tokens", "int32", (None,)),
                      tsfs.Field("text", "string")])


def _rows(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"id": np.arange(n), "label": rng.integers(0, 10, n).astype(np.int16),
            "img": rng.integers(0, 255, (n, 3, 7, 5)).astype(np.uint8), "emb": rng.normal(size=(n, 3)),
            "opt": [None if i % 4 == 0 else np.full(2, i, np.float32) for i in range(n)],
            "tokens": [np.arange(i % 6, dtype=np.int32) for i in range(n)], "text": [f"row {i}" for i in range(n)]}


def _aligned_chunks(ds, read) -> int:
    """Check every row group of every shard: the widest fixed tensor (img) comes first and its
    values start at an aligned offset. Returns the number of row groups checked."""
    checked = 0
    for shard in ds.shards:
        raw = read(shard.path)
        pf = pq.ParquetFile(io.BytesIO(raw))
        assert pf.schema_arrow.names[0] == "img"
        for g in range(pf.metadata.num_row_groups):
            meta = pf.metadata.row_group(g)
            offset = plain_values_offset(lambda size, o: raw[o:o + size], meta.column(0), meta.num_rows, 105)
            assert offset is not None and offset % ALIGNMENT == 0
            checked += 1
    return checked


def test_writer_puts_the_widest_fixed_tensor_first_and_aligned(tmp_path):
    data = _rows(3000)
    ds = tsfs.write_dataset(str(tmp_path / "ds"), data, SCHEMA, row_group_bytes=20_000, shard_bytes=200_000)
    assert len(ds.shards) > 2 and len(ds.row_groups) > 10
    ds.verify()  # sizes and CRCs in the manifest are those of the padded files
    assert _aligned_chunks(ds, lambda rel: (tmp_path / "ds" / rel).read_bytes()) == len(ds.row_groups)
    table = ds.to_table()
    assert [c for c in table.column_names if not c.startswith("__")] == SCHEMA.names  # readers keep the schema order
    back = tsfs.open_dataset(str(tmp_path / "ds")).head(3000)
    for name in ("img", "emb", "label", "id"):
        np.testing.assert_array_equal(back[name], data[name])


def test_object_store_files_are_aligned_through_the_stream():
    url = "memory://tsfs-align-test/ds"
    data = _rows(1500, 2)
    ds = tsfs.write_dataset(url, data, SCHEMA, row_group_bytes=20_000, mode="overwrite")
    ds.verify()
    fs = ds.storage.fs
    assert _aligned_chunks(ds, lambda rel: fs.cat_file(ds.storage.path(rel))) == len(ds.row_groups) > 3
    np.testing.assert_array_equal(tsfs.open_dataset(url).head(1500)["img"], data["img"])


def test_duckdb_reads_the_padded_files_like_pyarrow(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _rows(2000, 1), SCHEMA, row_group_bytes=30_000)
    for shard in ds.shards:
        path = ds.storage.path(shard.path)
        want = pq.read_table(path)
        got = duckdb.connect().sql(f"select * from read_parquet('{path}')").arrow()
        got = got.read_all() if hasattr(got, "read_all") else got
        assert got.num_rows == want.num_rows
        for name in want.column_names:
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def test_compression_none_spelled_out_is_aligned_too(tmp_path):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _rows(600), SCHEMA, row_group_bytes=20_000, compression="NONE")
    assert _aligned_chunks(ds, lambda rel: (tmp_path / "ds" / rel).read_bytes()) == len(ds.row_groups) > 1


def test_compressed_tensors_are_not_padded(tmp_path):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _rows(500), SCHEMA, row_group_bytes=20_000, compression="zstd")
    ds.verify()
    pf = pq.ParquetFile(ds.storage.path(ds.shards[0].path))
    assert pf.schema_arrow.names[:3] == ["id", "label", "img"]  # the schema's order: nothing to align
    np.testing.assert_array_equal(ds.head(500)["img"], _rows(500)["img"])


@pytest.mark.parametrize("rows, width", [(1, 1), (2, 64), (63, 1), (64, 2), (300, 13312), (127, 129),
                                         (16383, 1), (16384, 1), (2049, 1024)])
def test_header_length_is_the_length_pyarrow_writes(rows, width):
    values = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows, [None, pa.py_buffer(bytes(rows * width))])
    schema = pa.schema([pa.field("v", pa.binary(width), nullable=False), pa.field("label", pa.int64())])
    table = pa.table([values, pa.array(np.arange(rows))], schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out, compression={"v": "none", "label": "snappy"}, use_dictionary=["label"],
                   write_statistics=["label"], data_page_size=1 << 30)  # the writer's settings
    data = out.getvalue()
    _, end = decode_struct(data, 4)
    assert header_length(rows, width, 1 << 30) == end - 4


def test_row_groups_of_many_small_rows_stay_one_aligned_page(tmp_path):
    """pyarrow cuts pages at 20,000 rows unless told otherwise: a chunk of small rows must still be
    one page (located, aligned), not several."""
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("xy", "float32", (2,))])
    n = 50_000
    xy = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(n), "xy": xy}, schema)
    assert len(ds.row_groups) == 1 and ds.row_groups[0].rows == n
    raw = (tmp_path / "ds" / ds.shards[0].path).read_bytes()
    meta = pq.ParquetFile(io.BytesIO(raw)).metadata.row_group(0)
    offset = plain_values_offset(lambda size, o: raw[o:o + size], meta.column(0), n, 8)
    assert offset is not None and offset % ALIGNMENT == 0
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32, 2 * n, offset).reshape(n, 2), xy)
