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


def test_one_large_row_group_is_still_shuffled_across_the_dataset(tmp_path):
    # small rows: the library's default 8 MiB row group holds the whole dataset. Permuting row
    # groups alone would leave the epoch in storage order (Spearman ~1); shuffled epochs permute
    # ranges inside row groups instead
    n = 50_000
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(n), "y": np.zeros(n, np.float32)})
    assert len(ds.row_groups) == 1
    shuffled = TorchDataset(ds, batch_size=256, shuffle=True, seed=1, with_row_ids=True)
    ids = [b["__row_id__"].numpy() for b in shuffled]
    q = shuffle_quality(ids, ds)
    assert q.rows == n and len(np.unique(np.concatenate(ids))) == n
    assert abs(q.spearman) < 0.3
    again = [b["__row_id__"].numpy() for b in TorchDataset(ds, batch_size=256, shuffle=True, seed=1, with_row_ids=True)]
    assert all(np.array_equal(a, b) for a, b in zip(ids, again))  # deterministic


def test_split_units_keeps_rows_and_bounds_ranges():
    from tensorstore_fs.plan import MIN_UNITS, split_units

    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 5000, rng.integers(1, 30))
        bs = int(rng.integers(1, 700))
        parts = split_units(counts, bs)
        if (counts > 0).sum() >= MIN_UNITS // 2:  # enough row groups to permute: kept whole
            assert np.array_equal(parts, counts)
            continue
        cap = max(bs, -(-int(counts.sum()) // MIN_UNITS), 1)
        assert parts.sum() == counts.sum() and (parts <= cap).all() and (parts >= 0).all()
        # each row group's ranges are consecutive, near-equal, and never cross into the next
        at = 0
        for c in counts:
            k = max(1, -(-int(c) // cap))
            mine = parts[at:at + k]
            assert mine.sum() == c and (mine.max() - mine.min() <= 1 if len(mine) else True)
            at += k
        assert at == len(parts)
