"""Manifest commits: versions, appends, atomicity under exceptions and kills, corrupt manifests."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import fsspec
import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.manifest import LATEST, MANIFEST_FORMAT_VERSION, manifest_path

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32", (16,))])


def batch(start, n):
    ids = np.arange(start, start + n)
    return {"id": ids, "x": np.repeat(ids[:, None], 16, axis=1).astype(np.float32)}


def all_ids(ds):
    return np.concatenate([b["id"] for b in ds.to_batches()]) if len(ds) else np.zeros(0, np.int64)


@pytest.mark.parametrize("scheme", ["path", "file", "memory"])
def test_append_and_version_pinning(tmp_path, scheme):
    url = {"path": str(tmp_path / "ds"), "file": f"file://{tmp_path}/ds", "memory": f"memory://{uuid.uuid4().hex}/ds"}[scheme]
    v1 = tsfs.write_dataset(url, batch(0, 10), SCHEMA, shard_bytes=200)
    v2 = tsfs.write_dataset(url, batch(10, 5), mode="append", shard_bytes=200)
    assert (v1.version, v2.version, v2.parent_version) == (1, 2, 1)
    assert np.array_equal(all_ids(tsfs.open_dataset(url)), np.arange(15))
    assert np.array_equal(all_ids(tsfs.open_dataset(url, version=1)), np.arange(10))
    assert tsfs.open_dataset(url).versions() == [1, 2]
    assert {s.version_added for s in v2.shards} == {1, 2}
    with pytest.raises(tsfs.DatasetNotFoundError, match="version 3 does not exist"):
        tsfs.open_dataset(url, version=3)
    with pytest.raises(tsfs.InvalidArgumentError, match="version must be a positive int, got 0"):
        tsfs.open_dataset(url, version=0)


def test_open_reads_only_the_manifest(monkeypatch):
    url = f"memory://{uuid.uuid4().hex}/ds"
    ds = tsfs.write_dataset(url, batch(0, 100), SCHEMA, row_group_bytes=500, shard_bytes=2000)
    assert len(ds.shards) > 3
    fs = fsspec.filesystem("memory")
    for f in ds.files:  # no footer can be read if the shard files are gone
        fs.rm(f)

    def no_listing(*a, **k):
        raise AssertionError("open_dataset must not list directories")

    cls = type(fs)
    for name in ("ls", "find", "glob", "walk"):
        monkeypatch.setattr(cls, name, no_listing)
    again = tsfs.open_dataset(url)
    assert (len(again), again.version, again.schema) == (100, 1, SCHEMA)
    assert [s.rows for s in again.shards] == [s.rows for s in ds.shards]


def test_exception_inside_writer_commits_nothing_and_removes_shards(tmp_path):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, batch(0, 10), SCHEMA)
    before = sorted(p.name for p in (tmp_path / "ds" / "data").iterdir())
    with pytest.raises(RuntimeError, match="boom"):
        with tsfs.DatasetWriter(url, mode="append", row_group_bytes=100, shard_bytes=100) as w:
            for i in range(5):
                w.write(batch(100 + 10 * i, 10))
            assert len(list((tmp_path / "ds" / "data").iterdir())) > len(before)
            raise RuntimeError("boom")
    ds = tsfs.open_dataset(url)
    assert ds.version == 1 and np.array_equal(all_ids(ds), np.arange(10))
    assert sorted(p.name for p in (tmp_path / "ds" / "data").iterdir()) == before


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import tensorstore_fs as tsfs
    url = sys.argv[1]
    with tsfs.DatasetWriter(url, mode="append", row_group_bytes=1000, shard_bytes=3000) as w:
        for i in range(50):
            ids = np.arange(1000 + 20 * i, 1020 + 20 * i)
            w.write({"id": ids, "x": np.zeros((20, 16), np.float32)})
            if i == 30:
                print("writing", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_during_write_leaves_previous_version_intact(tmp_path):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, batch(0, 50), SCHEMA)
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "writing" in proc.stdout
    orphans = list((tmp_path / "ds" / "data").iterdir())
    assert len(orphans) > 2  # the killed writer did write shard files...
    ds = tsfs.open_dataset(url)  # ...but never committed them
    assert ds.version == 1 and np.array_equal(all_ids(ds), np.arange(50))
    ds.verify()
    ds2 = tsfs.write_dataset(url, batch(50, 5), mode="append")
    assert np.array_equal(all_ids(ds2), np.arange(55))


def _append_worker(url, start):
    tsfs.write_dataset(url, batch(start, 7), mode="append")


def test_concurrent_appends_both_land(tmp_path):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, batch(0, 7), SCHEMA)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_worker, args=(url, 100 * (i + 1))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ds = tsfs.open_dataset(url)
    assert ds.version == 5
    expected = np.concatenate([np.arange(7)] + [np.arange(100 * (i + 1), 100 * (i + 1) + 7) for i in range(4)])
    assert sorted(all_ids(ds)) == sorted(expected)


def test_stale_latest_hint_is_probed_past(tmp_path):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, batch(0, 3), SCHEMA)
    tsfs.write_dataset(url, batch(3, 3), mode="append")
    (tmp_path / "ds" / LATEST).write_text("1")  # as if the writer died between commit and hint
    assert tsfs.open_dataset(url).version == 2
    (tmp_path / "ds" / LATEST).unlink()
    assert tsfs.open_dataset(url).version == 2


def test_not_a_dataset(tmp_path):
    with pytest.raises(tsfs.DatasetNotFoundError, match="is not a tensorstore_fs dataset"):
        tsfs.open_dataset(str(tmp_path))
    with pytest.raises(FileNotFoundError):  # also the builtin
        tsfs.open_dataset(str(tmp_path / "missing"))


def _manifest(tmp_path):
    return tmp_path / "ds" / manifest_path(1)


@pytest.mark.parametrize(
    "damage, exc, match",
    [
        (lambda b: b[: len(b) // 2], tsfs.CorruptDatasetError, "not valid JSON"),
        (lambda b: b.replace(b'"rows": 10', b'"rows": 11', 1), tsfs.CorruptDatasetError, "failed its checksum"),
        (lambda b: b.replace(b'"format_version": %d' % MANIFEST_FORMAT_VERSION, b'"format_version": 99'),
         tsfs.UnsupportedFormatError, "format_version 99; this library reads version 1"),
        (lambda b: b"[]", tsfs.CorruptDatasetError, "is not a tensorstore_fs manifest"),
        (lambda b: b"", tsfs.CorruptDatasetError, "not valid JSON"),
    ],
    ids=["truncated", "tampered", "future-version", "not-a-manifest", "empty"],
)
def test_damaged_manifest(tmp_path, damage, exc, match):
    tsfs.write_dataset(str(tmp_path / "ds"), batch(0, 10), SCHEMA)
    m = _manifest(tmp_path)
    m.write_bytes(damage(m.read_bytes()))
    with pytest.raises(exc, match=match):
        tsfs.open_dataset(str(tmp_path / "ds"))


def test_manifest_is_plain_json_with_the_documented_keys(tmp_path):
    tsfs.write_dataset(str(tmp_path / "ds"), batch(0, 10), SCHEMA)
    d = json.loads(_manifest(tmp_path).read_bytes())
    assert {"format", "format_version", "version", "parent_version", "schema", "shards", "rows", "bytes",
            "checksum", "created_at", "writer"} <= set(d)
    shard = d["shards"][0]
    assert {"path", "rows", "bytes", "crc32c", "row_groups", "version_added"} <= set(shard)
    assert shard["row_groups"][0]["stats"]["id"] == {"min": 0, "max": 9, "nulls": 0}
    assert "x" not in shard["row_groups"][0]["stats"]  # tensor columns carry no statistics


def test_verify_detects_a_modified_shard(tmp_path):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), batch(0, 10), SCHEMA)
    ds.verify()
    path = ds.files[0]
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    data[100] ^= 0xFF
    with open(path, "wb") as fh:
        fh.write(data)
    with pytest.raises(tsfs.CorruptDatasetError, match=r"part-.*\.parquet: size \d+ crc32c [0-9a-f]{8}, manifest records"):
        ds.verify()


@pytest.mark.parametrize("reader", ["to_batches", "torch"])
def test_missing_or_replaced_shard_is_a_clear_error(tmp_path, reader):
    ds = tsfs.write_dataset(str(tmp_path / "ds"), batch(0, 10), SCHEMA)

    def read():
        if reader == "torch":
            from tensorstore_fs.readers.torch import TorchDataset

            return list(TorchDataset(ds, batch_size=4))
        return list(ds.to_batches())

    os.remove(ds.files[0])
    with pytest.raises(tsfs.DatasetNotFoundError, match=r"shard file data/part-.*\.parquet is missing"):
        read()
    with open(ds.files[0], "wb") as fh:
        fh.write(b"not parquet at all")
    with pytest.raises(tsfs.CorruptDatasetError, match="not a readable Parquet file"):
        read()


@pytest.mark.parametrize("path", ["../outside.parquet", "/tmp/outside.parquet", "data/../../outside.parquet",
                                  "data//x.parquet", "data", "other/x.parquet", "data\\..\\x.parquet"])
def test_a_manifest_cannot_name_files_outside_the_dataset(tmp_path, path):
    """A crafted manifest (with a valid checksum: it guards against damage, not against an author)
    must not make a reader open, verify or export a file outside the dataset's data/ folder."""
    from tensorstore_fs.manifest import _body_crc

    ds = tsfs.write_dataset(str(tmp_path / "ds"), batch(0, 10), SCHEMA)
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    with open(ds.files[0], "rb") as src, open(tmp_path / "outside.parquet", "wb") as dst:
        dst.write(src.read())  # a real shard there: only the path may give the crafted manifest away
    mpath = tmp_path / "ds" / manifest_path(1)
    body = json.loads(mpath.read_bytes())
    body.pop("checksum")
    body["shards"][0]["path"] = path
    body["checksum"] = f"{_body_crc(body):08x}"
    mpath.write_text(json.dumps(body))
    with pytest.raises(tsfs.CorruptDatasetError, match=r"manifest-0000000001\.json.*: shard path .*not a relative path inside data/"):
        tsfs.open_dataset(str(tmp_path / "ds"))


