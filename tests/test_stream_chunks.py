"""PlannedStream.iter_chunks (tf.data's path) delivers exactly iter_worker's batches, grouped."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.read import ReadOptions, open_stream
from tensorstore_fs.read.pieces import group_batches


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("chunks") / "ds")
    ids = np.arange(1500)
    tsfs.write_dataset(path, {"id": ids, "x": np.repeat(ids[:, None], 9, 1).astype(np.float32),
                              "v": [np.arange(i % 4, dtype=np.int16) for i in ids]},
                       row_group_bytes=3000, shard_bytes=20000)
    return path


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("filtered", [False, True])
@pytest.mark.parametrize("chunk_rows", [0, 1, 64, 100, 10_000])
def test_chunks_are_the_batches_regrouped(url, shuffle, filtered, chunk_rows):
    flt = (pc.field("id") > 100) & (pc.field("id") < 1300) if filtered else None
    options = ReadOptions(None, flt, None, 32, shuffle=shuffle, seed=1, remainder="pad", window_bytes=20000,
                          with_row_ids=True)
    stream, _ = open_stream(url, options, rank=1, world_size=2)
    plan = stream.plan(0, 2)
    for worker in range(2):
        batches = list(stream.iter_worker(plan, 1, worker, 2))
        chunks = list(stream.iter_chunks(plan, 1, worker, 2, chunk_rows=chunk_rows))
        assert sum(len(sizes) for _, sizes in chunks) == len(batches)
        i = 0
        for chunk, sizes in chunks:
            assert len(set(sizes)) == 1, "a chunk holds batches of one size"
            assert len(sizes) == 1 or sum(sizes) <= chunk_rows
            start = 0
            for n in sizes:
                want = batches[i]
                for key in ("id", "x", "__row_id__", "__pad__"):
                    np.testing.assert_array_equal(chunk[key][start:start + n], want[key])
                for a, b in zip(chunk["v"][start:start + n], want["v"]):
                    np.testing.assert_array_equal(a, b)
                start, i = start + n, i + 1


def testgroup_batches():
    b = [(np.arange(n), np.zeros(n, bool)) for n in (4, 4, 4, 3, 4)]
    assert [[len(x[0]) for x in g] for g in group_batches(b, 8)] == [[4, 4], [4], [3], [4]]
    assert [[len(x[0]) for x in g] for g in group_batches(b, 0)] == [[4], [4], [4], [3], [4]]
    assert [[len(x[0]) for x in g] for g in group_batches(b, 2)] == [[4], [4], [4], [3], [4]]
    assert [[len(x[0]) for x in g] for g in group_batches(b, 8, first_alone=True)] == [[4], [4, 4], [3], [4]]
    assert [[len(x[0]) for x in g] for g in group_batches(b, 0, first_alone=True)] == [[4], [4], [4], [3], [4]]
