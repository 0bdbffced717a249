"""Filter and predicate push-down: results equal a plain full read filtered afterwards.

* ``to_batches(filter=f)`` against ``pq.read_table`` of ``ds.files`` (in order) ``.filter(f)``,
  rows and row order included, for random data and random pyarrow expressions;
* predicates (``in_set``, ``in_range``, ``in_lambda``, ``in_negate``, ``in_reduce``,
  ``in_pseudorandom_split``) against a numpy evaluation of the same condition;
* pruned row groups are never opened: shard files that cannot match are deleted and the filtered
  read still works; ``ScanStats`` shows the pruning and which files were opened;
* bad filters raise :class:`tsfs.InvalidArgumentError` naming the problem.
"""

from __future__ import annotations

import math
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorstore_fs as tsfs
from tensorstore_fs.predicates import stable_unit_hash

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SCHEMA = tsfs.Schema([
    tsfs.Field("row", "int64"),                    # 0..n-1: the row's position, sorted
    tsfs.Field("id", "int64"),                     # sorted, with duplicates
    tsfs.Field("cl", "int32"),                     # clustered: runs of equal values
    tsfs.Field("r", "int16"),                      # random, with the type's extremes
    tsfs.Field("fl", "float64"),                   # some NaN, some +-inf, -0.0
    tsfs.Field("ni", "int32", nullable=True),      # nullable, with runs of nulls
    tsfs.Field("s", "string", nullable=True),      # small alphabet
    tsfs.Field("t", "float32", (3,)),              # fixed tensor: [row, id, fl]
    tsfs.Field("v", "int16", (None,), nullable=True),  # variable tensor: row % 4 copies of row
])
SCALARS = ["row", "id", "cl", "r", "fl", "ni", "s"]
STRINGS = ["", "a", "ab", "b", "ba", "c", "zz", "é"]