def _damage_column(path: str, column: str) -> None:
    """Overwrite the compressed values of ``column``'s first chunk in a Parquet file."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index(column))
    half = chunk.total_compressed_size // 2  # past the page header (with its statistics)
    with open(path, "r+b") as fh:
        fh.seek(chunk.data_page_offset + half)
        fh.write(b"\xff" * (chunk.total_compressed_size - half))


@pytest.mark.parametrize("reader", ["to_batches", "torch", "torch-shuffle", "torch-2-workers", "tf"])
def test_a_damaged_shard_is_a_clear_error_naming_its_file(tmp_path, reader):
    """Found in review: the loaders' sequential reads let pyarrow's bare OSError ("Corrupt snappy
    compressed data") through, naming no file; every read path names the file now."""
    ds = tsfs.write_dataset(str(tmp_path / "ds"), batch(0, 4000), SCHEMA, row_group_bytes=20_000, shard_bytes=60_000)
    assert len(ds.files) > 2
    _damage_column(ds.files[1], "id")
    pattern = r"ds/data/part-.*-00001\.parquet: (row group 0 )?unreadable: "
    if reader == "tf":  # tf.data hands a Python error on as a TensorFlow error whose message is ours
        tf = pytest.importorskip("tensorflow")
        exc, pattern = tf.errors.OpError, "CorruptDatasetError: .*" + pattern
    else:
        exc = tsfs.CorruptDatasetError
    with pytest.raises(exc, match=pattern):
        _read_all(ds, reader)


def _read_all(ds, reader: str) -> int:
    """Rows delivered by one of the library's readers (every read path)."""
    if reader == "tf":
        from tensorstore_fs.readers.tf import make_tf_dataset

        return sum(int(b["id"].shape[0]) for b in make_tf_dataset(ds, batch_size=64))
    if reader == "to_batches":
        return sum(len(b["id"]) for b in ds.to_batches(batch_size=64))
    from torch.utils.data import DataLoader

    from tensorstore_fs.readers.torch import TorchDataset

    loader = DataLoader(TorchDataset(ds, batch_size=64, shuffle=reader == "torch-shuffle"), batch_size=None,
                        num_workers=2 if reader == "torch-2-workers" else 0)
    return sum(len(b["id"]) for b in loader)


REPLACED_SHARDS = {  # a valid Parquet file with the recorded row groups (4 x 256 rows) but other contents
    "missing column": (lambda n: {"id": np.arange(n)}, r"no column 'x' in the file \(the schema stores it as "
                       r"fixed_size_binary\[64\]\)"),
    "tensor width": (lambda n: {"id": np.arange(n), "x": pa_fsb(32, n)},
                     r"column 'x' is fixed_size_binary\[32\] in the file, the schema stores fixed_size_binary\[64\]"),
    "scalar type": (lambda n: {"id": np.arange(n, dtype=np.float64), "x": pa_fsb(64, n)},
                    r"column 'id' is double in the file, the schema stores int64"),
}


def pa_fsb(width: int, n: int):
    import pyarrow as pa

    return pa.array([bytes(width)] * n, pa.binary(width))


@pytest.mark.parametrize("reader", ["to_batches", "torch", "torch-shuffle", "torch-2-workers", "tf"])
@pytest.mark.parametrize("case", [*REPLACED_SHARDS, "row groups"])
def test_a_replaced_shard_is_refused_by_every_reader(tmp_path, case, reader):
    """Found in review: the loaders read a shard file whose row groups differ from the manifest's
    into an IndexError, and one whose columns have other types into a TypeError, a KeyError or
    (shuffled) silently cast values; every reader now checks a file against the manifest and the
    schema when it opens it, and names it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if reader == "tf":
        tf = pytest.importorskip("tensorflow")
    ds = tsfs.write_dataset(str(tmp_path / "ds"), batch(0, 4000), SCHEMA, row_group_bytes=20_000, shard_bytes=60_000)
    layout = [g.rows for g in ds.shards[1].row_groups]
    assert layout == [256] * 4
    if case == "row groups":
        columns, match = {"id": np.arange(5), "x": pa_fsb(64, 5)}, r"file has 5 rows in 1 row groups, manifest says 1024 rows in 4"
    else:
        make, match = REPLACED_SHARDS[case]
        columns = make(1024)
    pq.write_table(pa.table(columns), ds.files[1], row_group_size=256)
    match = r"ds/data/part-.*-00001\.parquet: " + match
    with pytest.raises(tf.errors.OpError if reader == "tf" else tsfs.CorruptDatasetError, match=match):
        _read_all(tsfs.open_dataset(ds.url), reader)


def test_a_shard_rewritten_with_the_other_string_width_still_reads(tmp_path):
    # string and bytes scalars decode the same from either offset width (other writers pick either)
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("name", "string"), tsfs.Field("blob", "bytes")])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(8), "name": [f"n{i}" for i in range(8)],
                                                    "blob": [bytes([i]) for i in range(8)]}, schema)
    table = pq.read_table(ds.files[0])
    wide = pa.table({"id": table["id"], "name": table["name"].cast(pa.large_string()),
                     "blob": table["blob"].cast(pa.large_binary())})
    pq.write_table(wide, ds.files[0])
    got = tsfs.open_dataset(ds.url).head(8)
    assert list(got["name"]) == [f"n{i}" for i in range(8)]
    assert list(got["blob"]) == [bytes([i]) for i in range(8)]


def test_a_shape_column_with_non_nullable_items_still_reads(tmp_path):
    # other writers may declare the shape lists' items non-nullable (they never are null)
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("t", "int32", (None,))])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(4), "t": [np.arange(i) for i in range(4)]}, schema)
    table = pq.read_table(ds.files[0])
    strict = pa.list_(pa.field("element", pa.int32(), nullable=False), 1)
    pq.write_table(table.set_column(2, "__shape__t", table["__shape__t"].cast(strict)), ds.files[0])
    assert pq.read_schema(ds.files[0]).field("__shape__t").type.value_field.nullable is False
    rows = tsfs.open_dataset(ds.url).head(4)["t"]
    assert [list(r) for r in rows] == [list(range(i)) for i in range(4)]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_shards_are_never_pre_buffered_by_pyarrow(tmp_path, monkeypatch, where):
    """pyarrow's pre-buffering hands each column chunk of a memory-mapped file to its I/O threads
    (14x slower for a small column); remote files are RangedFiles, whose read-ahead fetches the
    chunks itself (pyarrow's coalescing would merge chunks of several row groups into reads that
    straddle the ranges fetched ahead)."""
    import pyarrow.parquet as pq

    url = str(tmp_path / "ds") if where == "local" else f"memory://prebuffer-{uuid.uuid4().hex}/ds"
    ds = tsfs.write_dataset(url, batch(0, 10), SCHEMA)
    seen = []
    real = pq.ParquetFile

    class Spy(real):
        def __init__(self, source, **kw):
            seen.append(kw.get("pre_buffer"))
            super().__init__(source, **kw)

    monkeypatch.setattr(pq, "ParquetFile", Spy)
    got = np.concatenate([b["id"] for b in tsfs.open_dataset(url).to_batches()])
    np.testing.assert_array_equal(got, np.arange(10))
    assert seen and not any(seen)
