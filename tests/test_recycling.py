"""Gathered batch arrays are recycled only once nobody holds them."""

from __future__ import annotations

import numpy as np
import torch

import tensorstore_fs as tsfs
from tensorstore_fs.readers.torch import TorchDataset
from tensorstore_fs._pool import SMALL_BYTES, RecyclingPool as _RecyclingPool


SHAPE = (4, SMALL_BYTES // 16)  # float32: exactly SMALL_BYTES, the smallest recycled size
WIDE = (5, SMALL_BYTES // 4)


def test_pool_never_hands_out_a_held_array():
    pool = _RecyclingPool()
    a = pool.empty(SHAPE, np.float32)
    t = torch.from_numpy(a)
    view = a[1:]
    del a
    b = pool.empty(SHAPE, np.float32)
    assert not np.shares_memory(b, t.numpy())
    del t
    c = pool.empty(SHAPE, np.float32)
    assert not np.shares_memory(c, view)  # a view keeps its base alive, so still not reused
    del view, b, c
    first = pool.empty(SHAPE, np.float32)
    assert any(first is arr for _, arr in pool._free[(SHAPE, np.dtype(np.float32).str)])  # reused once free


def test_pool_arrays_are_aligned_and_views_of_views_count():
    pool = _RecyclingPool()
    a = pool.empty(WIDE, np.uint8)
    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
    row = a[2][1:]  # numpy points this view at the owning buffer, not at ``a``
    del a
    b = pool.empty(WIDE, np.uint8)
    assert not np.shares_memory(b, row)
    del row, b
    assert pool.empty(WIDE, np.uint8).ctypes.data % 64 == 0


def test_small_arrays_are_fresh_and_aligned():
    pool = _RecyclingPool()
    shape = (4, SMALL_BYTES // 16 - 1)
    a = pool.empty(shape, np.float32)
    del a
    b = pool.empty(shape, np.float32)
    assert b.ctypes.data % 64 == 0 and b.flags.writeable and b.shape == shape
    assert not pool._free  # nothing kept for small shapes


def test_batches_kept_by_the_consumer_stay_intact(tmp_path):
    n = 3000
    ids = np.arange(n)
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": ids, "x": np.repeat(ids[:, None], 40, 1).astype(np.float32)},
                            row_group_bytes=8000)
    reader = TorchDataset(ds, batch_size=64, shuffle=True, seed=2, with_row_ids=True)
    kept = list(reader)  # every batch of epoch 0 alive at once
    for _ in reader:  # epoch 1 through the same reader and its pool, dropping each batch
        pass
    for b in kept:
        assert torch.equal(b["x"][:, 7].long(), b["__row_id__"])
        assert torch.equal(b["id"], b["__row_id__"])
    assert sorted(torch.cat([b["id"] for b in kept]).tolist()) == list(range(n))