def make_data(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    row = np.arange(n, dtype=np.int64)
    ident = np.sort(rng.integers(0, 3 * n + 1, size=n)).astype(np.int64)
    cl = np.zeros(n, dtype=np.int32)
    i = 0
    while i < n:  # runs of a repeated value, runs in random order
        k = int(rng.integers(1, 30))
        cl[i:i + k] = rng.integers(-50, 51)
        i += k
    r = rng.integers(-1000, 1001, size=n).astype(np.int16)
    r[rng.random(n) < 0.05] = -32768
    r[rng.random(n) < 0.05] = 32767
    fl = np.round(rng.normal(0, 10, size=n) * 2) / 2
    fl[rng.random(n) < 0.05] = -0.0
    fl[rng.random(n) < 0.02] = np.inf
    fl[rng.random(n) < 0.02] = -np.inf
    nan_runs = rng.random() < 0.5
    fl[(rng.random(n) < 0.1) if not nan_runs else (np.arange(n) // 16 % 3 == 1)] = np.nan
    ni = rng.integers(-20, 21, size=n).astype(np.int32)
    ni_valid = rng.random(n) >= 0.3
    ni_valid &= ~(np.arange(n) // 20 % 4 == 2)  # runs of nulls: whole row groups without a value
    s = [STRINGS[int(k)] if rng.random() >= 0.1 else None for k in rng.integers(0, len(STRINGS), size=n)]
    t = np.stack([row, ident, fl], axis=1).astype(np.float32) if n else np.zeros((0, 3), np.float32)
    v = [np.full(k % 4, k, dtype=np.int16) if k % 7 else None for k in range(n)]
    return {"row": row, "id": ident, "cl": cl, "r": r, "fl": fl,
            "ni": [int(ni[k]) if ni_valid[k] else None for k in range(n)], "s": s, "t": t, "v": v,
            "_ni": np.ma.MaskedArray(ni, mask=~ni_valid), "_s": np.array(s + [None], dtype=object)[:-1]}


def write(root, data: dict, rg_bytes: int, shard_bytes: int) -> tsfs.Dataset:
    url = str(root / f"pd-{uuid.uuid4().hex}")
    return tsfs.write_dataset(url, {k: v for k, v in data.items() if not k.startswith("_")}, SCHEMA,
                              row_group_bytes=rg_bytes, shard_bytes=shard_bytes)


def plain_read(ds: tsfs.Dataset) -> pa.Table:
    """The whole dataset read with plain pyarrow: every shard file, in manifest order."""
    if not ds.files:
        return tsfs.encoding.arrow_schema(ds.schema).empty_table()
    return pa.concat_tables([pq.read_table(p) for p in ds.files])


def read_all(batches) -> dict:
    batches = list(batches)
    out = {}
    for name in SCHEMA.names:
        parts = [b[name] for b in batches]
        if name == "v":
            out[name] = [x for p in parts for x in p]
        elif name == "s":
            out[name] = [x for p in parts for x in p]
        elif name == "ni":
            out[name] = np.ma.concatenate(parts) if parts else np.ma.MaskedArray(np.zeros(0, np.int32))
        elif parts:
            out[name] = np.concatenate(parts)
        else:
            out[name] = np.zeros((0, *SCHEMA[name].shape), SCHEMA[name].numpy_dtype)
    return out


def assert_equals_plain(got: dict, ref: pa.Table) -> None:
    """Decoded tsfs output equals a storage-layout table read and filtered by plain pyarrow."""
    n = ref.num_rows
    for name in ["row", "id", "cl", "r"]:
        assert np.array_equal(got[name], ref.column(name).to_numpy()), name
    fl_ref = ref.column("fl").to_numpy()
    assert np.array_equal(got["fl"], fl_ref, equal_nan=True)
    assert np.array_equal(np.signbit(got["fl"]), np.signbit(fl_ref))
    ni_ref = ref.column("ni")
    assert np.array_equal(np.ma.getmaskarray(got["ni"]), ni_ref.is_null().to_numpy(zero_copy_only=False))
    assert got["ni"].compressed().tolist() == ni_ref.drop_null().to_pylist()
    assert list(got["s"]) == ref.column("s").to_pylist()
    t_ref = np.frombuffer(b"".join(ref.column("t").to_pylist()), dtype="<f4").reshape(n, 3)
    assert np.array_equal(got["t"], t_ref, equal_nan=True)
    payloads = ref.column("v").to_pylist()
    shapes = ref.column("__shape__v").to_pylist()
    assert len(got["v"]) == n
    for x, p, shp in zip(got["v"], payloads, shapes):
        if p is None:
            assert x is None
        else:
            assert x.shape == tuple(shp) and x.tobytes() == p


def check_scan_stats(ds: tsfs.Dataset, scanner, matched: int) -> None:
    st_ = scanner.stats
    assert st_.row_groups_total == len(ds.row_groups)
    assert st_.row_groups_pruned == st_.row_groups_total - len(scanner.row_groups)
    assert st_.row_groups_read == len(scanner.row_groups)
    assert st_.rows_matched == matched
    kept_paths = [ds.shards[r.shard].path for r in scanner.row_groups]
    # each file holding a surviving row group is opened once, in order; no other file is opened
    assert st_.opened_paths == list(dict.fromkeys(kept_paths))
    assert st_.files_opened == len(st_.opened_paths)


# ------------------------------------------------------------------------------------------------
# Filters: random pyarrow expressions
# ------------------------------------------------------------------------------------------------

LITERALS = {
    "row": st.one_of(st.integers(-3, 320), st.integers(-3, 320).map(lambda x: x + 0.5)),
    "id": st.one_of(st.integers(-3, 950), st.integers(-3, 950).map(lambda x: x - 0.5)),
    "cl": st.integers(-55, 55),
    "r": st.one_of(st.integers(-1100, 1100), st.sampled_from([-32768, 32767, -40000, 40000])),
    "fl": st.one_of(st.integers(-30, 30).map(lambda x: x / 2),
                    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e300])),
    "ni": st.integers(-25, 25),
    "s": st.sampled_from(STRINGS + ["aa", "zzz", "B"]),
}
OPS = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


@st.composite
def comparison_st(draw):
    col = draw(st.sampled_from(SCALARS))
    op = OPS[draw(st.sampled_from(sorted(OPS)))]
    lit = draw(LITERALS[col])
    return op(pc.field(col), lit) if draw(st.booleans()) else op(lit, pc.field(col))  # both operand orders


@st.composite
def isin_st(draw):
    col = draw(st.sampled_from(SCALARS))
    values = draw(st.lists(LITERALS[col], max_size=4))
    if col in ("row", "id", "cl", "r", "ni"):
        values = [int(v) for v in values if float(v).is_integer()]
    if col in ("ni", "s") and draw(st.booleans()):
        values.append(None)
    return pc.field(col).isin(values)


@st.composite
def null_test_st(draw):
    col = draw(st.sampled_from(SCALARS))
    kind = draw(st.sampled_from(["is_null", "is_valid", "is_nan"] if col == "fl" else ["is_null", "is_valid"]))
    return getattr(pc.field(col), kind)()


leaf_st = st.one_of(comparison_st(), comparison_st(), isin_st(), null_test_st())
filter_st = st.recursive(
    leaf_st,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda ab: ab[0] & ab[1]),
        st.tuples(inner, inner).map(lambda ab: ab[0] | ab[1]),
        inner.map(lambda a: ~a),
    ),
    max_leaves=5,
)

