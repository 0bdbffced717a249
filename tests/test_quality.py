"""shuffle_quality: storage order scores 1, a shuffled stream scores near 0 and mixes row groups."""

from __future__ import annotations

import numpy as np

import tensorstore_fs as tsfs
from tensorstore_fs.quality import shuffle_quality
from tensorstore_fs.readers.torch import TorchDataset


def test_shuffle_quality_orders_and_mixing(tmp_path):
    n = 20000
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(n), "x": np.zeros((n, 16), np.float32)},
                            row_group_bytes=2000, shard_bytes=20000)
    plain = shuffle_quality([b["__row_id__"].numpy() for b in TorchDataset(ds, batch_size=64, with_row_ids=True)], ds)
    assert plain.spearman == 1.0 and plain.rows == n
    shuffled = TorchDataset(ds, batch_size=64, shuffle=True, seed=3, with_row_ids=True)
    q = shuffle_quality([b["__row_id__"].numpy() for b in shuffled], ds)
    assert abs(q.spearman) < 0.1
    assert q.row_groups_per_batch > plain.row_groups_per_batch
    assert q.shards_per_batch > plain.shards_per_batch
    reverse = shuffle_quality([np.arange(n)[::-1]], ds)
    assert reverse.spearman == -1.0
