"""How the writer cuts row groups and shards so that batches of a power-of-two size never straddle
two of them: the readers then hand sequential batches out as views of one mapped row group."""

from __future__ import annotations

import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.parquet import rowgroups
from tensorstore_fs.read import stream
from tensorstore_fs.readers.torch import TorchDataset
from tensorstore_fs.writer import ROW_GROUP_ROW_ALIGNMENT, SHARD_ROW_ALIGNMENT, _aligned_rows

ROW = 100  # payload bytes of the image column a row
SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("image", "uint8", (ROW,))])


def _data(n: int) -> dict:
    ids = np.arange(n)
    return {"id": ids, "image": (ids[:, None] * 7 + np.arange(ROW)).astype(np.uint8)}


def test_aligned_rows_every_count():
    for rows in range(1, 20_000):
        got = _aligned_rows(rows)
        step = min(ROW_GROUP_ROW_ALIGNMENT, 1 << (rows.bit_length() - 1))
        assert got % step == 0 and 0 < got <= rows, rows
        assert got > rows - step and got * 2 > rows, rows  # never loses a step or half the rows


@pytest.mark.parametrize("target_rows", [630, 1000, 300, 100, 7])
def test_row_groups_hold_aligned_row_counts(tmp_path, target_rows):
    # row_group_bytes that fit ``target_rows`` rows (108 bytes a row)
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _data(5_000), SCHEMA, row_group_bytes=target_rows * 108)
    groups = [g.rows for s in ds.shards for g in s.row_groups]
    want = _aligned_rows(target_rows)
    assert groups[:-1] == [want] * (len(groups) - 1)  # a write's last row group holds the rest
    assert sum(groups) == 5_000 and 0 < groups[-1] <= target_rows
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in ds.to_batches()]), _data(5_000)["image"])


def test_shards_hold_multiples_of_the_shard_alignment(tmp_path):
    # ~19,400 rows' worth of bytes a shard: shards of 20,480 rows (5 x 4096), then the rest
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _data(50_000), SCHEMA, row_group_bytes=1000 * 108,
                            shard_bytes=2**21)
    rows = [s.rows for s in ds.shards]
    assert rows == [5 * SHARD_ROW_ALIGNMENT] * 2 + [50_000 - 10 * SHARD_ROW_ALIGNMENT]


@pytest.mark.parametrize("batch_size", [256, 128, 64])
def test_sequential_batches_are_views_of_one_row_group(tmp_path, monkeypatch, batch_size):
    """630 rows' worth of bytes make 512-row groups, so no batch of 64-256 rows spans two: every
    batch of the in-process torch adapter is a view of a row group's private map (none is joined
    by a copy)."""
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, _data(3_000), SCHEMA, row_group_bytes=630 * 108)
    maps: list[np.ndarray] = []
    monkeypatch.setattr(stream, "private_view", lambda *a: maps.append(rowgroups.private_view(*a)) or maps[-1])
    batches = list(TorchDataset(url, batch_size=batch_size, drop_last=True))
    assert len(batches) == 3_000 // batch_size and len(maps) == -(-3_000 // 512)  # one map a row group
    for b in batches:
        image = b["image"].numpy()
        np.testing.assert_array_equal(image, _data(3_000)["image"][b["id"].numpy()])
        assert any(np.shares_memory(image, m) for m in maps), "batch was copied, not mapped"


def test_only_repetitive_scalar_columns_are_dictionary_encoded(tmp_path):
    """Dictionaries for labels and categories; plain pages for ids, float features and unique
    strings (a dictionary of distinct values is bigger and slower to write and read)."""
    import pyarrow.parquet as pq

    n = 5000
    rng = np.random.default_rng(0)
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("label", "int32"), tsfs.Field("x", "float32"),
                          tsfs.Field("cat", "string"), tsfs.Field("name", "string"),
                          tsfs.Field("gone", "float32", nullable=True), tsfs.Field("image", "uint8", (ROW,))])
    data = {"id": np.arange(n), "label": rng.integers(0, 10, n).astype(np.int32),
            "x": rng.standard_normal(n).astype(np.float32), "cat": [("a", "b", "c")[i % 3] for i in range(n)],
            "name": [f"file-{i}.jpg" for i in range(n)], "gone": [None] * n, "image": _data(n)["image"]}
    ds = tsfs.write_dataset(str(tmp_path / "ds"), data, schema)
    md = pq.read_metadata(ds.files[0])
    dictionary = {md.schema.column(i).name for i in range(md.num_columns)
                  if md.row_group(0).column(i).dictionary_page_offset is not None}
    assert dictionary == {"label", "cat", "gone"}
    got = tsfs.open_dataset(ds.url).to_table(columns=["id", "label", "x", "cat", "name"])
    assert got.column("name").to_pylist() == data["name"] and got.column("cat").to_pylist() == data["cat"]
    np.testing.assert_array_equal(got.column("x").to_numpy(), data["x"])