layout_st = st.tuples(
    st.integers(0, 2**32 - 1),   # data seed
    st.integers(0, 300),         # rows
    st.integers(60, 2500),       # row_group_bytes
    st.integers(1, 12000),       # shard_bytes
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pushdown")


@settings(max_examples=120, **SETTINGS)
@given(layout=layout_st, filt=filter_st, batch_size=st.integers(1, 70))
def test_filter_equals_plain_pyarrow_filter(root, layout, filt, batch_size):
    seed, n, rg_bytes, shard_bytes = layout
    ds = write(root, make_data(seed, n), rg_bytes, shard_bytes)
    try:
        expected = plain_read(ds).filter(filt)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # plain pyarrow cannot evaluate it (e.g. a literal out of the column's range in isin)
        if n:
            with pytest.raises(tsfs.InvalidArgumentError, match="cannot be"):
                list(ds.to_batches(filter=filt))
        return
    scanner = ds.scanner(filter=filt, batch_size=batch_size)
    batches = list(scanner)
    assert all(len(b["row"]) == batch_size for b in batches[:-1])
    got = read_all(batches)
    assert_equals_plain(got, expected)
    check_scan_stats(ds, scanner, expected.num_rows)
    # the same filter through to_table
    table = ds.to_table(filter=filt, columns=["row", "s"])
    assert table.column("row").to_pylist() == expected.column("row").to_pylist()
    assert table.column("s").to_pylist() == expected.column("s").to_pylist()


@settings(max_examples=30, **SETTINGS)
@given(layout=layout_st, k=st.integers(-1, 1000))
def test_sorted_column_range_filter_prunes_exactly(root, layout, k):
    """On a sorted column, a range filter keeps exactly the row groups holding matching rows."""
    seed, n, rg_bytes, shard_bytes = layout
    data = make_data(seed, n)
    ds = write(root, data, rg_bytes, shard_bytes)
    scanner = ds.scanner(filter=pc.field("id") < k)
    got = read_all(scanner)
    assert np.array_equal(got["row"], np.flatnonzero(data["id"] < k))
    holding = [ref for ref in ds.row_groups if (data["id"][ref.first_row:ref.first_row + ref.rows] < k).any()]
    assert scanner.row_groups == holding
    check_scan_stats(ds, scanner, int((data["id"] < k).sum()))


# ------------------------------------------------------------------------------------------------
# Predicates against numpy
# ------------------------------------------------------------------------------------------------

def _ref_column(data: dict, col: str):
    if col == "ni":
        return data["_ni"]
    if col == "s":
        return data["_s"]
    return data[col]


def _valid(data: dict, col: str) -> np.ndarray:
    c = _ref_column(data, col)
    if isinstance(c, np.ma.MaskedArray):
        return ~np.ma.getmaskarray(c)
    if c.dtype == object:
        return np.array([x is not None for x in c], dtype=bool)
    return np.ones(len(c), dtype=bool)


def ref_in_set(data, col, values):
    c = _ref_column(data, col)
    valid = _valid(data, col)
    if col == "s":
        hit = np.array([x is not None and x in set(values) for x in c], dtype=bool)
    else:
        vals = np.ma.getdata(c)
        wanted = [v for v in values if v is not None]
        hit = np.array([any(x == w for w in wanted) for x in vals.tolist()], dtype=bool) if len(vals) else np.zeros(0, bool)
    return hit & valid


def ref_in_range(data, col, low, high, inclusive_high):
    c = _ref_column(data, col)
    valid = _valid(data, col)
    out = np.zeros(len(c), dtype=bool)
    for i, x in enumerate(np.ma.getdata(c).tolist() if col != "s" else list(c)):
        if not valid[i]:
            continue
        ok = True
        if low is not None:
            ok &= bool(x >= low)
        if high is not None:
            ok &= bool(x <= high) if inclusive_high else bool(x < high)
        out[i] = ok
    return out


# (fields, vectorised function over decoded columns, reference over the generated data)
LAMBDAS = [
    (["r"], lambda r: r % 3 == 0, lambda d: d["r"] % 3 == 0),
    (["t"], lambda t: t[:, 0] > t[:, 1] / 3, lambda d: d["t"][:, 0] > d["t"][:, 1] / 3),
    (["ni", "cl"], lambda ni, cl: np.ma.filled(ni > cl, False),
     lambda d: np.ma.filled(d["_ni"] > d["cl"], False)),
    (["v"], lambda v: np.array([x is not None and len(x) >= 2 for x in v], dtype=bool),
     lambda d: np.array([x is not None and len(x) >= 2 for x in d["v"]], dtype=bool)),
    (["s", "fl"], lambda s, fl: np.array([x is not None and len(x) == 1 for x in s], dtype=bool) & ~np.isnan(fl),
     lambda d: np.array([x is not None and len(x) == 1 for x in d["s"]], dtype=bool) & ~np.isnan(d["fl"])),
]


@st.composite
def pred_leaf_st(draw):
    kind = draw(st.sampled_from(["set", "set", "range", "range", "lambda", "split"]))
    if kind == "set":
        col = draw(st.sampled_from(SCALARS + ["ni", "s", "ni", "s"]))  # nullable columns more often
        values = draw(st.lists(LITERALS[col], max_size=4))
        if col in ("ni", "s") and draw(st.booleans()):
            values.append(None)
        return tsfs.in_set(values, col), (lambda d, c=col, v=tuple(values): ref_in_set(d, c, v))
    if kind == "range":
        col = draw(st.sampled_from(SCALARS + ["ni", "s"]))
        low = draw(st.one_of(st.none(), LITERALS[col]))
        high = draw(LITERALS[col]) if low is None else draw(st.one_of(st.none(), LITERALS[col]))
        inc = draw(st.booleans())
        return tsfs.in_range(col, low, high, inc), (lambda d, c=col, lo=low, hi=high, i=inc: ref_in_range(d, c, lo, hi, i))
    if kind == "lambda":
        fields, fn, ref = LAMBDAS[draw(st.integers(0, len(LAMBDAS) - 1))]
        return tsfs.in_lambda(fields, fn), ref
    key = draw(st.sampled_from(["row", "id", "s", "fl", "ni"]))
    fractions = draw(st.sampled_from([(0.5, 0.5), (0.7, 0.2, 0.1), (0.25, 0.25), (1.0,)]))
    idx = draw(st.integers(0, len(fractions) - 1))
    pred = tsfs.in_pseudorandom_split(list(fractions), idx, key)
    return pred, (lambda d, p=pred, k=key: p({k: _ref_column(d, k)}))


pred_st = st.recursive(
    pred_leaf_st(),
    lambda inner: st.one_of(
        inner.map(lambda pr: (tsfs.in_negate(pr[0]), lambda d, r=pr[1]: ~r(d))),
        st.lists(inner, min_size=1, max_size=3).map(
            lambda ps: (tsfs.in_reduce([p for p, _ in ps], "all"),
                        lambda d, rs=tuple(r for _, r in ps): np.logical_and.reduce([r(d) for r in rs]))),
        st.lists(inner, min_size=1, max_size=3).map(
            lambda ps: (tsfs.in_reduce([p for p, _ in ps], "any"),
                        lambda d, rs=tuple(r for _, r in ps): np.logical_or.reduce([r(d) for r in rs]))),
    ),
    max_leaves=5,
)


@settings(max_examples=120, **SETTINGS)
@given(layout=layout_st, pred=pred_st, filt=st.one_of(st.none(), filter_st), batch_size=st.integers(1, 70))
def test_predicate_equals_numpy_evaluation(root, layout, pred, filt, batch_size):
    seed, n, rg_bytes, shard_bytes = layout
    data = make_data(seed, n)
    ds = write(root, data, rg_bytes, shard_bytes)
    predicate, reference = pred
    mask = np.asarray(reference(data), dtype=bool) if n else np.zeros(0, dtype=bool)
    if filt is not None:
        plain = plain_read(ds)
        try:
            hit = plain.append_column("__i", pa.array(np.arange(n, dtype=np.int64))).filter(filt).column("__i").to_numpy()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            if n:  # plain pyarrow cannot evaluate the filter either
                with pytest.raises(tsfs.InvalidArgumentError, match="cannot be"):
                    list(ds.to_batches(filter=filt, predicate=predicate))
            return
        in_filter = np.zeros(n, dtype=bool)
        in_filter[hit] = True
        mask &= in_filter
    rows = np.flatnonzero(mask)
    scanner = ds.scanner(predicate=predicate, filter=filt, batch_size=batch_size)
    got = read_all(scanner)
    assert np.array_equal(got["row"], rows)
    assert np.array_equal(got["t"], data["t"][rows], equal_nan=True)
    assert list(got["s"]) == [data["s"][i] for i in rows]
    assert np.array_equal(np.ma.getmaskarray(got["ni"]), np.ma.getmaskarray(data["_ni"])[rows])
    assert [None if x is None else x.tolist() for x in got["v"]] == [
        None if data["v"][i] is None else data["v"][i].tolist() for i in rows]
    check_scan_stats(ds, scanner, len(rows))


# ------------------------------------------------------------------------------------------------
# in_pseudorandom_split
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.6, 0.3, 0.1), (0.8, 0.2), (0.1,) * 10])
def test_pseudorandom_split_is_a_partition_with_the_right_sizes(root, fractions):
    n = 4000
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    ds = tsfs.write_dataset(str(root / f"split-{uuid.uuid4().hex}"), {"id": ids}, tsfs.Schema([tsfs.Field("id", "int64")]),
                            row_group_bytes=4000, shard_bytes=3000)
    assert len(ds.shards) > 1
    subsets = []
    for k in range(len(fractions)):
        got = np.concatenate([b["id"] for b in ds.to_batches(predicate=tsfs.in_pseudorandom_split(list(fractions), k, "id"))])
        subsets.append(got)
        sigma = math.sqrt(n * fractions[k] * (1 - fractions[k]))
        assert abs(len(got) - n * fractions[k]) <= 5 * sigma + 1, (k, len(got))
    together = np.concatenate(subsets)
    assert len(together) == n  # disjoint ...
    assert set(together.tolist()) == set(ids.tolist())  # ... and covering


