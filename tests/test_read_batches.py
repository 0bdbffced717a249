"""read_batches: exact batch sizes across row groups, also if pyarrow ignored size changes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tensorstore_fs.scan import read_batches


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rb") / "x.parquet"
    pq.write_table(pa.table({"a": np.arange(10000)}), str(path), row_group_size=2519)
    return pq.ParquetFile(str(path))


def _expected(sizes, then, total):
    out, left = [], total
    for s in list(sizes) + [then] * total:
        if left <= 0:
            break
        out.append(min(s, left))
        left -= out[-1]
    return out


class _IgnoresSizeChanges:
    """A ParquetFile whose reader ignores set_batch_size (the fallback path)."""

    def __init__(self, pf):
        self.pf = pf
        self.reader = type("Reader", (), {"set_batch_size": lambda self, n: None})()

    def iter_batches(self, **kwargs):
        return self.pf.iter_batches(**kwargs)


@pytest.mark.parametrize("ignore", [False, True], ids=["pyarrow", "fallback"])
def test_exact_sizes_and_values(parquet_file, ignore):
    pf = _IgnoresSizeChanges(parquet_file) if ignore else parquet_file
    rng = np.random.default_rng(1)
    for _ in range(60):
        sizes = [int(x) for x in rng.integers(1, 3000, rng.integers(0, 6))]
        then = int(rng.integers(1, 4000))
        out = list(read_batches(pf, [0, 1, 2, 3], ["a"], sizes, then))
        assert [b.num_rows for b in out] == _expected(sizes, then, 10000)
        assert np.array_equal(np.concatenate([b.column(0).to_numpy() for b in out]), np.arange(10000))


def test_subset_of_row_groups(parquet_file):
    out = list(read_batches(parquet_file, [1, 3], ["a"], [5], 1000))
    vals = np.concatenate([b.column(0).to_numpy() for b in out])
    assert np.array_equal(vals, np.r_[2519:5038, 7557:10000])
