"""Ranged reads and plan-driven read-ahead (tensorstore_fs/parquet/ranges.py, read/readahead.py).

What an object store is asked for is counted where every shard byte goes through: ``Storage.read_range``
(wrapped, still calling the real one), and compared with what the operation needs, computed from
the shards' own Parquet footers.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.parquet.ranges import RangedFile, chunk_ranges, merge_ranges, split_ranges
from tensorstore_fs.read import ReadOptions
from tensorstore_fs.read.readahead import ReadAhead, Use, readahead_bytes
from tensorstore_fs.readers.torch import TorchDataset
from tensorstore_fs.storage import Storage

SCHEMA = tsfs.Schema([tsfs.Field("x", "uint8", (32, 32)), tsfs.Field("label", "int64"), tsfs.Field("id", "int64")])
N = 3000


def _data(n: int = N) -> dict:
    ids = np.arange(n)
    x = (ids[:, None, None] + np.arange(32 * 32).reshape(32, 32)).astype(np.uint8)
    return {"x": x, "label": ids // 300, "id": ids}


def _done(f: Future | bytes) -> Future:
    fut: Future = Future()
    fut.set_result(f)
    return fut


# -- ranges -----------------------------------------------------------------------------------------
def test_merge_and_split_ranges():
    assert merge_ranges([(10, 20), (0, 5), (25, 30), (100, 200)], gap=5) == [(0, 30), (100, 200)]
    assert merge_ranges([(0, 10), (5, 8), (10, 10)], gap=0) == [(0, 10)]
    pieces = split_ranges([(0, 100), (200, 210)], piece=30)
    assert pieces == [(0, 25), (25, 50), (50, 75), (75, 100), (200, 210)]


def test_chunk_ranges_are_the_column_chunks(tmp_path):
    url = str(tmp_path / "ds")
    ds = tsfs.write_dataset(url, _data(), SCHEMA, row_group_bytes=200_000)
    path = ds.storage.path(ds.shards[0].path)
    md = pq.read_metadata(path)
    size = os.path.getsize(path)
    for rg in range(md.num_row_groups):
        (start, end), = chunk_ranges(md, rg, ["x", "label", "id"])  # adjacent chunks: one range
        meta = md.row_group(rg)
        assert end - start == sum(meta.column(i).total_compressed_size for i in range(meta.num_columns))
        (s1, e1), = chunk_ranges(md, rg, ["label"])
        c = meta.column(1)
        assert (s1, e1 - s1) == (min(c.data_page_offset, c.dictionary_page_offset or c.data_page_offset),
                                 c.total_compressed_size)
        assert start <= s1 < e1 <= end <= size


def test_ranged_file_serves_attached_ranges_and_counts_misses():
    blob = bytes(range(256)) * 40
    calls = []

    def get(s, e):
        calls.append((s, e))
        return blob[s:e]

    f = RangedFile("mem://blob", len(blob), get)
    f.attach(100, 300, _done(blob[100:300]))
    f.attach(300, 500, _done(blob[300:500]))
    assert bytes(f.read_at(150, 50)) == blob[150:200] and not calls
    assert bytes(f.read_at(250, 100)) == blob[250:350] and not calls  # spans two ranges: joined
    assert bytes(f.read_at(450, 100)) == blob[450:550] and calls == [(450, 550)]  # not covered: one request
    assert (f.misses, f.missed_bytes) == (1, 100)
    f.seek(-10, 2)
    assert f.read() == blob[-10:] and f.tell() == len(blob)
    f.detach(100)
    assert bytes(f.read_at(150, 10)) == blob[150:160] and calls[-1] == (150, 160)


def test_ranged_file_waits_for_pending_read_ahead_instead_of_requesting_twice():
    blob = b"abcdefghij" * 100
    calls = []
    f = RangedFile("mem://blob", len(blob), lambda s, e: calls.append((s, e)) or blob[s:e],
                   pending=lambda: [task])
    task: Future = Future()

    def attach_later():
        f.attach(0, 1000, _done(blob))
        task.set_result(None)

    threading.Timer(0.05, attach_later).start()
    assert bytes(f.read_at(10, 20)) == blob[10:30]
    assert calls == []


def test_ranged_file_raises_a_storage_failure_of_read_ahead_and_rereads_a_cancelled_one():
    blob = b"x" * 100
    f = RangedFile("mem://blob", len(blob), lambda s, e: blob[s:e])
    failed: Future = Future()
    failed.set_exception(tsfs.StorageError("s3://b/k: reading bytes 0-50 failed: timeout"))
    f.attach(0, 50, failed)
    with pytest.raises(tsfs.StorageError, match="reading bytes 0-50"):
        f.read_at(0, 10)
    cancelled: Future = Future()
    cancelled.cancel()
    f.attach(0, 50, cancelled)
    assert bytes(f.read_at(0, 10)) == blob[:10] and f.misses == 1


def test_readahead_budget_is_validated(monkeypatch):
    assert readahead_bytes(0) == 0
    with pytest.raises(tsfs.InvalidArgumentError, match="readahead_bytes must be a non-negative int"):
        readahead_bytes(-1)
    monkeypatch.setenv("TSFS_READAHEAD_BYTES", "lots")
    with pytest.raises(tsfs.InvalidArgumentError, match="TSFS_READAHEAD_BYTES"):
        readahead_bytes()
    monkeypatch.setenv("TSFS_READAHEAD_BYTES", "1024")
    assert readahead_bytes() == 1024
    with pytest.raises(tsfs.InvalidArgumentError, match="readahead_bytes"):
        ReadOptions(readahead_bytes=-5)


# -- counting what an object store is asked for --------------------------------------------------------
class Requests:
    """Every ranged read of shard bytes (Storage.read_range, the real one still called)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        real = Storage.read_range

        def counted(storage, rel, start, end):
            with self._lock:
                self.calls.append((rel, start, end))
            return real(storage, rel, start, end)

        monkeypatch.setattr(Storage, "read_range", counted)

    def take(self) -> list[tuple[str, int, int]]:
        with self._lock:
            out, self.calls = self.calls, []
        return out