def test_pseudorandom_split_fractions_below_one_leave_the_rest_out(root):
    ids = np.arange(3000, dtype=np.int64)
    ds = tsfs.write_dataset(str(root / f"split-{uuid.uuid4().hex}"), {"id": ids}, tsfs.Schema([tsfs.Field("id", "int64")]))
    a = np.concatenate([b["id"] for b in ds.to_batches(predicate=tsfs.in_pseudorandom_split([0.2, 0.3], 0, "id"))])
    b_ = np.concatenate([b["id"] for b in ds.to_batches(predicate=tsfs.in_pseudorandom_split([0.2, 0.3], 1, "id"))])
    assert not set(a.tolist()) & set(b_.tolist())
    assert 0.4 < (len(a) + len(b_)) / len(ids) < 0.6


def test_pseudorandom_split_is_stable(root):
    """Hard-coded expectations: the split must not change across runs, machines or versions."""
    # splitmix64(0) is the well-known first output 0xE220A8397B1DCDAF of SplitMix64 seeded with 0
    assert stable_unit_hash(np.array([0], dtype=np.int64))[0] == (0xE220A8397B1DCDAF >> 11) / 2**53
    assert stable_unit_hash(np.arange(4)).tolist() == [
        0.8833108082136426, 0.5665615751722809, 0.5911897341980794, 0.11345034205715454]
    assert stable_unit_hash(np.array(["a", "b", "tensor"], dtype=object)).tolist() == [
        0.22725595922969832, 0.25390289254697695, 0.4224361596468007]
    ids = np.arange(16, dtype=np.int64)
    second_half = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1]
    three_way = [1, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    # through the reader, over several layouts: the subset depends only on the key
    for rg_bytes, shard_bytes in [(8, 1), (40, 300), (10**6, 10**9)]:
        ds = tsfs.write_dataset(str(root / f"split-{uuid.uuid4().hex}"), {"id": ids},
                                tsfs.Schema([tsfs.Field("id", "int64")]), row_group_bytes=rg_bytes, shard_bytes=shard_bytes)
        got = np.concatenate([b["id"] for b in ds.to_batches(predicate=tsfs.in_pseudorandom_split([0.5, 0.5], 1, "id"))])
        assert got.tolist() == [i for i in range(16) if second_half[i]]
        for k in range(3):
            got = [x for b in ds.to_batches(predicate=tsfs.in_pseudorandom_split([0.6, 0.3, 0.1], k, "id")) for x in b["id"]]
            assert got == [i for i in range(16) if three_way[i] == k]


# ------------------------------------------------------------------------------------------------
# Pruned row groups are never opened
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 57, 200, 333])
def test_shards_that_cannot_match_are_never_opened(root, k):
    n = 400
    data = make_data(5, n)
    data["id"] = np.arange(n, dtype=np.int64)  # sorted, unique
    data["t"][:, 1] = data["id"]
    ds = write(root, data, 400, 2000)
    assert len(ds.shards) >= 5
    first = np.cumsum([0] + [s.rows for s in ds.shards])
    doomed = [ds.files[i] for i in range(len(ds.shards)) if first[i] >= k]  # shards whose ids are all >= k
    assert doomed
    for p in doomed:
        os.remove(p)
    expected = np.flatnonzero(data["id"] < k)
    for how in [dict(filter=pc.field("id") < k), dict(filter=~(pc.field("id") >= k)),
                dict(predicate=tsfs.in_range("id", high=k)),
                dict(predicate=tsfs.in_reduce([tsfs.in_range("id", high=k), tsfs.in_negate(tsfs.in_set([-1], "id"))])),
                dict(predicate=tsfs.in_set(list(range(k)), "id")) if k <= 50 else dict(predicate=tsfs.in_range("id", 0, k)),
                dict(filter=(pc.field("id") < k) & (pc.field("fl").is_valid()))]:
        scanner = tsfs.open_dataset(ds.url).scanner(batch_size=33, **how)
        got = read_all(scanner)
        assert np.array_equal(got["row"], expected), how  # (NaN is a value: fl is_valid everywhere)
        assert scanner.stats.row_groups_pruned > 0
        assert not set(scanner.stats.opened_paths) & {os.path.relpath(p, ds.url) for p in doomed}
    # the deletion is real: a read that needs those files fails
    with pytest.raises(tsfs.DatasetNotFoundError):
        list(tsfs.open_dataset(ds.url).to_batches())


