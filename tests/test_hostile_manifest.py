"""A manifest from someone else: every claim is checked when it is read, a lie gets a
CorruptDatasetError naming the file and what is wrong (never a raw exception, a huge allocation or a
hang), and ``_latest`` is only a hint. Plus a hypothesis fuzz of the manifest reader."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc

import numpy as np
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorstore_fs as tsfs
from tensorstore_fs._crc import crc32c

SCHEMA = tsfs.Schema([
    tsfs.Field("id", "int64"),
    tsfs.Field("label", "int8"),
    tsfs.Field("image", "uint8", (2, 2)),
    tsfs.Field("tokens", "int32", (None,)),
    tsfs.Field("name", "string"),
    tsfs.Field("score", "float32", nullable=True),
])
N = 40
MANIFEST = "_tsfs/manifest-0000000001.json"


def columns(n: int = N) -> dict:
    return {
        "id": np.arange(n), "label": (np.arange(n) % 3).astype(np.int8),
        "image": np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2),
        "tokens": [np.arange(i % 5, dtype=np.int32) for i in range(n)],
        "name": [f"r{i}" for i in range(n)],
        "score": np.ma.masked_array(np.arange(n, dtype=np.float32), mask=np.arange(n) % 4 == 0),
    }


def make(root) -> str:
    root = str(root)
    tsfs.write_dataset(root, columns(), SCHEMA, row_group_bytes=200)  # several row groups
    return root


def body_crc(body: dict) -> str:
    """The checksum as docs/format.md section 3 defines it (not the library's own function)."""
    return f"{crc32c(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()):08x}"


def rewrite(root: str, change, *, rechecksum: bool = True, rel: str = MANIFEST) -> None:
    """Apply ``change`` to the manifest's JSON and store it with a valid checksum (a forger's file)."""
    path = os.path.join(root, rel)
    with open(path) as fh:
        d = json.load(fh)
    d.pop("checksum")
    change(d)
    if rechecksum:
        d["checksum"] = body_crc(d)
    with open(path, "w") as fh:
        json.dump(d, fh)


def write_raw(root: str, text: str, rel: str = MANIFEST) -> None:
    with open(os.path.join(root, rel), "w") as fh:
        fh.write(text)


def refused(root: str, *fragments: str) -> tsfs.CorruptDatasetError:
    with pytest.raises(tsfs.CorruptDatasetError) as info:
        ds = tsfs.open_dataset(root)
        ds.to_table()
    for f in (MANIFEST,) + fragments:
        assert f in str(info.value), str(info.value)
    return info.value


@pytest.fixture
def root(tmp_path):
    return make(tmp_path / "ds")


# -- the claims of a manifest ------------------------------------------------------------------------
def test_a_row_count_no_parquet_file_of_that_size_can_hold_is_refused_on_open(root):
    """A data page counts at most 2^31 - 1 values, so a row group of a ``bytes``-byte shard holds
    at most (2^31 - 1) x ``bytes`` rows."""
    def claim(d):
        s = d["shards"][0]
        lie = (2**31 - 1) * s["bytes"]
        s["row_groups"][0]["rows"] += lie
        s["rows"] += lie
        d["rows"] += lie

    rewrite(root, claim)
    refused(root, "shard 0", "row group 0", "'rows'")


def test_row_counts_that_do_not_add_up_are_refused(root):
    rewrite(root, lambda d: d["shards"][0].__setitem__("rows", d["shards"][0]["rows"] + 1))
    refused(root, "row groups hold")
    make_again = root
    shutil.rmtree(make_again)
    make(make_again)
    rewrite(root, lambda d: d.__setitem__("rows", d["rows"] + 5))
    refused(root, "'rows'", "add up to")


def test_a_plausible_lie_about_rows_fails_at_the_shard_without_a_huge_allocation(root):
    """A claim the manifest cannot disprove (1e9 more rows than the file holds) costs no memory
    in proportion to the claim: the shard's footer refutes it on the first read."""
    lie = 10**9

    def claim(d):
        s = d["shards"][0]
        s["row_groups"][-1]["rows"] += lie
        s["rows"] += lie
        d["rows"] += lie

    rewrite(root, claim)
    ds = tsfs.open_dataset(root)
    assert len(ds) == N + lie
    tracemalloc.start()
    try:
        with pytest.raises(tsfs.CorruptDatasetError, match="part-"):
            for _ in ds.to_batches(batch_size=16):
                pass
        with pytest.raises(tsfs.CorruptDatasetError, match="part-"):
            ds.to_table()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"reading a manifest's claim of {lie} rows allocated {peak} bytes"


@pytest.mark.parametrize("shuffle", [False, True])
def test_torch_reader_plans_a_lying_manifest_in_bounded_memory(root, shuffle):
    """The issue's case: a 10^13-row claim the row group checks cannot disprove made TorchDataset
    size a window from the manifest's bytes per row (one byte) and allocate 512 MiB of row ids."""
    pytest.importorskip("torch")
    from tensorstore_fs.readers.torch import TorchDataset

    lie = 10**12

    def claim(d):
        d["shards"][0]["bytes"] = 10**6  # a large enough file for the claim to pass the row-group bound
        for s in d["shards"]:
            s["row_groups"][-1]["rows"] += lie
            s["rows"] += lie
        d["rows"] = sum(s["rows"] for s in d["shards"])
        d["bytes"] = sum(s["bytes"] for s in d["shards"])

    rewrite(root, claim)
    tracemalloc.start()
    try:
        loader = TorchDataset(root, batch_size=4096, shuffle=shuffle)
        with pytest.raises(tsfs.CorruptDatasetError, match="part-"):
            for _ in loader:
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 192 * 2**20, f"planning a manifest's claim of {lie} rows allocated {peak} bytes"


@pytest.mark.parametrize("text, what", [
    ('{"rows": Infinity}', "Infinity"),
    ('{"rows": NaN}', "NaN"),
    ('{"rows": 1e400}', "1e400"),
    ('{"rows": -Infinity}', "-Infinity"),
])
def test_non_finite_numbers_are_refused(root, text, what):
    write_raw(root, text)
    refused(root, what)


def test_a_deeply_nested_manifest_is_refused(root):
    # deep but parseable, with a valid checksum: refused by the structure check
    rewrite(root, lambda d: d["schema"]["metadata"].__setitem__("x", json.loads("[" * 500 + "]" * 500)))
    refused(root, "nested")
    write_raw(root, "[" * 200_000 + "]" * 200_000)  # deeper than the JSON parser recurses
    refused(root, "nested")


def test_a_huge_integer_is_refused(root):
    rewrite(root, lambda d: d["shards"][0].__setitem__("bytes", 10**30))
    refused(root, "'bytes'")
    write_raw(root, '{"rows": ' + "9" * 5000 + "}")
    refused(root)


@pytest.mark.parametrize("column, stats, fragment", [
    ("id", {"nulls": 0, "min": "a", "max": "z"}, "'min' must be an integer"),
    ("id", {"nulls": 0, "min": 3}, "without the other"),
    ("id", {"nulls": 0, "min": 5, "max": 1}, "greater than max"),
    ("label", {"nulls": 0, "min": 0, "max": 1000}, "'max' must be an integer in [-128, 127]"),
    ("name", {"nulls": 0, "min": 1, "max": 2}, "must be a string"),
    ("score", {"nulls": 0, "min": True, "max": 2.0}, "finite float32"),
    ("score", {"nulls": -1}, "'nulls'"),
    ("image", {"nulls": 0}, "no scalar field"),
    ("nope", {"nulls": 0}, "no scalar field"),
    ("id", [1, 2], "must be a JSON object"),
])
def test_statistics_of_the_wrong_type_are_refused(root, column, stats, fragment):
    rewrite(root, lambda d: d["shards"][0]["row_groups"][0]["stats"].__setitem__(column, stats))
    err = refused(root, "shard 0", "row group 0", fragment)
    assert repr(column) in str(err)


@pytest.mark.parametrize("path", ["data/a\x00b.parquet", "data/\udc80.parquet", "../x/part.parquet",
                                  "/etc/passwd", "data/../../x.parquet", "data\\..\\x.parquet", "data/\n.parquet"])
def test_bad_shard_paths_are_refused(root, path):
    rewrite(root, lambda d: d["shards"][0].__setitem__("path", path))
    refused(root, "shard")


@pytest.mark.parametrize("key, value", [
    ("version", 0), ("version", "1"), ("version", True), ("parent_version", 1), ("parent_version", -3),
    ("shards", {}), ("shards", [1]), ("schema", []), ("created_at", 5),
])
def test_top_level_keys_of_the_wrong_type_are_refused(root, key, value):
    rewrite(root, lambda d: d.__setitem__(key, value))
    refused(root)


@pytest.mark.parametrize("key, value, fragment", [
    ("rows", -1, "'rows'"), ("bytes", 3, "'bytes'"), ("crc32c", "xyz", "'crc32c'"),
    ("crc32c", 12, "'crc32c'"), ("row_groups", None, "'row_groups'"), ("version_added", 7, "'version_added'"),
    ("path", None, "'path'"),
])
def test_shard_keys_of_the_wrong_type_are_refused(root, key, value, fragment):
    rewrite(root, lambda d: d["shards"][0].__setitem__(key, value))
    refused(root, "shard 0", fragment)


def test_a_manifest_that_is_not_utf8_is_refused(root):
    with open(os.path.join(root, MANIFEST), "wb") as fh:
        fh.write(b'{"format": "\xff\xfe"}')
    refused(root)


# -- _latest is a hint --------------------------------------------------------------------------------
def _append(root: str, n: int = 5) -> None:
    tsfs.write_dataset(root, {k: v[:n] for k, v in columns().items()}, SCHEMA, mode="append")


@pytest.mark.parametrize("hint", ["7", "99999999999999", "-4", "banana", "", "1e3", "9" * 5000])
def test_a_wrong_latest_hint_falls_back_to_the_newest_version(root, hint):
    _append(root)
    with open(os.path.join(root, "_tsfs/_latest"), "w") as fh:
        fh.write(hint)
    ds = tsfs.open_dataset(root)
    assert ds.version == 2 and len(ds) == N + 5
    assert ds.versions() == [1, 2]


def test_a_hint_behind_the_newest_version_is_probed_forward(root):
    _append(root)
    _append(root)
    with open(os.path.join(root, "_tsfs/_latest"), "w") as fh:
        fh.write("1")
    assert tsfs.open_dataset(root).version == 3


def test_a_damaged_newest_manifest_is_an_error_not_a_silent_older_version(root):
    """The newest committed version is the newest manifest, whatever the hint says: a damaged one
    is reported (an older version is still readable when pinned), never silently replaced."""
    _append(root)
    rel = "_tsfs/manifest-0000000002.json"
    write_raw(root, '{"format": "tensorstore_fs.manifest", "truncat', rel=rel)
    with pytest.raises(tsfs.CorruptDatasetError, match="manifest-0000000002.json"):
        tsfs.open_dataset(root)
    assert len(tsfs.open_dataset(root, version=1)) == N


# -- head ----------------------------------------------------------------------------------------------
def test_head_zero_is_an_empty_batch_with_the_schema(root):
    ds = tsfs.open_dataset(root)
    empty = ds.head(0)
    full = ds.head(3)
    assert set(empty) == set(full)
    for k, v in full.items():
        if isinstance(v, np.ndarray):
            assert empty[k].shape == (0,) + v.shape[1:] and empty[k].dtype == v.dtype, k
        else:
            assert len(empty[k]) == 0, k
    assert len(full["id"]) == 3
    assert list(ds.head(0, columns=["id"])) == ["id"]
    assert len(ds.head(10**6)["id"]) == N


@pytest.mark.parametrize("n", [-3, -1, 2.0, "3", True, None])
def test_head_refuses_a_bad_n(root, n):
    with pytest.raises(tsfs.InvalidArgumentError, match=r"\bn must be a non-negative int"):
        tsfs.open_dataset(root).head(n)


def test_filters_still_work_on_a_validated_manifest(root):
    ds = tsfs.open_dataset(root)
    t = ds.to_table(filter=pc.field("id") >= 30)
    assert t.column("id").to_pylist() == list(range(30, N))


# -- fuzz -----------------------------------------------------------------------------------------------
def _paths(node, prefix=()):
    """Every (container path, key) in a JSON tree."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**53, 2**63, 2**64, 10**13, 10**40]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, -0.0, 1e300]),
    st.text(max_size=12), st.sampled_from(["", "data/x.parquet", "../x", "\x00", "\udc80", "ffffffff", "int64"]),
)
_values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                       max_leaves=6)
_mutations = st.one_of(
    st.tuples(st.just("set"), _values),
    st.tuples(st.just("delete"), st.none()),
    st.tuples(st.just("nest"), st.integers(1, 40)),
    st.tuples(st.just("raw"), st.sampled_from(["Infinity", "NaN", "1e400", "-1e999", "9" * 400, "[" * 3000])),
)


def _get(d, path):
    for k in path:
        d = d[k]
    return d


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    root = make(tmp_path_factory.mktemp("fuzz") / "ds")
    with open(os.path.join(root, MANIFEST), "rb") as fh:
        original = fh.read()
    expected = tsfs.open_dataset(root).to_table()
    return root, original, {n: expected.column(n).to_pylist() for n in expected.column_names}


@settings(max_examples=120, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data(), mutation=_mutations, rechecksum=st.booleans() | st.just(True))
def test_fuzzed_manifests_read_correctly_or_raise_a_library_error(fuzz_root, data, mutation, rechecksum):
    root, original, expected = fuzz_root
    d = json.loads(original)
    d.pop("checksum")
    path = data.draw(st.sampled_from(_paths(d)), label="path")
    parent, key = _get(d, path[:-1]), path[-1]
    kind, arg = mutation
    raw = None
    if kind == "set":
        parent[key] = arg
    elif kind == "delete":
        del parent[key]
    elif kind == "nest":
        value = parent[key]
        for _ in range(arg):
            value = [value]
        parent[key] = value
    else:
        parent[key] = "__RAW__"
        raw = arg
    if rechecksum:
        d["checksum"] = body_crc(d)
    text = json.dumps(d)
    if raw is not None:
        text = text.replace('"__RAW__"', raw)
    try:
        write_raw(root, text)
        try:
            ds = tsfs.open_dataset(root)
            table = ds.to_table()
            got = {n: table.column(n).to_pylist() for n in table.column_names if n in expected}
            assert table.num_rows == N
            for n, values in got.items():
                assert values == expected[n], n
            head = ds.head(3)
            assert len(next(iter(head.values()))) == 3
            for batch in ds.to_batches(batch_size=16):
                pass
        except tsfs.TensorstoreError:
            pass
    finally:
        with open(os.path.join(root, MANIFEST), "wb") as fh:
            fh.write(original)
