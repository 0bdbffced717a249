"""Where a dataset's bytes come from: a local path is a local path (``::`` included), chains of
URLs only with an explicit protocol, and a reader never follows a link or a manifest path out of
the dataset's folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs import remote
from tensorstore_fs._crc import crc32c
from tensorstore_fs.storage import Storage

SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("image", "uint8", (2, 2))])


def data(n: int, start: int = 0) -> dict:
    return {"id": np.arange(start, start + n), "image": np.zeros((n, 2, 2), np.uint8)}


# -- "::" in a local path ---------------------------------------------------------------------------
def test_a_local_path_with_double_colons_is_its_own_dataset(tmp_path):
    run = str(tmp_path / "run")
    other = str(tmp_path / "run::b")
    tsfs.write_dataset(run, data(10), SCHEMA)
    tsfs.write_dataset(other, data(3, 100), SCHEMA, mode="append")  # creates run::b, leaves run alone
    assert len(tsfs.open_dataset(run)) == 10
    assert tsfs.open_dataset(other).to_table().column("id").to_pylist() == [100, 101, 102]
    assert os.path.isdir(other) and os.path.exists(os.path.join(other, "_tsfs"))
    assert tsfs.open_dataset(run).versions() == [1]


def test_a_relative_path_with_double_colons_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tsfs.write_dataset("x::memory", data(4), SCHEMA)
    assert os.path.isdir(tmp_path / "x::memory")
    assert len(tsfs.open_dataset("x::memory")) == 4


@pytest.mark.parametrize("url, local", [
    ("/data/run::b", True), ("run::b", True), ("relative/dir", True), ("/plain", True),
    ("s3://bucket/x", False), ("file:///data/x", False), ("memory://x", False),
    ("simplecache::s3://bucket/x", False), ("simplecache::/data/x", False),
])
def test_which_urls_are_local_paths(url, local):
    assert remote.is_local_path(url) is local


def test_an_explicit_chain_still_goes_to_fsspec(tmp_path):
    root = str(tmp_path / "ds")
    tsfs.write_dataset(root, data(5), SCHEMA)
    ds = tsfs.open_dataset(f"simplecache::file://{root}",
                           storage_options={"simplecache": {"cache_storage": str(tmp_path / "cache")}})
    assert ds.to_table().column("id").to_pylist() == list(range(5))


def test_storage_of_a_colon_path_is_local(tmp_path):
    p = str(tmp_path / "a::b")
    s = Storage(p)
    assert s.is_local and s.root == p


# -- links and paths out of the dataset -----------------------------------------------------------
def _dataset(tmp_path) -> tuple[str, str]:
    root = str(tmp_path / "ds")
    tsfs.write_dataset(root, data(8), SCHEMA)
    shard = tsfs.open_dataset(root).files[0]
    return root, shard


def test_a_shard_linked_outside_the_dataset_is_refused(tmp_path):
    root, shard = _dataset(tmp_path)
    outside = str(tmp_path / "secret.parquet")
    os.replace(shard, outside)
    os.symlink(outside, shard)
    ds = tsfs.open_dataset(root)
    for read in (ds.to_table, lambda: ds.head(2), ds.verify, lambda: list(ds.to_batches())):
        with pytest.raises(tsfs.CorruptDatasetError) as info:
            read()
        msg = str(info.value)
        assert shard in msg and outside in msg and "outside the dataset" in msg


def test_a_data_folder_linked_outside_is_refused(tmp_path):
    root, shard = _dataset(tmp_path)
    elsewhere = str(tmp_path / "elsewhere")
    os.replace(os.path.join(root, "data"), elsewhere)
    os.symlink(elsewhere, os.path.join(root, "data"))
    with pytest.raises(tsfs.CorruptDatasetError, match="outside the dataset") as info:
        tsfs.open_dataset(root).to_table()
    assert os.path.join(root, "data") in str(info.value) and elsewhere in str(info.value)


def test_links_inside_the_dataset_and_a_linked_root_are_fine(tmp_path):
    root, shard = _dataset(tmp_path)
    inside = os.path.join(root, "data", "moved.parquet")
    os.replace(shard, inside)
    os.symlink(inside, shard)
    assert tsfs.open_dataset(root).to_table().column("id").to_pylist() == list(range(8))
    alias = str(tmp_path / "alias")
    os.symlink(root, alias)  # the dataset's root itself may be reached through a link
    assert len(tsfs.open_dataset(alias).to_table()) == 8


@pytest.mark.parametrize("path", ["../outside.parquet", "data/../../outside.parquet", "/tmp/outside.parquet",
                                  "data//x.parquet", "data/a\x00.parquet"])
def test_manifest_paths_out_of_the_dataset_are_refused(tmp_path, path):
    root, _ = _dataset(tmp_path)
    rel = os.path.join(root, "_tsfs/manifest-0000000001.json")
    with open(rel) as fh:
        d = json.load(fh)
    d.pop("checksum")
    d["shards"][0]["path"] = path
    d["checksum"] = f"{crc32c(json.dumps(d, sort_keys=True, separators=(',', ':')).encode()):08x}"
    with open(rel, "w") as fh:
        json.dump(d, fh)
    with pytest.raises(tsfs.CorruptDatasetError, match="manifest-0000000001.json.*not a relative path inside data/"):
        tsfs.open_dataset(root)