def test_stats_report_pruning_and_only_matching_files(root):
    n = 300
    data = make_data(9, n)
    data["id"] = np.arange(n, dtype=np.int64)
    ds = write(root, data, 300, 1500)
    assert len(ds.shards) >= 4
    lo, hi = 120, 150
    scanner = ds.scanner(filter=(pc.field("id") >= lo) & (pc.field("id") < hi), columns=["id", "t"])
    got = np.concatenate([b["id"] for b in scanner])
    assert got.tolist() == list(range(lo, hi))
    stats = scanner.stats
    assert stats.row_groups_pruned > 0
    assert stats.row_groups_read + stats.row_groups_pruned == stats.row_groups_total == len(ds.row_groups)
    matching_files = []
    for i, shard in enumerate(ds.shards):
        first = sum(s.rows for s in ds.shards[:i])
        if any(lo <= r < hi for r in range(first, first + shard.rows)):
            matching_files.append(shard.path)
    assert stats.opened_paths == matching_files
    assert stats.files_opened == len(matching_files) < len(ds.shards)
    assert stats.rows_matched == hi - lo
    assert stats.rows_scanned < n


def test_all_rows_pruned_opens_nothing(root):
    data = make_data(2, 100)
    ds = write(root, data, 300, 1000)
    for f in [pc.field("id") > 10**6, pc.field("id").isin([]), pc.field("row").is_null(),
              (pc.field("cl") > 50) | (pc.field("r") < -32768), ~(pc.field("row") >= 0)]:
        scanner = ds.scanner(filter=f)
        assert list(scanner) == []
        assert scanner.stats.row_groups_pruned == len(ds.row_groups)
        assert scanner.stats.opened_paths == [] and scanner.stats.files_opened == 0


