"""The node-local shard cache (tensorstore_fs.cache) on a real S3 server."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs import cache as cache_module
from tensorstore_fs.cache import ShardCache

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32", (16,))])


def _rows(n: int) -> dict:
    ids = np.arange(n)
    return {"id": ids, "x": (ids[:, None] + np.arange(16)).astype(np.float32)}


@pytest.fixture(scope="module")
def url(s3):
    url = s3.url("cached")
    tsfs.write_dataset(url, _rows(3000), SCHEMA, storage_options=s3.storage_options(), row_group_bytes=16_000,
                       shard_bytes=60_000)
    return url


def _ids(ds) -> np.ndarray:
    return np.concatenate([b["id"] for b in ds.to_batches(batch_size=256)])


def test_the_second_epoch_needs_no_server(s3, url, tmp_path):
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options(connect_timeout=1, read_timeout=1,
                                                                   retries={"max_attempts": 1}),
                           cache_dir=str(tmp_path / "cache"))
    assert len(ds.shards) > 2
    np.testing.assert_array_equal(_ids(ds), np.arange(3000))  # fills the cache
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*/*") if not p.name.endswith(".lock"))
    assert sorted(n.split("-", 2)[2] for n in cached) == sorted(s.path.split("/")[-1] for s in ds.shards)
    s3.freeze()  # every data GET would now time out
    try:
        np.testing.assert_array_equal(_ids(ds), np.arange(3000))
        # a fresh open of the same version (manifest already read) and torch in-process too
        from tensorstore_fs.readers.torch import TorchDataset

        got = np.concatenate([b["id"].numpy() for b in TorchDataset(ds, batch_size=500, shuffle=True)])
        np.testing.assert_array_equal(np.sort(got), np.arange(3000))
    finally:
        s3.thaw()


def test_without_a_cache_nothing_is_written_locally(s3, url, tmp_path, monkeypatch):
    monkeypatch.delenv("TSFS_CACHE_DIR", raising=False)
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options())
    assert ds.storage.cache is None
    monkeypatch.setenv("TSFS_CACHE_DIR", str(tmp_path / "env"))
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options())
    assert ds.storage.cache.root == tmp_path / "env" / "shards"
    np.testing.assert_array_equal(_ids(ds), np.arange(3000))
    assert ds.storage.cache.size() == ds.nbytes


def _fetch(storage, info, go, out):
    go.wait()
    out.put(storage.cache.fetch(storage, info.path, info.bytes, info.crc32c))


def test_processes_share_one_download(s3, url, tmp_path, monkeypatch):
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options(), cache_dir=str(tmp_path / "c"))
    ctx = mp.get_context("fork")
    downloads = ctx.Value("i", 0)
    real = ShardCache._download

    def counted(self, *args):
        with downloads.get_lock():
            downloads.value += 1
        return real(self, *args)

    monkeypatch.setattr(ShardCache, "_download", counted)  # forked children inherit the patch
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_fetch, args=(ds.storage, ds.shards[0], go, out)) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()
    paths = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(paths) == 1 and downloads.value == 1


def test_a_download_that_is_not_the_recorded_file_is_refused(s3, tmp_path):
    url = s3.url("replaced")
    tsfs.write_dataset(url, _rows(500), SCHEMA, storage_options=s3.storage_options())
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options(), cache_dir=str(tmp_path / "c"))
    fs = ds.storage.fs
    path = ds.storage.path(ds.shards[0].path)
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF  # the same size, other bytes
    fs.pipe_file(path, bytes(data))
    with pytest.raises(tsfs.CorruptDatasetError, match=r"crc32c .* the manifest records .*not cached"):
        _ids(ds)
    assert ds.storage.cache.size() == 0


def test_least_recently_used_files_are_evicted(s3, url, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "EVICT_GRACE_S", 0.0)
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options(), cache_dir=str(tmp_path / "c"))
    biggest = max(s.bytes for s in ds.shards)
    ds.storage.cache.max_bytes = 2 * biggest  # room for two shards
    np.testing.assert_array_equal(_ids(ds), np.arange(3000))
    kept = [p.name for p in (tmp_path / "c").glob("*/*") if not p.name.endswith(".lock")]
    assert 1 <= len(kept) <= 2 and ds.storage.cache.size() <= 2 * biggest
    assert any(ds.shards[-1].path.split("/")[-1] in k for k in kept)  # the most recent stays


def test_files_used_within_the_grace_period_are_kept(s3, url, tmp_path, caplog):
    # a worker may have handed the main process the location of rows in any of them
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options(), cache_dir=str(tmp_path / "c"))
    ds.storage.cache.max_bytes = 1
    with caplog.at_level("WARNING", logger="tensorstore_fs.cache"):
        np.testing.assert_array_equal(_ids(ds), np.arange(3000))
    assert ds.storage.cache.size() == ds.nbytes
    assert "over its limit of 1: every file left was used in the last 300 s" in caplog.text


def test_dataloader_workers_hand_over_cached_rows_as_file_locations(s3, url, tmp_path, monkeypatch):
    from torch.utils.data import DataLoader

    from tensorstore_fs.readers import _torch_handoff
    from tensorstore_fs.readers.torch import TorchDataset

    located = []
    real = _torch_handoff.file_tensor

    def counted(rows):  # unpickled in this (the main) process
        located.append(rows.paths)
        return real(rows)

    monkeypatch.setattr(_torch_handoff, "file_tensor", counted)
    cache = tmp_path / "c"
    for shuffle in (False, True):
        reader = TorchDataset(url, batch_size=256, shuffle=shuffle, storage_options=s3.storage_options(),
                              cache_dir=cache)
        batches = list(DataLoader(reader, batch_size=None, num_workers=2, multiprocessing_context="spawn"))
        ids = np.concatenate([b["id"].numpy() for b in batches])
        assert sorted(ids.tolist()) == list(range(len(ids))) and len(ids) >= 3000 - 256
        for b in batches:
            np.testing.assert_array_equal(b["x"].numpy(), _rows(3000)["x"][b["id"].numpy()])
    assert located and all(str(p).startswith(str(cache)) for paths in located for p in paths)


def test_using_a_cached_file_never_changes_it(s3, url, tmp_path, monkeypatch):
    # readers keep a local file open while its identity (inode, size, mtime) holds: marking a
    # cached file used must not look like a replaced file, or every batch would map it again
    monkeypatch.setattr(cache_module, "TOUCH_EVERY_S", 0.0)
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options(), cache_dir=str(tmp_path / "c"))
    info = ds.shards[0]
    path = ds.storage.cache.fetch(ds.storage, info.path, info.bytes, info.crc32c)
    before = os.stat(path)
    lock = path + ".lock"
    os.utime(lock, (0, 0))
    assert ds.storage.cache.fetch(ds.storage, info.path, info.bytes, info.crc32c) == path
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert os.stat(lock).st_mtime > 0  # the use was recorded on the companion
