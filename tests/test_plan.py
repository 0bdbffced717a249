"""EpochPlan: exactly-once read plans, checked exhaustively over random row counts and world shapes.

The plan is a pure function of (row counts, spec, world, epoch, resume history), so every property
is checked here without processes: for every rank, the stream ``rank_stream(rank, num_workers)``
is what the training loop of that rank consumes (DataLoader order).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorstore_fs as tsfs
from tensorstore_fs.audit import audit_epoch
from tensorstore_fs.plan import REMAINDERS, EpochPlan, PlanSpec, Segment, loader_order, rank_span

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -------------------------------------------------------------------------------------

small_counts = st.lists(st.integers(0, 40), min_size=0, max_size=24)
zero_counts = st.lists(st.just(0), min_size=0, max_size=5)  # zero rows (or no units at all)
tiny_counts = st.lists(st.integers(0, 2), min_size=0, max_size=6)  # usually fewer rows than ranks
huge_unit = st.tuples(st.lists(st.integers(0, 4), max_size=3), st.integers(300, 2500),
                      st.lists(st.integers(0, 4), max_size=3)).map(lambda t: [*t[0], t[1], *t[2]])
counts_st = st.one_of(small_counts, small_counts, zero_counts, tiny_counts, huge_unit)

batch_st = st.one_of(st.integers(1, 9), st.just(64))
window_st = st.one_of(st.just(0), st.integers(1, 50))  # 0: default (8 batches); often not a multiple
spec_st = st.builds(
    PlanSpec,
    batch_size=batch_st,
    shuffle=st.booleans(),
    seed=st.one_of(st.integers(0, 3), st.integers(0, 2**63)),
    remainder=st.sampled_from(REMAINDERS),
    drop_last=st.booleans(),
    window_rows=window_st,
)
world_st = st.integers(1, 16)
workers_st = st.integers(1, 4)
epoch_st = st.integers(0, 5)


# -- helpers ----------------------------------------------------------------------------------------

def streams(plan: EpochPlan, num_workers: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Every rank's batches ``(ids, is_pad)`` in DataLoader order."""
    return [[(ids.copy(), pad.copy()) for ids, pad in plan.rank_stream(r, num_workers)]
            for r in range(plan.world_size)]