# ------------------------------------------------------------------------------------------------
# Bad filters
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_ds(root):
    return write(root, make_data(1, 50), 300, 2000)


@pytest.mark.parametrize(
    "filt, match",
    [
        (pc.field("nope") == 1, r"nope"),
        (pc.field("nope").is_null(), r"nope"),
        ((pc.field("id") > 3) & (pc.field("nope") < 2), r"nope"),
        (pc.field("t") == b"x", r"(?s)\bt\b.*scalar columns only"),
        (pc.field("v").is_null(), r"(?s)\bv\b.*scalar columns only"),
        (pc.field("__shape__v").is_valid(), r"(?s)__shape__v.*scalar columns only"),
    ],
    ids=["unknown", "unknown-is-null", "unknown-in-and", "fixed-tensor", "variable-tensor", "shape-column"],
)
def test_filter_on_unknown_or_tensor_column_is_rejected(small_ds, filt, match):
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        list(small_ds.to_batches(filter=filt))
    with pytest.raises(tsfs.InvalidArgumentError, match=match):
        small_ds.to_table(filter=filt)


def test_filter_must_be_an_expression(small_ds):
    with pytest.raises(tsfs.InvalidArgumentError, match=r"filter must be a pyarrow.compute.Expression"):
        list(small_ds.to_batches(filter="id < 3"))