def _needed(local: tsfs.Dataset, row_groups, columns) -> int:
    """Bytes of the column chunks of ``columns`` in ``row_groups`` ((shard, rg) pairs) of a local copy."""
    total = 0
    for shard, rg in row_groups:
        md = pq.read_metadata(local.storage.path(local.shards[shard].path))
        total += sum(e - s for s, e in chunk_ranges(md, rg, columns))
    return total


def _all_row_groups(ds):
    return [(s, g) for s, info in enumerate(ds.shards) for g in range(len(info.row_groups))]


def _tails(ds) -> int:
    return sum(min(info.bytes, 64 * 1024) for info in ds.shards)


@pytest.fixture(scope="module")
def remote(s3, tmp_path_factory):
    """The same rows on S3 and on local disk (the local copy tells what a read needs)."""
    url = s3.url("readahead")
    kw = dict(row_group_bytes=150_000, shard_bytes=700_000)
    tsfs.write_dataset(url, _data(), SCHEMA, storage_options=s3.storage_options(), **kw)
    local = tsfs.write_dataset(str(tmp_path_factory.mktemp("ra") / "ds"), _data(), SCHEMA, **kw)
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options())
    assert len(ds.shards) >= 3 and len(ds.shards[0].row_groups) >= 3
    assert [s.bytes for s in ds.shards] == [s.bytes for s in local.shards]
    return ds, local


def test_head_fetches_one_row_group(remote, monkeypatch):
    ds, local = remote
    req = Requests(monkeypatch)
    head = ds.head(5)
    np.testing.assert_array_equal(head["id"], np.arange(5))
    calls = req.take()
    fetched = sum(e - s for _, s, e in calls)
    need = _needed(local, [(0, 0)], ["x", "label", "id"]) + min(ds.shards[0].bytes, 64 * 1024)
    assert {rel for rel, _, _ in calls} == {ds.shards[0].path}
    assert fetched <= 1.05 * need, (fetched, need)


@pytest.mark.parametrize("readahead", [None, 0])
def test_an_epoch_fetches_each_needed_byte_once(remote, monkeypatch, readahead):
    ds, local = remote
    req = Requests(monkeypatch)
    got = np.concatenate([b["id"] for b in ds.to_batches(columns=["id", "x"], batch_size=128,
                                                          readahead_bytes=readahead)])
    np.testing.assert_array_equal(got, np.arange(N))
    calls = req.take()
    need = _needed(local, _all_row_groups(ds), ["id", "x"])
    fetched = sum(e - s for _, s, e in calls)
    assert need <= fetched <= need + _tails(ds)
    # nothing fetched twice: the ranges of each file do not overlap
    for rel in {c[0] for c in calls}:
        spans = sorted((s, e) for r, s, e in calls if r == rel)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), rel