def real_ids(batches) -> np.ndarray:
    parts = [ids[~pad] for ids, pad in batches]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def pad_ids(batches) -> np.ndarray:
    parts = [ids[pad] for ids, pad in batches]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def all_real(rank_streams) -> np.ndarray:
    parts = [real_ids(s) for s in rank_streams]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def expected_span(n: int, world: int, rank: int, remainder: str) -> tuple[int, int, int]:
    """Oracle for ``(start, real, pad)`` of a rank span, written from the module docstring."""
    if remainder == "drop":
        q = n // world
        return rank * q, q, 0
    if remainder == "uneven":
        sizes = [n // world + (1 if r < n % world else 0) for r in range(world)]
        return sum(sizes[:rank]), sizes[rank], 0
    q = -(-n // world)
    start = min(rank * q, n)
    real = max(0, min(q, n - start))
    return start, real, q - real


def assert_unique(ids: np.ndarray) -> None:
    values, counts = np.unique(ids, return_counts=True)
    assert not (counts > 1).any(), f"duplicated row ids {values[counts > 1][:10]}"


def check_sequence(plan: EpochPlan) -> np.ndarray:
    """The epoch sequence is a permutation of every row id, unit by unit (units kept whole, in order)."""
    seq = plan.sequence.all_ids()
    counts = plan.counts
    n = int(counts.sum())
    assert plan.total_rows == n == len(seq)
    assert np.array_equal(np.sort(seq), np.arange(n))
    if not plan.spec.shuffle:
        assert np.array_equal(seq, np.arange(n))
    starts = np.concatenate([[0], np.cumsum(counts)])
    unit_of = np.searchsorted(starts, seq, side="right") - 1
    # a unit's rows are contiguous in the sequence and ascending inside it
    boundaries = np.flatnonzero(np.diff(unit_of)) + 1
    if n:
        for piece in np.split(seq, boundaries):
            assert np.array_equal(piece, np.arange(piece[0], piece[0] + len(piece)))
        # ... and each unit is one piece
        piece_units = unit_of[np.r_[0, boundaries]]
        assert len(np.unique(piece_units)) == len(piece_units)
    return seq


def check_window_assignment(plan: EpochPlan, rank: int, num_workers: int) -> None:
    """Workers split a rank's windows into contiguous blocks, in worker order, sizes within one."""
    blocks = [plan.worker_windows(rank, w, num_workers) for w in range(num_workers)]
    assert [k for b in blocks for k in b] == list(range(plan.num_windows(rank)))
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


def check_plan(plan: EpochPlan, num_workers: int) -> list:
    """Every property of one plan that holds for any spec/world; returns the streams."""
    spec, world = plan.spec, plan.world_size
    bs, n = spec.batch_size, plan.total_rows
    seq = check_sequence(plan)
    all_streams = streams(plan, num_workers)

    for rank, batches in enumerate(all_streams):
        start, real, pad = expected_span(n, world, rank, spec.remainder)
        assert plan.rank_rows(rank) == (real, pad)
        used = (real + pad) // bs * bs if spec.drop_last else real + pad
        assert plan.rows_used(rank) == used
        n_real_used = min(real, used)

        # batch counts: stream length, per-worker counts, per-worker generators
        assert plan.num_batches(rank) == len(batches)
        per_worker = [plan.worker_num_batches(rank, w, num_workers) for w in range(num_workers)]
        assert sum(per_worker) == len(batches)
        windows: dict[int, list[np.ndarray]] = {}
        for w in range(num_workers):
            got = list(plan.worker_batches(rank, w, num_workers))
            assert len(got) == per_worker[w]
            mine = plan.worker_windows(rank, w, num_workers)
            assert sorted({k for k, _, _ in got}) == mine
            for k, ids, _ in got:
                windows.setdefault(k, []).append(ids)
        check_window_assignment(plan, rank, num_workers)
        assert plan.loader_batches(rank, num_workers) == loader_order(per_worker)

        # windows: all full (window_rows rows) but the last one
        assert sorted(windows) == list(range(len(windows))) == list(range(plan.num_windows(rank)))
        for k, parts in windows.items():
            rows = sum(len(p) for p in parts)
            if k < len(windows) - 1:
                assert rows == spec.window_rows
            else:
                assert 0 < rows <= spec.window_rows
            if not spec.shuffle:  # ascending inside a window (real rows; pads come last)
                ids = np.concatenate(parts)
                k_real = ids[: max(0, min(len(ids), n_real_used - k * spec.window_rows))]
                assert np.all(np.diff(k_real) > 0)

        # batch sizes: never empty, never over, at most one short batch per rank
        sizes = [len(ids) for ids, _ in batches]
        assert all(0 < s <= bs for s in sizes)
        assert sum(s < bs for s in sizes) <= 1
        if spec.drop_last:
            assert all(s == bs for s in sizes)
        assert sum(sizes) == used
        for ids, p in batches:
            assert ids.dtype == np.int64 and p.dtype == bool and ids.shape == p.shape

        # rows: this rank's real rows are exactly its span's first rows (as a set), pads repeat
        # rows from the start of the sequence and are flagged
        r_ids, p_ids = real_ids(batches), pad_ids(batches)
        assert_unique(r_ids)
        assert np.array_equal(np.sort(r_ids), np.sort(seq[start:start + n_real_used]))
        assert len(p_ids) == used - n_real_used
        if spec.remainder != "pad":
            assert len(p_ids) == 0
        elif len(p_ids):
            assert np.array_equal(np.sort(p_ids), np.sort(seq[: len(p_ids)]))
        if not spec.shuffle and num_workers == 1:
            flags = np.concatenate([p for _, p in batches]) if batches else np.zeros(0, bool)
            assert not (flags[:-1] & ~flags[1:]).any(), "a pad before a real row"
            assert np.all(np.diff(r_ids) > 0)

    everything = all_real(all_streams)
    assert_unique(everything)
    nb = [len(s) for s in all_streams]
    per_rank_rows = [sum(len(ids) for ids, _ in s) for s in all_streams]
    if spec.remainder in ("drop", "pad"):
        assert len(set(nb)) <= 1, f"unequal batch counts {nb}"
        assert len(set(per_rank_rows)) <= 1
    else:
        assert max(nb, default=0) - min(nb, default=0) <= 1
        reals = [plan.rank_rows(r)[0] for r in range(world)]
        assert max(reals) - min(reals) <= 1
    if spec.remainder == "drop":
        assert all(plan.rank_rows(r) == (n // world, 0) for r in range(world))
        if not spec.drop_last:
            # the rows nobody read are exactly the declared remainder: the sequence's tail
            dropped = np.setdiff1d(np.arange(n), everything)
            assert len(dropped) == n % world
            assert np.array_equal(dropped, np.sort(seq[world * (n // world):]))
    if spec.remainder == "pad":
        assert all(sum(plan.rank_rows(r)) == -(-n // world) for r in range(world))
    if spec.remainder in ("uneven", "pad") and not spec.drop_last:
        assert np.array_equal(np.sort(everything), np.arange(n)), "not every row exactly once"
        report = audit_epoch([np.concatenate([ids for ids, _ in s]) if s else np.zeros(0, np.int64)
                              for s in all_streams], n,
                             [np.concatenate([p for _, p in s]) if s else np.zeros(0, bool) for s in all_streams])
        assert report.exactly_once, str(report)
        assert report.balanced == (spec.remainder == "pad" or len(set(per_rank_rows)) <= 1)
    return all_streams


# -- the main property ------------------------------------------------------------------------------

@settings(max_examples=1200, **SETTINGS)
@given(counts=counts_st, spec=spec_st, world=world_st, workers=workers_st, epoch=epoch_st)
def test_plan_invariants(counts, spec, world, workers, epoch):
    plan = EpochPlan(counts, spec, epoch, world)
    check_plan(plan, workers)


@pytest.mark.parametrize("remainder", REMAINDERS)
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_plan_invariants_corner_worlds(remainder, drop_last, shuffle):
    """Deterministic corners: no rows, one row, fewer rows than ranks, one huge unit, rows == ranks."""
    cases = [[], [0], [0, 0, 0], [1], [0, 2, 0], [3000], [0, 2999, 1], [16], [5, 5, 6], [1] * 17]
    for counts, world, workers, (bs, window) in itertools.product(
            cases, [1, 3, 16], [1, 4], [(1, 0), (3, 5), (64, 0)]):
        if bs == 1 and sum(counts) > 100:
            continue
        spec = PlanSpec(bs, shuffle=shuffle, seed=7, remainder=remainder, drop_last=drop_last, window_rows=window)
        check_plan(EpochPlan(counts, spec, 1, world), workers)


def test_rank_span_matches_oracle():
    for n, world, remainder in itertools.product(range(0, 40), range(1, 17), REMAINDERS):
        spans = [rank_span(n, world, r, remainder) for r in range(world)]
        assert spans == [expected_span(n, world, r, remainder) for r in range(world)]


def test_window_rows_rounded_up_to_batch_size():
    assert PlanSpec(4).window_rows == 32  # default: 8 batches
    assert PlanSpec(4, window_rows=8).window_rows == 8
    assert PlanSpec(4, window_rows=9).window_rows == 12
    assert PlanSpec(4, window_rows=1).window_rows == 4
    assert PlanSpec(3, window_rows=10).to_dict()["window_rows"] == 12
    assert PlanSpec(1, window_rows=7).window_rows == 7


# -- determinism and shuffling ----------------------------------------------------------------------

def _flat(rank_streams) -> list[list[int]]:
    return [np.concatenate([ids for ids, _ in s]).tolist() if s else [] for s in rank_streams]


@settings(max_examples=200, **SETTINGS)
@given(counts=counts_st, spec=spec_st, world=world_st, workers=workers_st, epoch=epoch_st)
def test_same_inputs_same_streams(counts, spec, world, workers, epoch):
    a = streams(EpochPlan(counts, spec, epoch, world), workers)
    b = streams(EpochPlan(list(counts), PlanSpec(**spec.to_dict()), epoch, world), workers)
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert len(sa) == len(sb)
        for (ia, pa), (ib, pb) in zip(sa, sb):
            assert np.array_equal(ia, ib) and np.array_equal(pa, pb)
    if not spec.shuffle:  # without shuffling the epoch does not matter
        assert _flat(streams(EpochPlan(counts, spec, epoch + 1, world), workers)) == _flat(a)


@settings(max_examples=100, **SETTINGS)
@given(units=st.integers(40, 120), rows=st.integers(5, 20), world=st.integers(1, 4), workers=workers_st,
       bs=st.integers(1, 8), seed=st.integers(0, 2**32), epoch=epoch_st,
       remainder=st.sampled_from(["uneven", "pad"]))
def test_epochs_reorder_the_same_rows(units, rows, world, workers, bs, seed, epoch, remainder):
    counts = [rows] * units  # N >= 200: equal orders across epochs would be astronomically unlikely
    spec = PlanSpec(bs, shuffle=True, seed=seed, remainder=remainder)
    a = streams(EpochPlan(counts, spec, epoch, world), workers)
    b = streams(EpochPlan(counts, spec, epoch + 1, world), workers)
    assert _flat(a) != _flat(b)
    assert _flat(a)[0] != _flat(b)[0]  # rank 0 alone already differs
    assert np.array_equal(np.sort(all_real(a)), np.arange(units * rows))
    assert np.array_equal(np.sort(all_real(b)), np.arange(units * rows))
    other_seed = PlanSpec(bs, shuffle=True, seed=seed + 1, remainder=remainder)
    assert _flat(streams(EpochPlan(counts, other_seed, epoch, world), workers)) != _flat(a)
    unshuffled = streams(EpochPlan(counts, PlanSpec(bs, remainder=remainder), epoch, world), workers)
    assert _flat(unshuffled) != _flat(a)


# -- DataLoader order -------------------------------------------------------------------------------

LOADER_TABLE = [
    ([], []),
    ([0], []),
    ([0, 0, 0], []),
    ([1], [(0, 0)]),
    ([3], [(0, 0), (0, 1), (0, 2)]),
    ([2, 2], [(0, 0), (1, 0), (0, 1), (1, 1)]),
    ([3, 1, 2], [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]),
    ([0, 2], [(1, 0), (1, 1)]),
    ([1, 0, 3], [(0, 0), (2, 0), (2, 1), (2, 2)]),
    ([2, 3, 0, 1], [(0, 0), (1, 0), (3, 0), (0, 1), (1, 1), (1, 2)]),
    ([1, 1, 1, 1], [(0, 0), (1, 0), (2, 0), (3, 0)]),
]


@pytest.mark.parametrize("per_worker,expected", LOADER_TABLE)
def test_loader_order_table(per_worker, expected):
    assert loader_order(per_worker) == expected
    assert loader_order(tuple(per_worker)) == expected


def test_rank_stream_is_what_a_torch_dataloader_yields():
    """The plan's loader order is PyTorch's: a real DataLoader over the workers' batches."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class Batches(IterableDataset):
        def __init__(self, plan, rank):
            self.plan, self.rank = plan, rank

        def __iter__(self):
            info = get_worker_info()
            w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
            for _, ids, pad in self.plan.worker_batches(self.rank, w, nw):
                yield torch.from_numpy(ids.copy()), torch.from_numpy(pad.copy())

    # unequal worker batch counts (a short window, an exhausted worker)
    spec = PlanSpec(3, shuffle=True, seed=5, remainder="uneven", window_rows=5)
    plan = EpochPlan([7, 0, 11, 4, 9, 2, 8], spec, 2, 2)
    counts = [[plan.worker_num_batches(rank, w, 2) for w in range(2)] for rank in range(2)]
    assert any(len(set(c)) > 1 for c in counts)  # exercises skipping exhausted workers
    for rank in range(2):
        got = [(i.numpy(), p.numpy()) for i, p in
               DataLoader(Batches(plan, rank), batch_size=None, num_workers=2, multiprocessing_context="fork")]
        want = list(plan.rank_stream(rank, 2))
        assert len(got) == len(want)
        for (gi, gp), (wi, wp) in zip(got, want):
            assert np.array_equal(gi, wi) and np.array_equal(gp, wp)


# -- resume -----------------------------------------------------------------------------------------

def consumed_by(plan: EpochPlan, num_workers: int, k: int) -> np.ndarray:
    """Real rows of every rank's first ``k`` loader batches."""
    parts = []
    for r in range(plan.world_size):
        parts.append(real_ids(list(itertools.islice(plan.rank_stream(r, num_workers), k))))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def check_rest(counts, spec, epoch, history, consumed, world2, workers2):
    """The resumed plan reads only rows nobody consumed, each once; under ``uneven`` (and ``pad``)
    without drop_last, consumed + rest is every row exactly once."""
    n = int(np.sum(counts))
    assert_unique(consumed)
    plan = EpochPlan(counts, spec, epoch, world2, history)
    remaining = np.setdiff1d(np.arange(n), consumed)
    assert plan.total_rows == len(remaining)
    seq = plan.sequence.all_ids()
    assert np.array_equal(np.sort(seq), remaining)
    rest_streams = check_plan_rest(plan, workers2)
    rest = all_real(rest_streams)
    assert_unique(rest)
    assert len(np.intersect1d(rest, consumed)) == 0
    assert np.isin(rest, remaining).all()
    if not spec.drop_last:
        if spec.remainder in ("uneven", "pad"):
            assert np.array_equal(np.sort(np.concatenate([consumed, rest])), np.arange(n))
        else:  # drop: what is left out is exactly the new declared remainder
            left = np.setdiff1d(remaining, rest)
            assert np.array_equal(left, np.sort(seq[world2 * (len(seq) // world2):]))
    return plan, rest


def check_plan_rest(plan: EpochPlan, num_workers: int):
    """check_plan without the 'sequence is every row' part (a resumed sequence is a subset)."""
    spec, world = plan.spec, plan.world_size
    all_streams = streams(plan, num_workers)
    nb = [len(s) for s in all_streams]
    for rank, batches in enumerate(all_streams):
        assert plan.num_batches(rank) == len(batches)
        sizes = [len(ids) for ids, _ in batches]
        assert all(0 < s <= spec.batch_size for s in sizes)
        assert sum(s < spec.batch_size for s in sizes) <= 1
        if spec.drop_last:
            assert all(s == spec.batch_size for s in sizes)
    if spec.remainder != "uneven":
        assert len(set(nb)) <= 1
    return all_streams


resume_spec_st = st.builds(
    PlanSpec,
    batch_size=st.integers(1, 6),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    remainder=st.sampled_from(REMAINDERS),
    drop_last=st.booleans(),
    window_rows=st.one_of(st.just(0), st.integers(1, 20)),
)
resume_counts_st = st.one_of(small_counts, tiny_counts, huge_unit.map(lambda c: [min(x, 400) for x in c]))


@settings(max_examples=600, **SETTINGS)
@given(counts=resume_counts_st, spec=resume_spec_st, epoch=epoch_st, world=world_st, workers=workers_st,
       world2=world_st, workers2=workers_st, data=st.data())
def test_resume_on_another_world(counts, spec, epoch, world, workers, world2, workers2, data):
    first = EpochPlan(counts, spec, epoch, world)
    most = max((first.num_batches(r) for r in range(world)), default=0)
    k = data.draw(st.integers(0, most + 1), label="k")
    consumed = consumed_by(first, workers, k)
    check_rest(counts, spec, epoch, [Segment(world, workers, k)], consumed, world2, workers2)


@settings(max_examples=300, **SETTINGS)
@given(counts=resume_counts_st, spec=resume_spec_st, epoch=epoch_st,
       shapes=st.lists(st.tuples(world_st, workers_st), min_size=3, max_size=3), data=st.data())
def test_chained_resumes(counts, spec, epoch, shapes, data):
    (w1, n1), (w2, n2), (w3, n3) = shapes
    first = EpochPlan(counts, spec, epoch, w1)
    k1 = data.draw(st.integers(0, max((first.num_batches(r) for r in range(w1)), default=0)), label="k1")
    consumed1 = consumed_by(first, n1, k1)
    seg1 = Segment(w1, n1, k1)
    second, _ = check_rest(counts, spec, epoch, [seg1], consumed1, w2, n2)
    k2 = data.draw(st.integers(0, max((second.num_batches(r) for r in range(w2)), default=0)), label="k2")
    consumed2 = consumed_by(second, n2, k2)
    consumed = np.concatenate([consumed1, consumed2])
    third, rest = check_rest(counts, spec, epoch, [seg1, Segment(w2, n2, k2)], consumed, w3, n3)
    assert third.segment == 2


@settings(max_examples=400, **SETTINGS)
@given(counts=resume_counts_st, spec=resume_spec_st, epoch=epoch_st, world=world_st, data=st.data())
def test_resume_same_world_continues_the_stream(counts, spec, epoch, world, data):
    """Same world, one worker: the resumed plan reads the rows the uninterrupted run had left, batch
    for batch without shuffling; with shuffling, each rank reads the same rows (the windows are
    re-shuffled, see test_resume_same_world_shuffled_order_is_not_kept)."""
    first = EpochPlan(counts, spec, epoch, world)
    most = max((first.num_batches(r) for r in range(world)), default=0)
    k = data.draw(st.integers(0, most + 1), label="k")
    resumed = EpochPlan(counts, spec, epoch, world, [Segment(world, 1, k)])
    for r in range(world):
        want = list(first.rank_stream(r, 1))[k:]
        got = list(resumed.rank_stream(r, 1))
        assert resumed.num_batches(r) == len(want) == len(got)
        if spec.shuffle:
            assert np.array_equal(np.sort(real_ids(got)), np.sort(real_ids(want)))
            assert [len(i) for i, _ in got] == [len(i) for i, _ in want]
            assert int(sum(p.sum() for _, p in got)) == int(sum(p.sum() for _, p in want))
        else:
            for (gi, gp), (wi, wp) in zip(got, want):
                assert np.array_equal(gp, wp)
                assert np.array_equal(gi[~gp], wi[~wp])


@pytest.mark.xfail(strict=True, reason="by design EpochPlan with history re-plans (and re-shuffles) the rest of "
                   "the epoch; an exact same-world continuation is read.resume.resume_plan (the original plan "
                   "plus per-worker skips), tested in test_torch_loader.py")
def test_resume_same_world_shuffled_order_is_not_kept():
    counts, spec = [5, 0, 7, 3, 9, 1], PlanSpec(2, shuffle=True, seed=3, remainder="uneven", window_rows=4)
    first = EpochPlan(counts, spec, 0, 2)
    resumed = EpochPlan(counts, spec, 0, 2, [Segment(2, 1, 1)])
    assert [i.tolist() for i, _ in resumed.rank_stream(0, 1)] == [i.tolist() for i, _ in first.rank_stream(0, 1)][1:]


@settings(max_examples=300, **SETTINGS)
@given(counts=resume_counts_st, spec=resume_spec_st, epoch=epoch_st, world=world_st, workers=workers_st,
       data=st.data())
def test_worker_skip_continues_exactly(counts, spec, epoch, world, workers, data):
    """Worker-level resume (``skip``): the rest of a worker's batches, identical, shuffled or not."""
    plan = EpochPlan(counts, spec, epoch, world)
    rank = data.draw(st.integers(0, world - 1), label="rank")
    worker = data.draw(st.integers(0, workers - 1), label="worker")
    full = list(plan.worker_batches(rank, worker, workers))
    skip = data.draw(st.integers(0, len(full) + 2), label="skip")
    got = list(plan.worker_batches(rank, worker, workers, skip))
    assert len(got) == len(full[skip:])
    for (gk, gi, gp), (wk, wi, wp) in zip(got, full[skip:]):
        assert gk == wk and np.array_equal(gi, wi) and np.array_equal(gp, wp)


def test_resume_examples():
    """A few hand-checked resumes."""
    # drop, 10 rows over 4 ranks: rows 8, 9 are the remainder; after 1 batch of 1 row per rank,
    # 3 ranks read the 6 rows left (the old remainder included), 2 each
    spec = PlanSpec(1, remainder="drop")
    first = EpochPlan([10], spec, 0, 4)
    assert sorted(consumed_by(first, 1, 1).tolist()) == [0, 2, 4, 6]
    resumed = EpochPlan([10], spec, 0, 3, [Segment(4, 1, 1)])
    assert [real_ids(list(resumed.rank_stream(r))).tolist() for r in range(3)] == [[1, 3], [5, 7], [8, 9]]
    # everything consumed: an empty rest
    done = EpochPlan([10], PlanSpec(4, remainder="uneven"), 0, 2, [Segment(2, 2, 5)])
    assert done.total_rows == 0 and all(done.num_batches(r) == 0 for r in range(2))
    # pad: the rest is padded again on the new world
    pad = EpochPlan([5], PlanSpec(1, remainder="pad"), 0, 4, [Segment(2, 1, 2)])
    assert pad.sequence.all_ids().tolist() == [2]
    assert [[(int(i), bool(p)) for i, p in zip(*b)] for r in range(4) for b in pad.rank_stream(r)] == \
        [[(2, False)], [(2, True)], [(2, True)], [(2, True)]]


# -- performance smoke ------------------------------------------------------------------------------

def test_large_plan_smoke():
    """100,000 units over 1,024 ranks: planning one rank is cheap (printed, not asserted)."""
    counts = np.random.default_rng(0).integers(0, 1000, 100_000)
    spec = PlanSpec(32, shuffle=True, seed=1, remainder="pad", window_rows=1024)
    t0 = time.perf_counter()
    plan = EpochPlan(counts, spec, 3, 1024)
    t1 = time.perf_counter()
    nb = plan.num_batches(777)
    ids, pad = plan.window_rows_of(777, 0)
    first = next(plan.worker_batches(777, 1, 4))
    first_window = plan.worker_windows(777, 1, 4)[0]
    t2 = time.perf_counter()
    n = int(counts.sum())
    assert nb == -(-(-(-n // 1024)) // 32)
    assert len(ids) == 1024 and not pad.any() and len(np.unique(ids)) == 1024
    assert first[0] == first_window > 0 and len(first[1]) == 32
    print(f"\nEpochPlan(100k units, {n} rows, 1024 ranks): build {t1 - t0:.3f}s, "
          f"num_batches + first window {t2 - t1:.3f}s")


# -- invalid input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=4, remainder="x"), r"remainder must be one of"),
    (dict(batch_size=0), r"batch_size must be a positive int, got 0"),
    (dict(batch_size=-3), r"batch_size must be a positive int"),
    (dict(batch_size=2.0), r"batch_size must be a positive int"),
    (dict(batch_size=True), r"batch_size must be a positive int"),
    (dict(batch_size=4, seed=-1), r"seed must be a non-negative int, got -1"),
    (dict(batch_size=4, seed=1.5), r"seed must be a non-negative int"),
    (dict(batch_size=4, window_rows=-8), r"window_rows must be a positive int"),
])
def test_invalid_spec(kwargs, match):
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        PlanSpec(**kwargs)


@pytest.mark.parametrize("counts,epoch,world,match", [
    ([3, -1, 2], 0, 2, r"non-negative row counts"),
    ([[1, 2], [3, 4]], 0, 2, r"1-D array"),
    ([3, 4], 0, 0, r"world_size must be a positive int, got 0"),
    ([3, 4], 0, -2, r"world_size must be a positive int"),
    ([3, 4], -1, 2, r"epoch must be a non-negative int, got -1"),
    ([3, 4], 0, 2.0, r"world_size must be a positive int"),
])
def test_invalid_plan(counts, epoch, world, match):
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        EpochPlan(counts, PlanSpec(2), epoch, world)


@pytest.mark.parametrize("args,match", [
    ((0, 1, 0), r"world_size must be a positive int, got 0"),
    ((2, 0, 0), r"num_workers must be a positive int, got 0"),
    ((2, 1, -1), r"consumed_batches must be a non-negative int, got -1"),
])
def test_invalid_segment(args, match):
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        Segment(*args)


def test_invalid_argument_error_is_a_value_error():
    with pytest.raises(ValueError):
        PlanSpec(0)