def test_predicate_on_unknown_field_is_rejected(small_ds):
    with pytest.raises(tsfs.InvalidArgumentError, match=r"predicate reads unknown field 'zz'"):
        list(small_ds.to_batches(predicate=tsfs.in_set([1], "zz")))
    with pytest.raises(tsfs.InvalidArgumentError, match=r"predicate reads unknown field 'zz'"):
        list(small_ds.to_batches(predicate=tsfs.in_reduce([tsfs.in_set([1], "id"), tsfs.in_range("zz", 1)], "any")))


# ------------------------------------------------------------------------------------------------
# Pruning regressions: nullable columns and large value sets
# ------------------------------------------------------------------------------------------------

def test_nullable_column_with_some_nulls_prunes(root):
    n = 200
    vals = [None if i % 10 == 0 else i for i in range(n)]  # sorted, one null per 10 rows
    ds = tsfs.write_dataset(str(root / f"nul-{uuid.uuid4().hex}"), {"x": vals},
                            tsfs.Schema([tsfs.Field("x", "int64", nullable=True)]), row_group_bytes=80)
    assert len(ds.row_groups) > 5
    scanner = ds.scanner(filter=pc.field("x") < 15)
    assert sorted(v for b in scanner for v in b["x"].compressed().tolist()) == [i for i in range(1, 15) if i % 10]
    assert scanner.stats.row_groups_pruned > 0