@pytest.mark.parametrize("budget", [None, 300_000])
def test_a_shuffled_epoch_fetches_each_row_group_once(remote, monkeypatch, budget):
    """A shuffled epoch visits a row group's rows in several windows; read-ahead keeps its bytes
    until the last of them is consumed (with a small budget some may be fetched again)."""
    ds, local = remote
    req = Requests(monkeypatch)
    reader = TorchDataset(ds, batch_size=64, shuffle=True, seed=3, window_bytes=120_000, with_row_ids=True,
                          readahead_bytes=budget)
    ids = np.concatenate([b["__row_id__"].numpy() for b in reader])
    assert sorted(ids.tolist()) == list(range(N))
    assert not np.array_equal(ids, np.sort(ids))
    need = _needed(local, _all_row_groups(ds), ["x", "label", "id"])
    fetched = sum(e - s for _, s, e in req.take())
    if budget is None:
        assert need <= fetched <= 1.05 * need + _tails(ds), (fetched, need)
    else:
        assert need <= fetched <= 3 * need, (fetched, need)


def test_a_filtered_epoch_fetches_only_row_groups_the_statistics_keep(remote, monkeypatch):
    ds, local = remote
    req = Requests(monkeypatch)
    got = np.concatenate([b["id"] for b in ds.to_batches(filter=pc.field("label") == 4, batch_size=100)])
    np.testing.assert_array_equal(got, np.arange(1200, 1500))
    calls = req.take()
    kept = [(r.shard, r.row_group) for r in ds.scanner(filter=pc.field("label") == 4).row_groups]
    assert len(kept) < len(_all_row_groups(ds)) / 3
    need = _needed(local, kept, ["x", "label", "id"])
    fetched = sum(e - s for _, s, e in calls)
    touched = {ds.shards[s].path for s, _ in kept}
    assert {rel for rel, _, _ in calls} == touched
    assert need <= fetched <= need + 64 * 1024 * len(touched)


def test_dataloader_workers_read_ahead_on_s3(remote):
    ds, _ = remote
    import torch

    reader = TorchDataset(ds, batch_size=100, shuffle=True, seed=1, with_row_ids=True)
    loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    ids = np.concatenate([b["__row_id__"].numpy() for b in loader])
    assert sorted(ids.tolist()) == list(range(N))


def test_cache_dir_is_an_adapter_argument(remote, s3, tmp_path):
    ds, _ = remote
    reader = TorchDataset(ds.url, batch_size=500, storage_options=s3.storage_options(), cache_dir=tmp_path / "c")
    assert sum(len(b["id"]) for b in reader) == N
    cached = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and p.suffix == ".parquet"]
    assert len(cached) == len(ds.shards)
    with pytest.raises(tsfs.InvalidArgumentError, match="open_dataset"):
        TorchDataset(ds, cache_dir=tmp_path / "c")


def test_readahead_holds_at_most_its_budget_beyond_the_step_being_read(remote):
    """The schedule walks ahead only while the bytes held fit the budget (the step the consumer
    is at is always fetched), and everything is released as rows are consumed."""
    ds, local = remote
    rg_bytes = _needed(local, [(0, 0)], ["x", "label", "id"])
    ra = ReadAhead(ds.storage, ds.manifest, ["x", "label", "id"], budget=int(2.5 * rg_bytes))
    try:
        steps = [Use(s, g, info.row_groups[g].rows) for s, info in enumerate(ds.shards)
                 for g in range(len(info.row_groups))]
        ra.start(steps)
        assert 0 < ra.held_bytes <= 2.5 * rg_bytes + rg_bytes
        for use in steps:
            assert ra.held_bytes <= 3.5 * rg_bytes
            ra.consumed(use.shard, use.row_group, use.rows)
        assert ra.held_bytes == 0
    finally:
        ra.close()


def test_a_first_batch_fetches_about_what_it_needs(remote, monkeypatch):
    """Read-ahead starts with the step being read and doubles with every step consumed: taking
    one batch and stopping fetched one row group (and the footer)."""
    ds, local = remote
    req = Requests(monkeypatch)
    batches = ds.to_batches(batch_size=64)
    first = next(batches)
    np.testing.assert_array_equal(first["id"], np.arange(64))
    batches.close()
    calls = req.take()
    fetched = sum(e - s for _, s, e in calls)
    need = _needed(local, [(0, 0)], ["x", "label", "id"]) + min(ds.shards[0].bytes, 64 * 1024)
    assert need <= fetched <= 1.05 * need, (fetched, need, calls)
