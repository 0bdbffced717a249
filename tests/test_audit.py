"""audit_epoch: duplicates, misses, unexpected ids and padding across ranks."""

from __future__ import annotations

import numpy as np
import pytest

from tensorstore_fs.audit import AuditReport, audit_epoch


def ids(*values):
    return np.asarray(values, dtype=np.int64)


def flags(*values):
    return np.asarray(values, dtype=bool)


def test_exactly_once_and_balanced():
    r = audit_epoch([ids(0, 2, 4), ids(5, 3, 1)], 6)
    assert r.exactly_once and r.balanced
    assert (r.expected_rows, r.rows_seen, r.per_rank, r.padded) == (6, 6, (3, 3), 0)
    for a in (r.duplicates, r.missing, r.unexpected):
        assert len(a) == 0 and a.dtype == np.int64


def test_duplicates():
    r = audit_epoch([ids(0, 1, 2, 2), ids(2, 3, 1)], 4)
    assert r.duplicates.tolist() == [1, 2]
    assert r.missing.tolist() == [] and r.unexpected.tolist() == []
    assert not r.exactly_once and not r.balanced
    assert r.rows_seen == 7 and r.per_rank == (4, 3)


def test_duplicate_inside_one_rank():
    r = audit_epoch([ids(0, 1, 1)], 2)
    assert r.duplicates.tolist() == [1] and not r.exactly_once and r.balanced


def test_missing():
    r = audit_epoch([ids(0, 1), ids(4)], 6)
    assert r.missing.tolist() == [2, 3, 5]
    assert r.duplicates.tolist() == [] and r.unexpected.tolist() == []
    assert not r.exactly_once and not r.balanced


def test_unexpected():
    r = audit_epoch([ids(0, 1, 2), ids(3, 7, -1)], 4)
    assert r.unexpected.tolist() == [-1, 7]
    assert r.missing.tolist() == [] and r.duplicates.tolist() == []
    assert not r.exactly_once and r.balanced


def test_everything_wrong_at_once():
    r = audit_epoch([ids(0, 0, 9), ids(2)], 4)
    assert (r.duplicates.tolist(), r.missing.tolist(), r.unexpected.tolist()) == ([0], [1, 3], [9])


def test_padding_counted_apart():
    rows = [ids(0, 1, 2), ids(3, 4, 0)]
    pads = [flags(False, False, False), flags(False, False, True)]
    r = audit_epoch(rows, 5, pads)
    assert r.exactly_once and r.balanced
    assert r.padded == 1 and r.rows_seen == 5 and r.per_rank == (3, 3)
    # the same rows without the pad column: the repeated row is a duplicate
    r = audit_epoch(rows, 5)
    assert r.duplicates.tolist() == [0] and not r.exactly_once and r.padded == 0 and r.rows_seen == 6


def test_padding_does_not_hide_misses():
    r = audit_epoch([ids(0, 1), ids(0, 0)], 3, [flags(False, False), flags(True, True)])
    assert r.padded == 2 and r.missing.tolist() == [2] and r.duplicates.tolist() == []
    assert not r.exactly_once and r.balanced


def test_balanced_counts_padding():
    # exactly once but uneven ranks: not balanced
    r = audit_epoch([ids(0, 1, 2), ids(3, 4)], 5)
    assert r.exactly_once and not r.balanced and r.per_rank == (3, 2)
    r = audit_epoch([ids(0, 1, 2), ids(3, 4, 0)], 5, [flags(0, 0, 0), flags(0, 0, 1)])
    assert r.exactly_once and r.balanced


def test_explicit_expected():
    expected = ids(10, 12, 15, 40)
    r = audit_epoch([ids(15, 10), ids(40, 12)], expected)
    assert r.exactly_once and r.expected_rows == 4
    r = audit_epoch([ids(10, 11), ids(40)], expected)
    assert r.missing.tolist() == [12, 15] and r.unexpected.tolist() == [11]
    # a plain list works too, and range(n) equals the int form
    assert audit_epoch([ids(2, 1)], [1, 2]).exactly_once
    assert audit_epoch([ids(0, 1, 2)], np.arange(3)).exactly_once
    assert audit_epoch([ids(0, 1, 2)], np.int64(3)).exactly_once


def test_zero_dim_expected_is_a_count():
    """A 0-d array (e.g. a count all-reduced as a tensor, then converted) means range(n)."""
    r = audit_epoch([ids(0, 1, 2)], np.array(3))
    assert r.exactly_once and r.expected_rows == 3
    torch = pytest.importorskip("torch")
    assert audit_epoch([ids(0, 1), ids(2)], torch.tensor(3)).exactly_once


def test_empty():
    r = audit_epoch([], 0)
    assert r.exactly_once and r.balanced and r.per_rank == () and r.rows_seen == 0
    r = audit_epoch([ids(), ids()], 0)
    assert r.exactly_once and r.balanced and r.per_rank == (0, 0)
    r = audit_epoch([ids(), ids()], 2)
    assert r.missing.tolist() == [0, 1] and not r.exactly_once
    r = audit_epoch([], ids())
    assert r.exactly_once and r.expected_rows == 0


def test_accepts_lists_and_other_int_dtypes():
    r = audit_epoch([[0, 1], np.asarray([2, 3], dtype=np.int32)], 4, [[False, False], [0, 0]])
    assert r.exactly_once and r.balanced


def test_str_summarises():
    r = audit_epoch([ids(0, 0, 5), ids(1)], 3, [flags(0, 1, 0), flags(0)])
    assert isinstance(r, AuditReport)
    s = str(r)
    assert s == ("AuditReport(expected=3, seen=3, per_rank=[3, 1], duplicates=0, missing=1, "
                 "unexpected=1, padded=1)")


@pytest.mark.parametrize("world", [1, 3, 8])
def test_audits_a_plan(world):
    from tensorstore_fs.plan import EpochPlan, PlanSpec

    counts = [13, 0, 7, 29, 1, 4]
    for remainder, balanced in (("pad", True), ("uneven", sum(counts) % world == 0)):
        plan = EpochPlan(counts, PlanSpec(4, shuffle=True, seed=11, remainder=remainder), 1, world)
        rows, pads = [], []
        for r in range(world):
            batches = list(plan.rank_stream(r, 2))
            rows.append(np.concatenate([i for i, _ in batches]))
            pads.append(np.concatenate([p for _, p in batches]))
        report = audit_epoch(rows, sum(counts), pads)
        assert report.exactly_once, str(report)
        assert report.balanced == balanced
        assert report.padded == (-sum(counts)) % world if remainder == "pad" else report.padded == 0
