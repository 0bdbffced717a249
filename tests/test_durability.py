"""Durability on a local disk: shard files and the directories holding them are flushed (fsync)
before the manifest is linked into place, and the manifest's directory after.

The disk's own effect cannot be observed in a test (that needs a power cut), so these tests check
the calls and their order: ``os.fsync`` and ``os.link`` are wrapped (they still run) to record
which file or directory each ``fsync`` flushed, through ``/proc/self/fd``."""

from __future__ import annotations

import errno
import logging
import os
import uuid

import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.manifest import manifest_path

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32", (16,))])

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to name descriptors")


def batch(start, n):
    ids = np.arange(start, start + n)
    return {"id": ids, "x": np.repeat(ids[:, None], 16, axis=1).astype(np.float32)}


@pytest.fixture
def events(monkeypatch):
    """``[("fsync", path) | ("link", target)]`` in call order."""
    out: list[tuple[str, str]] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd):
        out.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def link(src, dst, *a, **k):
        real_link(src, dst, *a, **k)
        out.append(("link", os.path.realpath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    return out


def _commit_index(events, root, version):
    target = os.path.realpath(os.path.join(root, manifest_path(version)))
    found = [i for i, e in enumerate(events) if e == ("link", target)]
    assert len(found) == 1, events
    return found[0]


def _fsynced(events, upto=None, after=None):
    return {p for i, (kind, p) in enumerate(events)
            if kind == "fsync" and (upto is None or i < upto) and (after is None or i > after)}


def test_a_new_dataset_reaches_the_disk_before_its_commit(tmp_path, events):
    root = os.path.realpath(tmp_path / "new" / "ds")
    ds = tsfs.write_dataset(root, batch(0, 400), SCHEMA, row_group_bytes=4000, shard_bytes=10_000)
    assert len(ds.shards) > 2
    commit = _commit_index(events, root, 1)
    before, after = _fsynced(events, upto=commit), _fsynced(events, after=commit)
    assert {os.path.realpath(f) for f in ds.files} <= before  # every shard's bytes
    assert {f"{root}/data", root, os.path.dirname(root)} <= before  # directory entries; the root on creation
    assert f"{root}/_tsfs" in after  # the manifest's own name
    ds.verify()


def test_an_append_flushes_its_new_shards_and_data_dir(tmp_path, events):
    root = os.path.realpath(tmp_path / "ds")
    v1 = tsfs.write_dataset(root, batch(0, 100), SCHEMA)
    events.clear()
    v2 = tsfs.write_dataset(root, batch(100, 300), SCHEMA, mode="append", row_group_bytes=4000, shard_bytes=10_000)
    commit = _commit_index(events, root, 2)
    new = {os.path.realpath(v2.storage.path(s.path)) for s in v2.shards if s.version_added == 2}
    old = {os.path.realpath(v1.storage.path(s.path)) for s in v1.shards}
    before = _fsynced(events, upto=commit)
    assert new and new <= before and not old & before  # only what this write wrote
    assert {f"{root}/data", root} <= before
    assert f"{root}/_tsfs" in _fsynced(events, after=commit)


def test_object_stores_and_memory_need_no_fsync(events):
    tsfs.write_dataset(f"memory://{uuid.uuid4().hex}/ds", batch(0, 100), SCHEMA, row_group_bytes=4000,
                       shard_bytes=10_000)
    assert events == []


def test_a_failing_shard_fsync_commits_nothing(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 10), SCHEMA)
    before = sorted(p.name for p in (root / "data").iterdir())
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".parquet"):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output error"):
        tsfs.write_dataset(str(root), batch(10, 300), mode="append", row_group_bytes=4000, shard_bytes=10_000)
    monkeypatch.setattr(os, "fsync", real)
    ds = tsfs.open_dataset(str(root))
    assert ds.version == 1 and sorted(p.name for p in (root / "data").iterdir()) == before


def test_a_failing_directory_fsync_before_the_commit_commits_nothing(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 10), SCHEMA)
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == os.path.realpath(root / "data"):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(tsfs.StorageError, match="syncing before the commit failed"):
        tsfs.write_dataset(str(root), batch(10, 30), mode="append")
    assert tsfs.open_dataset(str(root)).version == 1 and len(list((root / "data").iterdir())) == 1


def test_a_failing_fsync_after_the_commit_keeps_the_version(tmp_path, monkeypatch, caplog):
    """The version is visible once the manifest is linked: a failure to flush its directory then
    is logged, never an abort that would delete the shards it names."""
    root = tmp_path / "ds"
    real, linked = os.fsync, []
    real_link = os.link

    def link(src, dst, *a, **k):
        real_link(src, dst, *a, **k)
        linked.append(dst)

    def fsync(fd):
        if linked and os.readlink(f"/proc/self/fd/{fd}") == os.path.realpath(root / "_tsfs"):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "fsync", fsync)
    with caplog.at_level(logging.WARNING, logger="tensorstore_fs.writer"):
        ds = tsfs.write_dataset(str(root), batch(0, 50), SCHEMA)
    assert "committed, but could not flush _tsfs" in caplog.text
    assert ds.version == 1 and len(tsfs.open_dataset(str(root))) == 50
    ds.verify()
