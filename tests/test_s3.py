"""Object storage for real: a SeaweedFS S3 server on loopback (tests/s3_server.py)."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

import tensorstore_fs as tsfs

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32", (4,))])


def _rows(start: int, n: int) -> dict:
    ids = np.arange(start, start + n)
    return {"id": ids, "x": (ids[:, None] + np.arange(4)).astype(np.float32)}


def test_write_read_round_trip(s3):
    url = s3.url("roundtrip")
    tsfs.write_dataset(url, _rows(0, 3000), SCHEMA, storage_options=s3.storage_options(), row_group_bytes=8000,
                       shard_bytes=40_000)
    ds = tsfs.open_dataset(url, storage_options=s3.storage_options())
    assert len(ds.shards) > 1
    got = np.concatenate([b["id"] for b in ds.to_batches(batch_size=256)])
    np.testing.assert_array_equal(got, np.arange(3000))
    ds.verify()


def _append(url, options, worker, times, q):
    done = []
    for k in range(times):
        start = (worker * times + k) * 10
        ds = tsfs.write_dataset(url, _rows(start, 10), SCHEMA, mode="append", storage_options=options)
        done.append((ds.version, start))
    q.put(done)


def test_concurrent_appends_lose_nothing(s3):
    """8 processes x 5 appends at once: every append is in the last version, versions consecutive."""
    url, options = s3.url("race"), s3.storage_options()
    tsfs.write_dataset(url, _rows(-10, 10), SCHEMA, storage_options=options)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_append, args=(url, options, w, 5, q)) for w in range(8)]
    for p in procs:
        p.start()
    results = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    versions = sorted(v for r in results for v, _ in r)
    assert versions == list(range(2, 42))  # one version per append, none shared
    ds = tsfs.open_dataset(url, storage_options=options)
    assert ds.version == 41
    got = np.sort(np.concatenate([b["id"] for b in ds.to_batches(batch_size=1000)]))
    np.testing.assert_array_equal(got, np.arange(-10, 400))


def test_a_version_that_exists_is_a_conflict(s3):
    from tensorstore_fs.storage import Storage

    st = Storage(s3.url("conflict"), s3.storage_options())
    st.create_exclusive("_tsfs/x", b"first")
    with pytest.raises(tsfs.CommitConflictError, match="already exists"):
        st.create_exclusive("_tsfs/x", b"second")
    assert st.read_bytes("_tsfs/x") == b"first"


def test_filesystems_without_conditional_create_refuse_to_commit(tmp_path, monkeypatch):
    """A filesystem with no known conditional create (here: fsspec's local filesystem through a
    ``dir::`` chain) refuses commits unless the caller allows them."""
    url = f"dir::file://{tmp_path / 'ds'}"
    monkeypatch.delenv("TSFS_UNSAFE_COMMITS", raising=False)
    with pytest.raises(tsfs.UnsafeCommitError, match=r"DirFileSystem .*cannot create .* only if it does not exist"):
        tsfs.write_dataset(url, _rows(0, 10), SCHEMA)
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").rglob("*"))  # nothing written
    ds = tsfs.write_dataset(url, _rows(0, 10), SCHEMA, unsafe_commits=True)
    assert len(ds) == 10
    monkeypatch.setenv("TSFS_UNSAFE_COMMITS", "1")
    ds = tsfs.write_dataset(url, _rows(10, 10), SCHEMA, mode="append")
    assert len(ds) == 20


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_read_s3(s3, start_method):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from tensorstore_fs.readers.torch import TorchDataset

    url = s3.url("workers")
    if not _exists(url, s3):
        tsfs.write_dataset(url, _rows(0, 2000), SCHEMA, storage_options=s3.storage_options(), row_group_bytes=8000)
    ds = TorchDataset(url, batch_size=100, shuffle=True, storage_options=s3.storage_options())
    ds.stream.ds.storage.fs  # the parent has its own filesystem (and event loop) before the fork
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=start_method)
    got = torch.cat([b["id"] for b in loader]).numpy()
    np.testing.assert_array_equal(np.sort(got), np.arange(2000))


def _exists(url, s3) -> bool:
    try:
        tsfs.open_dataset(url, storage_options=s3.storage_options())
        return True
    except tsfs.DatasetNotFoundError:
        return False


def test_a_frozen_server_is_an_error_within_the_timeout(s3):
    """SIGSTOP: the server accepts connections and never answers. A read fails with a
    StorageError naming the URL within the configured timeouts instead of hanging."""
    url = s3.url("frozen")
    tsfs.write_dataset(url, _rows(0, 500), SCHEMA, storage_options=s3.storage_options())
    options = s3.storage_options(connect_timeout=2, read_timeout=2, retries={"max_attempts": 2, "mode": "standard"})
    ds = tsfs.open_dataset(url, storage_options=options)
    s3.freeze()
    try:
        start = time.monotonic()
        with pytest.raises(tsfs.StorageError, match=r"frozen") as info:
            list(ds.to_batches())
        assert time.monotonic() - start < 30
        assert isinstance(info.value, OSError)
    finally:
        s3.thaw()
    np.testing.assert_array_equal(np.concatenate([b["id"] for b in ds.to_batches()]), np.arange(500))


def test_a_brief_outage_is_retried(s3):
    """The server freezes for a few seconds in the middle of an epoch: requests time out, are
    retried, and the epoch has every row once."""
    import threading

    url = s3.url("outage")
    tsfs.write_dataset(url, _rows(0, 2000), SCHEMA, storage_options=s3.storage_options(), row_group_bytes=4000,
                       shard_bytes=16_000)
    options = s3.storage_options(connect_timeout=2, read_timeout=2, retries={"max_attempts": 6, "mode": "standard"})
    ds = tsfs.open_dataset(url, storage_options=options)
    assert len(ds.shards) > 2
    batches = ds.to_batches(batch_size=100)
    got = [next(batches)["id"]]
    s3.freeze()
    timer = threading.Timer(3.0, s3.thaw)
    timer.start()
    try:
        got += [b["id"] for b in batches]
    finally:
        timer.cancel()
        s3.thaw()
    np.testing.assert_array_equal(np.concatenate(got), np.arange(2000))


@pytest.mark.parametrize("readahead", [0, 1])
def test_a_server_that_goes_away_is_a_storage_error(tmp_path, readahead):
    """The server is stopped mid-epoch: the next read raises StorageError naming the shard (read
    directly, or by read-ahead that fetches one row group ahead)."""
    from s3_server import SeaweedS3, require_weed

    require_weed()
    server = SeaweedS3(tmp_path).start()
    try:
        url = server.url("gone")
        tsfs.write_dataset(url, _rows(0, 2000), SCHEMA, storage_options=server.storage_options(),
                           row_group_bytes=4000, shard_bytes=16_000)
        options = server.storage_options(connect_timeout=2, read_timeout=2, retries={"max_attempts": 2})
        ds = tsfs.open_dataset(url, storage_options=options)
        batches = ds.to_batches(batch_size=100, readahead_bytes=readahead)
        next(batches)
        server.stop()
        with pytest.raises(tsfs.StorageError, match=rf"{url}/data/.*: (reading( bytes \d+-\d+)?|opening|seeking) failed"):
            for _ in batches:
                pass
    finally:
        server.stop()
