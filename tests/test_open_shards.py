"""Local shard files stay open between reads (tensorstore_fs.parquet.rowgroups.FILES): reused,
never shared by two readers at once, bounded, not reused once the file was replaced, and dropped in
a forked child."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.parquet import rowgroups
from tensorstore_fs.parquet.rowgroups import FILES

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32", (8,))])


def _data(n: int) -> dict:
    ids = np.arange(n)
    return {"id": ids, "x": (ids[:, None] + np.arange(8)).astype(np.float32)}


@pytest.fixture(autouse=True)
def no_kept_files():
    """Every test starts and ends with no file kept open."""
    FILES.clear()
    yield
    FILES.clear()


def _kept(ds) -> list[str]:
    """The shard files of ``ds`` kept open, least recently used first (as relative paths)."""
    import os

    names = {os.path.abspath(ds.storage.path(s.path)): s.path for s in ds.shards}
    return [names[p] for p in FILES.kept() if p in names]


@pytest.fixture()
def opened(monkeypatch):
    """Paths of every Parquet file pyarrow parses from here on."""
    seen: list[str] = []
    real = pq.ParquetFile

    class Spy(real):
        def __init__(self, source, **kw):
            seen.append(getattr(source, "path", None) or str(source))
            super().__init__(source, **kw)

    monkeypatch.setattr(pq, "ParquetFile", Spy)
    return seen


def _ids(ds, **kw) -> np.ndarray:
    return np.concatenate([b["id"] for b in ds.to_batches(batch_size=64, **kw)])


def test_later_scans_reuse_the_open_files(tmp_path, opened):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _data(1000), SCHEMA, row_group_bytes=4000, shard_bytes=8000)
    ds = tsfs.open_dataset(ds.url)
    assert len(ds.shards) > 2
    for _ in range(3):
        np.testing.assert_array_equal(_ids(ds), np.arange(1000))
        np.testing.assert_array_equal(_ids(ds, columns=["id"], filter=pc.field("id") >= 500), np.arange(500, 1000))
    assert len(opened) == len(ds.shards)  # parsed once each, on the first scan
    assert ds.to_batches().__next__()["id"][0] == 0


def test_an_abandoned_scan_hands_its_file_back(tmp_path, opened):
    ds = tsfs.open_dataset(tsfs.write_dataset(str(tmp_path / "ds"), _data(500), SCHEMA, row_group_bytes=4000).url)
    it = ds.to_batches(batch_size=10)
    next(it)
    it.close()
    np.testing.assert_array_equal(_ids(ds), np.arange(500))
    assert len(opened) == 1


def test_at_most_open_shards_stay_open(tmp_path, monkeypatch):
    monkeypatch.setattr(rowgroups, "OPEN_FILES", 3)
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _data(2000), SCHEMA, row_group_bytes=4000, shard_bytes=8000)
    ds = tsfs.open_dataset(ds.url)
    assert len(ds.shards) > 5
    np.testing.assert_array_equal(_ids(ds), np.arange(2000))
    assert _kept(ds) == [s.path for s in ds.shards[-3:]]  # the most recent


def test_kept_files_are_bounded_in_bytes(tmp_path, monkeypatch):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), _data(2000), SCHEMA, row_group_bytes=4000, shard_bytes=8000)
    ds = tsfs.open_dataset(ds.url)
    sizes = [s.bytes for s in ds.shards]
    monkeypatch.setattr(rowgroups, "OPEN_FILE_BYTES", sizes[-1] + sizes[-2])  # room for the last two
    np.testing.assert_array_equal(_ids(ds), np.arange(2000))
    assert _kept(ds) == [s.path for s in ds.shards[-2:]]
    FILES.clear()
    monkeypatch.setattr(rowgroups, "OPEN_FILE_BYTES", min(sizes) - 1)  # no file fits: none kept
    np.testing.assert_array_equal(_ids(ds), np.arange(2000))
    assert not FILES.kept()


def test_concurrent_scans_never_share_an_open_file(tmp_path):
    ds = tsfs.open_dataset(tsfs.write_dataset(str(tmp_path / "ds"), _data(3000), SCHEMA, row_group_bytes=2000,
                                              shard_bytes=30_000).url)
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            for _ in range(20):
                got = np.concatenate([b["x"] for b in ds.to_batches(batch_size=50)])
                np.testing.assert_array_equal(got, _data(3000)["x"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(FILES.kept()) <= rowgroups.OPEN_FILES


def _child(ds, q) -> None:
    kept = FILES.kept()  # a fork copies the parent's cache; the child never uses its files
    got = np.concatenate([b["id"] for b in ds.to_batches()])
    q.put((len(kept), int(got.sum()), len(FILES.kept())))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_opens_its_own(tmp_path):
    ds = tsfs.open_dataset(tsfs.write_dataset(str(tmp_path / "ds"), _data(800), SCHEMA).url)
    _ids(ds)
    assert _kept(ds)  # the parent keeps its file
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_child, args=(ds, q))
    p.start()
    inherited, total, own = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and inherited == 0 and total == sum(range(800)) and own == 1  # its own file, kept
    np.testing.assert_array_equal(_ids(ds), np.arange(800))  # the parent's file still works


def test_a_replaced_file_is_opened_again(tmp_path, opened):
    ds = tsfs.open_dataset(tsfs.write_dataset(str(tmp_path / "ds"), _data(500), SCHEMA).url)
    np.testing.assert_array_equal(_ids(ds), np.arange(500))
    path = ds.files[0]
    with open(path, "rb") as fh:
        data = fh.read()
    import os

    os.unlink(path)  # the same bytes under the same name, but another file (another inode)
    with open(path, "wb") as fh:
        fh.write(data)
    np.testing.assert_array_equal(_ids(ds), np.arange(500))
    assert len(opened) == 2  # the kept file was not reused