def test_in_set_with_many_values_prunes(root):
    ids = np.arange(1000, dtype=np.int64)
    ds = tsfs.write_dataset(str(root / f"isin-{uuid.uuid4().hex}"), {"id": ids},
                            tsfs.Schema([tsfs.Field("id", "int64")]), row_group_bytes=400)
    small = ds.scanner(predicate=tsfs.in_set(list(range(50)), "id"))
    assert len([x for b in small for x in b["id"]]) == 50
    assert small.stats.row_groups_pruned > 0  # 50 values: pruned
    big = ds.scanner(predicate=tsfs.in_set(list(range(60)), "id"))
    assert len([x for b in big for x in b["id"]]) == 60
    assert big.stats.row_groups_pruned > 0  # 60 values: pruned through the explicit range


def test_in_range_and_in_set_on_a_nullable_string_column(root):
    """Regressions: in_range compared None with str (TypeError); in_set([]) built a null-typed
    isin() that Arrow cannot bind to a string column (InvalidArgumentError)."""
    s = ["b", None, "a", "c", None, "bb"]
    ds = tsfs.write_dataset(str(root / f"str-{uuid.uuid4().hex}"), {"s": s},
                            tsfs.Schema([tsfs.Field("s", "string", nullable=True)]), row_group_bytes=6)
    def read(pred):
        return [x for b in ds.to_batches(predicate=pred) for x in b["s"]]
    assert read(tsfs.in_range("s", "b", "c")) == ["b", "bb"]
    assert read(tsfs.in_range("s", high="b", inclusive_high=True)) == ["b", "a"]
    assert read(tsfs.in_negate(tsfs.in_range("s", "b"))) == [None, "a", None]
    assert read(tsfs.in_set([], "s")) == []
    assert read(tsfs.in_set([None], "s")) == []
    assert read(tsfs.in_set([None, "c"], "s")) == ["c"]
    assert read(tsfs.in_negate(tsfs.in_set([], "s"))) == s
    assert read(tsfs.in_reduce([tsfs.in_set([], "s"), tsfs.in_set(["a"], "s")], "any")) == ["a"]


@pytest.mark.parametrize("filt", [~(pc.field("fl") < math.nan), ~(pc.field("fl") <= math.nan),
                                  ~(pc.field("fl") > math.nan), (pc.field("fl") != math.nan),
                                  ~((pc.field("fl") < math.nan) & (pc.field("id") >= 0)),
                                  ~(pc.field("fl") < pa.scalar(math.nan, pa.float32()))],
                         ids=["not-lt", "not-le", "not-gt", "ne", "not-and", "not-lt-f32"])
def test_nan_literal_does_not_prune_matching_row_groups(root, filt):
    """Regression: Arrow's guarantee simplification orders NaN above every number, so
    ``~(fl < nan)`` (true for every row) pruned every row group with finite bounds."""
    n = 60
    fl = np.arange(n, dtype=np.float64) - 30.5
    fl[45:] = np.nan  # some row groups hold NaN (no bounds), the rest have finite bounds
    ds = tsfs.write_dataset(str(root / f"nan-{uuid.uuid4().hex}"), {"fl": fl, "id": np.arange(n)},
                            tsfs.Schema([tsfs.Field("fl", "float64"), tsfs.Field("id", "int64")]), row_group_bytes=100)
    assert any("min" in g.stats.get("fl", {}) for s in ds.shards for g in s.row_groups)
    expected = plain_read(ds).filter(filt).column("id").to_pylist()
    assert expected == list(range(n))
    assert [int(x) for b in ds.to_batches(filter=filt) for x in b["id"]] == expected
