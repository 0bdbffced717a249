"""Vacuum: orphans of killed writers and old versions' files are removed, nothing a retained
version or a running writer needs is; a directory holding only the library's orphans is empty to
``write_dataset``."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.manifest import LATEST, manifest_path
from tensorstore_fs.storage import Storage
from tensorstore_fs.vacuum import RemovedFile, VacuumReport, _listing, library_orphans_only, parse_duration, vacuum

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32", (16,))])
SMALL = {"row_group_bytes": 2000, "shard_bytes": 4000}
HOUR = 3600


def batch(start, n):
    ids = np.arange(start, start + n)
    return {"id": ids, "x": np.repeat(ids[:, None], 16, axis=1).astype(np.float32)}


def ids_of(ds):
    return np.concatenate([b["id"] for b in ds.to_batches()])


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def age(root: Path, rels, seconds=2 * HOUR):
    """Make files look ``seconds`` old (mtime)."""
    t = time.time() - seconds
    for rel in rels:
        os.utime(root / rel, (t, t))


def _write_forever(url):
    with tsfs.DatasetWriter(url, SCHEMA, mode="error", **SMALL) as w:
        for i in range(1_000_000):
            w.write(batch(20 * i, 20))


def _kill_while_creating(url: str, root: Path) -> set[str]:
    """A writer creating a dataset, SIGKILLed once its first shard file exists; its leftovers."""
    proc = mp.get_context("spawn").Process(target=_write_forever, args=(url,))
    proc.start()
    deadline = time.monotonic() + 120
    try:
        while not ((root / "data").exists() and list((root / "data").glob("part-*.parquet"))):
            assert proc.is_alive() and time.monotonic() < deadline, "the writer never wrote a shard file"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    return files(root)


def test_a_killed_creation_leaves_orphans_that_block_nothing_and_vacuum_removes(tmp_path):
    root = tmp_path / "ds"
    orphans = _kill_while_creating(str(root), root)
    assert orphans and all(o.startswith("data/part-") for o in orphans)
    assert not (root / "_tsfs").exists() or not list((root / "_tsfs").glob("manifest-*"))  # nothing committed
    assert library_orphans_only(Storage(str(root)))
    with pytest.raises(tsfs.DatasetNotFoundError):
        tsfs.open_dataset(str(root))

    # both refusing modes see the library's own leftovers as an empty directory
    shutil.copytree(root, tmp_path / "copy")
    tsfs.write_dataset(str(tmp_path / "copy"), batch(0, 10), SCHEMA, mode="overwrite")
    v1 = tsfs.write_dataset(str(root), batch(0, 50), SCHEMA, mode="error", **SMALL)
    assert v1.version == 1 and np.array_equal(ids_of(v1), np.arange(50))
    v2 = tsfs.write_dataset(str(root), batch(100, 30), SCHEMA, mode="overwrite", **SMALL)
    v3 = tsfs.write_dataset(str(root), batch(200, 30), SCHEMA, mode="append", **SMALL)
    v1_only = {s.path for s in v1.shards}
    assert orphans.isdisjoint(v1_only | {s.path for s in v3.shards})

    # the default safety age keeps everything this young: a writer may still be writing it
    report = tsfs.open_dataset(str(root)).vacuum(retain_versions=2)
    assert report.removed == () and set(report.kept_recent) >= orphans
    assert report.retained_versions == (1, 2, 3)  # version 1 was superseded a moment ago
    assert files(root) >= orphans

    sizes = {rel: (root / rel).stat().st_size for rel in files(root)}
    report = tsfs.open_dataset(str(root)).vacuum(retain_versions=2, older_than=0)
    assert isinstance(report, VacuumReport) and not report.dry_run
    assert report.retained_versions == (2, 3) and report.removed_versions == (1,)
    removed = {f.path: f.reason for f in report.removed}
    assert removed == {**{o: "orphan" for o in orphans}, **{p: "old-version" for p in v1_only},
                       manifest_path(1): "manifest"}
    assert report.bytes_reclaimed == sum(sizes[p] for p in removed)
    assert not files(root) & set(removed)
    # retained versions intact
    ds3 = tsfs.open_dataset(str(root))
    assert ds3.version == 3 and np.array_equal(ids_of(ds3), np.r_[np.arange(100, 130), np.arange(200, 230)])
    ds3.verify()
    ds2 = tsfs.open_dataset(str(root), version=2)
    assert np.array_equal(ids_of(ds2), np.arange(100, 130))
    ds2.verify()
    assert ds3.versions() == [2, 3]
    assert (root / LATEST).read_text().strip() == "3"
    with pytest.raises(tsfs.DatasetNotFoundError, match=r"version 1 does not exist any more: it was removed .*vacuum"):
        tsfs.open_dataset(str(root), version=1)
    # a second vacuum finds nothing; the next write continues the history
    assert vacuum(str(root), retain_versions=2, older_than=0).removed == ()
    assert tsfs.write_dataset(str(root), batch(300, 5), mode="append").version == 4


def test_foreign_files_still_refuse_a_write(tmp_path):
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    (root / "data" / "part-0123456789ab-00000.parquet").write_bytes(b"orphan")
    (root / "notes.txt").write_text("mine")
    assert not library_orphans_only(Storage(str(root)))
    for mode in ("error", "overwrite"):
        with pytest.raises(tsfs.DatasetExistsError, match="not empty|not a tensorstore_fs dataset"):
            tsfs.write_dataset(str(root), batch(0, 5), SCHEMA, mode=mode)
    # a file merely looking like a shard in the wrong place is foreign too
    other = tmp_path / "other"
    other.mkdir()
    (other / "part-0123456789ab-00000.parquet").write_bytes(b"x")
    with pytest.raises(tsfs.DatasetExistsError):
        tsfs.write_dataset(str(other), batch(0, 5), SCHEMA)
    # vacuum refuses a directory that is neither a dataset nor the library's leftovers
    with pytest.raises(tsfs.DatasetNotFoundError, match="not a tensorstore_fs dataset"):
        vacuum(str(root), older_than=0)
    assert files(root) == {"data/part-0123456789ab-00000.parquet", "notes.txt"}


def test_vacuum_never_touches_foreign_files_or_links(tmp_path):
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 20), SCHEMA, **SMALL)
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(b"precious")
    (root / "data" / "README").write_text("keep")
    (root / "data" / "part-aaaaaaaaaaaa-00000.parquet.bak").write_text("keep")
    os.symlink(outside, root / "data" / "part-bbbbbbbbbbbb-00000.parquet")
    (root / "_tsfs" / "notes.json").write_text("{}")
    (root / "_tsfs" / "manifest-0000000001.json.tmp-0123abcd").write_text("half")
    report = vacuum(str(root), older_than=0)
    assert {f.path: f.reason for f in report.removed} == {"_tsfs/manifest-0000000001.json.tmp-0123abcd": "temp"}
    assert set(report.foreign) == {"data/README", "data/part-aaaaaaaaaaaa-00000.parquet.bak",
                                   "data/part-bbbbbbbbbbbb-00000.parquet", "_tsfs/notes.json"}
    assert outside.read_bytes() == b"precious" and (root / "data" / "part-bbbbbbbbbbbb-00000.parquet").is_symlink()
    tsfs.open_dataset(str(root)).verify()


def test_dry_run_removes_nothing(tmp_path):
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 20), SCHEMA, **SMALL)
    tsfs.write_dataset(str(root), batch(50, 20), SCHEMA, mode="overwrite", **SMALL)
    before = {rel: (root / rel).read_bytes() for rel in files(root)}
    report = vacuum(str(root), retain_versions=1, older_than=0, dry_run=True)
    assert report.dry_run and report.removed_versions == (1,) and report.bytes_reclaimed > 0
    assert "would remove" in report.summary()
    assert {rel: (root / rel).read_bytes() for rel in files(root)} == before
    assert np.array_equal(ids_of(tsfs.open_dataset(str(root), version=1)), np.arange(20))


def test_safety_age_protects_recent_files_and_running_writers(tmp_path):
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 20), SCHEMA)
    data = root / "data"
    old_orphan = "data/part-111111111111-00000.parquet"
    young_orphan = "data/part-222222222222-00000.parquet"
    running = ["data/part-333333333333-00000.parquet", "data/part-333333333333-00001.parquet"]
    for rel in [old_orphan, young_orphan, *running]:
        (root / rel).write_bytes(b"x" * 100)
    age(root, [old_orphan, running[0]])  # the running writer's first shard is old, its second new
    report = vacuum(str(root))  # default: 1 hour
    assert [f.path for f in report.removed] == [old_orphan]
    assert set(report.kept_recent) == {young_orphan, *running}
    assert not (data / "part-111111111111-00000.parquet").exists()
    assert all((root / rel).exists() for rel in [young_orphan, *running])
    assert vacuum(str(root), older_than="30m").removed == ()
    age(root, [young_orphan, *running], seconds=HOUR // 2 + 60)
    assert {f.path for f in vacuum(str(root), older_than="30m").removed} == {young_orphan, *running}


def test_a_recently_superseded_version_is_kept_for_its_readers(tmp_path):
    root = tmp_path / "ds"
    v1 = tsfs.write_dataset(str(root), batch(0, 20), SCHEMA)
    tsfs.write_dataset(str(root), batch(50, 20), SCHEMA, mode="overwrite")
    age(root, [s.path for s in v1.shards] + [manifest_path(1)])
    report = vacuum(str(root), retain_versions=1)  # version 2 replaced version 1 just now
    assert report.retained_versions == (1, 2) and report.removed == ()
    age(root, [manifest_path(2)])  # ... and now long ago
    report = vacuum(str(root), retain_versions=1)
    assert report.removed_versions == (1,)
    assert {f.reason for f in report.removed} == {"manifest", "old-version"}


def test_appended_versions_share_files_that_stay(tmp_path):
    root = tmp_path / "ds"
    v1 = tsfs.write_dataset(str(root), batch(0, 40), SCHEMA, **SMALL)
    for k in range(1, 4):
        tsfs.write_dataset(str(root), batch(100 * k, 10), SCHEMA, mode="append", **SMALL)
    report = vacuum(str(root), retain_versions=1, older_than=0)
    assert report.removed_versions == (1, 2, 3)
    assert {f.reason for f in report.removed} == {"manifest"}  # every shard is still in version 4
    ds = tsfs.open_dataset(str(root))
    assert ds.versions() == [4] and len(ds) == 70
    ds.verify()
    assert all((root / s.path).exists() for s in v1.shards)


def test_the_newest_version_stays_openable_with_a_stale_hint(tmp_path):
    root = tmp_path / "ds"
    for k in range(4):
        tsfs.write_dataset(str(root), batch(10 * k, 10), SCHEMA, mode="overwrite" if k else "error")
    (root / LATEST).write_text("1")  # stale: vacuum must rewrite it before deleting version 1
    vacuum(str(root), retain_versions=1, older_than=0)
    assert (root / LATEST).read_text() == "4"
    ds = tsfs.open_dataset(str(root))
    assert ds.version == 4 and np.array_equal(ids_of(ds), np.arange(30, 40))
    for hint in ("", "garbage"):  # a lost or damaged hint: the oldest manifest left is found by listing
        (root / LATEST).write_text(hint)
        assert tsfs.open_dataset(str(root)).version == 4
    (root / LATEST).unlink()
    assert tsfs.open_dataset(str(root)).version == 4


def test_vacuum_on_memory_filesystem():
    url = f"memory://{uuid.uuid4().hex}/ds"
    tsfs.write_dataset(url, batch(0, 20), SCHEMA, **SMALL)
    tsfs.write_dataset(url, batch(50, 20), SCHEMA, mode="overwrite", **SMALL)
    fsspec.filesystem("memory").pipe(f"{url}/data/part-0123456789ab-00000.parquet", b"orphan")
    report = vacuum(url, retain_versions=1, older_than=0)
    assert report.removed_versions == (1,)
    assert "data/part-0123456789ab-00000.parquet" in {f.path for f in report.removed}
    assert np.array_equal(ids_of(tsfs.open_dataset(url)), np.arange(50, 70))


def test_bad_arguments_are_clear_errors(tmp_path):
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 5), SCHEMA)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(tsfs.InvalidArgumentError, match="retain_versions must be an int >= 1"):
            vacuum(str(root), retain_versions=bad)
    for bad in ("-1h", "soon", float("nan"), float("inf"), -5, [1]):
        with pytest.raises(tsfs.InvalidArgumentError, match="older_than"):
            vacuum(str(root), older_than=bad)
    with pytest.raises(tsfs.DatasetNotFoundError):
        vacuum(str(tmp_path / "nothing"))
    with pytest.raises(tsfs.InvalidArgumentError):
        RemovedFile("data/x", 1, "because")


def test_parse_duration():
    import datetime as dt

    assert [parse_duration(x) for x in ("0", "90", "90s", "15m", "2h", "1d", "1w", " 1.5H ")] == \
        [0, 90, 90, 900, 7200, 86400, 604800, 5400]
    assert parse_duration(dt.timedelta(minutes=2)) == 120 and parse_duration(7) == 7


def test_a_shard_removed_before_the_commit_fails_the_write(tmp_path):
    """A vacuum with too short a safety age racing a writer: the writer refuses to commit a
    version naming a file that is gone."""
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 10), SCHEMA)
    w = tsfs.DatasetWriter(str(root), mode="append", **SMALL)
    for i in range(10):
        w.write(batch(100 + 20 * i, 20))
    finished = [s.path for s in w._shards]
    assert finished
    age(root, finished)  # long done, but the writer is still writing: vacuum keeps them
    report = vacuum(str(root))
    assert report.removed == () and set(finished) <= set(report.kept_recent)
    os.remove(root / finished[0])  # as a vacuum with too short a safety age would
    with pytest.raises(tsfs.StorageError, match="vanished before the commit.*nothing was committed"):
        w.close()
    ds = tsfs.open_dataset(str(root))
    assert ds.version == 1 and np.array_equal(ids_of(ds), np.arange(10))


def test_cli_vacuum(tmp_path):
    root = tmp_path / "ds"
    tsfs.write_dataset(str(root), batch(0, 20), SCHEMA)
    tsfs.write_dataset(str(root), batch(50, 20), SCHEMA, mode="overwrite")
    (root / "data" / "part-0123456789ab-00000.parquet").write_bytes(b"o" * 10)

    def tsfs_cli(*args):
        return subprocess.run([sys.executable, "-m", "tensorstore_fs.cli", *args], capture_output=True, text=True,
                              timeout=120)

    before = files(root)
    out = tsfs_cli("vacuum", str(root), "--dry-run", "--retain-versions", "1", "--older-than", "0")
    assert out.returncode == 0, out.stderr
    assert "would remove data/part-0123456789ab-00000.parquet  10 bytes  (orphan)" in out.stdout
    assert f"would remove {manifest_path(1)}" in out.stdout and "versions 1 would be removed" in out.stdout
    assert files(root) == before
    out = tsfs_cli("vacuum", str(root))  # default: keep every version, nothing younger than 1 h
    assert out.returncode == 0 and "removed 0 file(s)" in out.stdout and "kept data/part-0123456789ab" in out.stdout
    out = tsfs_cli("vacuum", str(root), "--retain-versions", "1", "--older-than", "0")
    assert out.returncode == 0, out.stderr
    assert "removed data/part-0123456789ab-00000.parquet" in out.stdout and "bytes" in out.stdout
    assert not (root / manifest_path(1)).exists() and tsfs.open_dataset(str(root)).versions() == [2]
    for bad in (["--older-than", "soon"], ["--retain-versions", "0"]):
        out = tsfs_cli("vacuum", str(root), *bad)
        assert out.returncode == 1 and out.stderr.startswith("tsfs: error:"), out.stderr


# -- S3 -------------------------------------------------------------------------------------------
def test_vacuum_on_s3(s3):
    url, options = s3.url(f"vacuum-{uuid.uuid4().hex[:6]}"), s3.storage_options()
    storage = Storage(url, options)
    fs = storage.fs
    # leftovers of a killed first write: the next write treats the prefix as empty
    fs.pipe(f"{storage.root}/data/part-0123456789ab-00000.parquet", b"orphan" * 10)
    assert library_orphans_only(storage)
    v1 = tsfs.write_dataset(url, batch(0, 40), SCHEMA, mode="error", storage_options=options, **SMALL)
    tsfs.write_dataset(url, batch(100, 30), SCHEMA, mode="overwrite", storage_options=options, **SMALL)
    entries = _listing(storage)  # S3's LastModified is the age vacuum goes by
    assert entries and all(e.mtime is not None and abs(time.time() - e.mtime) < 600 for e in entries)
    assert vacuum(url, retain_versions=1, storage_options=options).removed == ()  # all too young
    report = vacuum(url, retain_versions=1, older_than=0, storage_options=options)
    removed = {f.path: f.reason for f in report.removed}
    assert removed == {"data/part-0123456789ab-00000.parquet": "orphan", manifest_path(1): "manifest",
                       **{s.path: "old-version" for s in v1.shards}}
    assert report.bytes_reclaimed == 60 + sum(s.bytes for s in v1.shards) + report.removed[0].bytes
    fs.invalidate_cache()
    assert not any(fs.exists(f"{storage.root}/{p}") for p in removed)
    ds = tsfs.open_dataset(url, storage_options=options)
    assert ds.version == 2 and np.array_equal(ids_of(ds), np.arange(100, 130))
    ds.verify()
    with pytest.raises(tsfs.DatasetNotFoundError, match="version 1 does not exist any more"):
        tsfs.open_dataset(url, version=1, storage_options=options)


def test_a_shard_removed_before_the_commit_fails_the_write_on_s3(s3):
    # on an object store the writer lists only its own files (their names carry its id)
    url = s3.url("vanish")
    so = s3.storage_options()
    tsfs.write_dataset(url, batch(0, 10), SCHEMA, storage_options=so)
    w = tsfs.DatasetWriter(url, mode="append", storage_options=so, **SMALL)
    for i in range(10):
        w.write(batch(100 + 20 * i, 20))
    finished = [s.path for s in w._shards]
    assert finished
    w.storage.fs.rm(w.storage.path(finished[0]))
    with pytest.raises(tsfs.StorageError, match="vanished before the commit.*nothing was committed"):
        w.close()
    ds = tsfs.open_dataset(url, storage_options=so)
    assert ds.version == 1 and np.array_equal(ids_of(ds), np.arange(10))
