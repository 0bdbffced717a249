"""Reader conformance: one suite, run on every storage backend (issue 16, item 6).

Each test runs on a local directory, on fsspec's ``memory://`` and on S3 (the real SeaweedFS
server of the session fixture ``s3``). Every dataset is written by the library's own writer to the
backend's URL; every check compares what a reader delivered with the numpy data that was written
(each value is a function of the row's id, and ids equal row indices), never only with another
backend's output.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from torch.utils.data import DataLoader

import tensorstore_fs as tsfs
from tensorstore_fs.audit import audit_epoch
from tensorstore_fs.readers.torch import TorchDataset

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# each test takes a few seconds at most; one that hangs (a stuck pipeline or server) fails early
pytestmark = pytest.mark.timeout(180)

BACKENDS = ["local", "memory", "s3"]
N = 300  # several shards of several row groups (checked in test_open_dataset)
WRITE_CHUNK = 100  # the writer gets the rows as several batches
WRITER_OPTIONS = dict(row_group_bytes=2500, shard_bytes=9000)
SCHEMA = tsfs.Schema([
    tsfs.Field("id", "int64"),
    tsfs.Field("x", "float32", (4, 3)),
    tsfs.Field("tokens", "int32", (None,)),
    tsfs.Field("label", "int64"),
    tsfs.Field("quality", "float64"),
    tsfs.Field("name", "string"),
])


# -- the data: every value is a function of the row id ----------------------------------------------
def x_of(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return (ids[:, None] * 12 + np.arange(12) + 0.5).astype(np.float32).reshape(len(ids), 4, 3)


def tokens_of(i: int) -> np.ndarray:
    return (np.arange(i % 6, dtype=np.int32) + 10 * i).astype(np.int32)  # lengths 0..5 (empty rows too)


def columns_of(ids) -> dict[str, Any]:
    ids = np.asarray(ids, dtype=np.int64)
    return {
        "id": ids,
        "x": x_of(ids),
        "tokens": [tokens_of(int(i)) for i in ids],
        "label": ids // 30,  # 0..9 in runs: a filter on it prunes row groups by their statistics
        "quality": ((ids * 37) % 100) / 100.0,
        "name": [f"row-{i}-é" for i in ids],
    }


EXPECTED = columns_of(np.arange(N))
ALL_IDS = np.arange(N)


# -- backends ---------------------------------------------------------------------------------------
@dataclass
class Target:
    backend: str
    url: str
    options: dict[str, Any] | None


def _new_target(backend: str, request, tmp_root) -> tuple[Target, Any]:
    """A fresh, unique dataset URL on ``backend`` and a function that removes it."""
    name = f"conformance-{uuid.uuid4().hex[:12]}"
    if backend == "local":
        return Target(backend, str(tmp_root / name), None), lambda: None
    if backend == "memory":
        fs = fsspec.filesystem("memory")

        def cleanup() -> None:
            if fs.exists(f"/{name}"):
                fs.rm(f"/{name}", recursive=True)

        return Target(backend, f"memory://{name}/ds", None), cleanup
    s3 = request.getfixturevalue("s3")  # the session's one server (skips where no weed is installed)
    return Target(backend, s3.url(name), s3.storage_options()), lambda: None


@pytest.fixture(scope="module", params=BACKENDS)
def written(request, tmp_path_factory):
    """The dataset of N rows, written once per backend and module by ``write_dataset``."""
    target, cleanup = _new_target(request.param, request, tmp_path_factory.mktemp("conformance"))
    batches = (columns_of(np.arange(s, min(s + WRITE_CHUNK, N))) for s in range(0, N, WRITE_CHUNK))
    tsfs.write_dataset(target.url, batches, SCHEMA, storage_options=target.options, **WRITER_OPTIONS)
    yield target
    cleanup()


@pytest.fixture(params=BACKENDS)
def fresh(request, tmp_path):
    """An empty dataset URL per test on each backend, removed afterwards."""
    target, cleanup = _new_target(request.param, request, tmp_path)
    yield target
    cleanup()


def open_ds(t: Target, version: int | None = None) -> tsfs.Dataset:
    return tsfs.open_dataset(t.url, version=version, storage_options=t.options)


# -- comparing with the written data ----------------------------------------------------------------
def assert_rows(got: dict[str, Any], ids: np.ndarray, columns=None) -> None:
    """``got`` (one value per row: arrays, or lists for tokens / name) holds exactly rows ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    columns = SCHEMA.names if columns is None else columns
    assert set(got) == set(columns), (sorted(got), sorted(columns))
    for name in columns:
        value = got[name]
        assert len(value) == len(ids), name
        if name == "tokens":
            for i, row in zip(ids, value):
                row = np.asarray(row)
                assert row.dtype == np.int32, row.dtype
                np.testing.assert_array_equal(row, tokens_of(int(i)), err_msg=f"tokens of row {i}")
        elif name == "name":
            assert [str(v) for v in value] == [EXPECTED["name"][i] for i in ids]
        else:
            value = np.asarray(value)
            want = EXPECTED[name][ids]
            assert value.dtype == want.dtype, (name, value.dtype, want.dtype)
            np.testing.assert_array_equal(value, want, err_msg=name)


def numpy_rows(batches: list[dict[str, Any]], variable: str = "list") -> dict[str, Any]:
    """Concatenate ``to_batches`` output into one value per row (tokens as a list of arrays)."""
    out: dict[str, Any] = {}
    for key in batches[0]:
        if key.endswith("__shape"):
            continue
        parts = [b[key] for b in batches]
        if key == "tokens":
            rows = []
            for b in batches:
                rows += tokens_rows(b, variable)
            out[key] = rows
        elif key == "name":
            out[key] = [v for p in parts for v in p]
        else:
            out[key] = np.concatenate(parts)
    return out


def tokens_rows(batch: dict[str, Any], variable: str) -> list[np.ndarray]:
    """The rows of ``tokens`` in one numpy batch, checking the layout ``variable`` promises."""
    v = batch["tokens"]
    if variable == "list":
        assert isinstance(v, list) and all(isinstance(r, np.ndarray) for r in v)
        return v
    if variable == "flat":
        assert isinstance(v, tsfs.RaggedRows) and v.valid is None
        assert v.values.dtype == np.int32 and v.offsets.shape == (len(v) + 1,)
        np.testing.assert_array_equal(v.lengths, v.shapes[:, 0])
        return v.to_list()
    assert variable == "pad"
    padded, shapes = batch["tokens"], batch["tokens__shape"]
    assert padded.dtype == np.int32 and padded.ndim == 2 and shapes.shape == (len(padded), 1)
    assert padded.shape[1] == (shapes.max() if len(shapes) else 0)
    rows = []
    for row, (n,) in zip(padded, shapes):
        assert not row[n:].any(), "padding is zeros"
        rows.append(row[:n])
    return rows


def torch_rows(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate TorchDataset batches (variable="pad") into one value per row, as numpy."""
    out: dict[str, Any] = {}
    for key in batches[0]:
        if key == "tokens__shape":
            continue
        if key == "tokens":
            rows = []
            for b in batches:
                rows += tokens_rows({"tokens": b["tokens"].numpy(), "tokens__shape": b["tokens__shape"].numpy()}, "pad")
            out[key] = rows
        elif key == "name":
            assert all(isinstance(b[key], list) for b in batches)
            out[key] = [v for b in batches for v in b[key]]
        else:
            assert all(isinstance(b[key], torch.Tensor) for b in batches), key
            out[key] = np.concatenate([b[key].numpy() for b in batches])
    return out


def row_ids(batches: list[dict[str, Any]]) -> np.ndarray:
    ids = [b["__row_id__"] for b in batches]
    return np.concatenate([i.numpy() if isinstance(i, torch.Tensor) else np.asarray(i) for i in ids]) \
        if ids else np.zeros(0, np.int64)


def check_torch_batches(batches: list[dict[str, Any]]) -> np.ndarray:
    """Every row of the batches has the values written for its ``__row_id__``; returns the ids."""
    got = torch_rows(batches)
    ids = got.pop("__row_id__")
    assert ids.dtype == np.int64
    assert_rows(got, ids)
    return ids


def exactly_once(per_rank: list[np.ndarray], expected=N) -> None:
    report = audit_epoch(per_rank, expected)
    assert report.exactly_once, str(report)


def torch_reader(t: Target, **kw) -> TorchDataset:
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return TorchDataset(t.url, storage_options=t.options, **kw)


# -- opening ----------------------------------------------------------------------------------------
def test_open_dataset(written):
    """len, schema, version(s), layout (several shards of several row groups) and head(5)."""
    ds = open_ds(written)
    assert len(ds) == ds.num_rows == N
    assert ds.schema == SCHEMA
    assert ds.schema.to_json() == SCHEMA.to_json()
    assert ds.version == 1 and ds.versions() == [1] and ds.parent_version is None
    assert len(ds.shards) >= 3, [s.rows for s in ds.shards]
    assert all(len(s.row_groups) >= 2 for s in ds.shards[:-1]), [len(s.row_groups) for s in ds.shards]
    assert sum(s.rows for s in ds.shards) == N
    head = ds.head(5)
    assert_rows(head, np.arange(5))
    assert_rows(ds.head(100), np.arange(100))  # across row groups and shard files
    assert_rows(ds.head(5, columns=["tokens", "label"]), np.arange(5), ["tokens", "label"])
    assert open_ds(written, version=1).version == 1
    with pytest.raises(tsfs.DatasetNotFoundError):
        open_ds(written, version=2)
    ds.verify()


# -- to_batches ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variable", ["list", "pad", "flat"])
def test_to_batches_every_row_in_storage_order(written, variable):
    batches = list(open_ds(written).to_batches(batch_size=64, variable=variable))
    assert [len(b["id"]) for b in batches] == [64] * (N // 64) + [N % 64]
    for b in batches:
        assert b["x"].shape[1:] == (4, 3) and b["x"].dtype == np.float32
    expected_keys = set(SCHEMA.names) | ({"tokens__shape"} if variable == "pad" else set())
    assert set(batches[0]) == expected_keys
    assert_rows(numpy_rows(batches, variable), ALL_IDS)
    dropped = list(open_ds(written).to_batches(batch_size=64, variable=variable, drop_last=True))
    assert [len(b["id"]) for b in dropped] == [64] * (N // 64)
    assert_rows(numpy_rows(dropped, variable), ALL_IDS[:N // 64 * 64])


def test_to_batches_columns(written):
    ds = open_ds(written)
    for columns in (["label"], ["x", "name"], ["tokens", "id", "quality"]):
        batches = list(ds.to_batches(columns=columns, batch_size=50))
        assert all(set(b) == set(columns) for b in batches)
        assert_rows(numpy_rows(batches), ALL_IDS, columns)
    table = ds.to_table(columns=["id", "x", "name"], filter=pc.field("label") == 4)
    ids = ALL_IDS[EXPECTED["label"] == 4]
    np.testing.assert_array_equal(table.column("id").to_numpy(), ids)
    np.testing.assert_array_equal(table.column("x").combine_chunks().to_numpy_ndarray(), EXPECTED["x"][ids])
    assert table.column("name").to_pylist() == [EXPECTED["name"][i] for i in ids]


@pytest.mark.parametrize("variable", ["list", "pad", "flat"])
def test_to_batches_filter(written, variable):
    ds = open_ds(written)
    label, quality = EXPECTED["label"], EXPECTED["quality"]
    cases = [
        (pc.field("label") >= 7, label >= 7),
        (pc.field("label").isin([2, 5]) & (pc.field("quality") < 0.5), np.isin(label, [2, 5]) & (quality < 0.5)),
        (pc.field("label") == 100, np.zeros(N, bool)),
    ]
    for expr, mask in cases:
        batches = list(ds.to_batches(filter=expr, batch_size=32, variable=variable))
        want = ALL_IDS[mask]
        if not len(want):
            assert sum(len(b["id"]) for b in batches) == 0
            continue
        assert all(len(b["id"]) <= 32 for b in batches)
        assert_rows(numpy_rows(batches, variable), want)
    # the filter's columns need not be read
    batches = list(ds.to_batches(columns=["tokens"], filter=pc.field("label") == 3, variable=variable))
    assert_rows(numpy_rows(batches, variable), ALL_IDS[label == 3], ["tokens"])
    # row groups ruled out by the manifest statistics are skipped
    scanner = ds.scanner(columns=["id"], filter=pc.field("label") == 3)
    assert_rows(numpy_rows(list(scanner)), ALL_IDS[label == 3], ["id"])
    stats = scanner.stats
    assert stats.row_groups_total == len(ds.row_groups)
    assert stats.row_groups_pruned >= stats.row_groups_total - 4, str(stats)  # 30 rows in row groups of 16
    assert stats.rows_matched == 30 and stats.rows_scanned < N // 2, str(stats)
    assert stats.files_opened < len(ds.shards), str(stats)


def _name_ends_in_7(names):
    return np.array([n.split("-")[1].endswith("7") for n in names])


@pytest.mark.parametrize("variable", ["list", "pad", "flat"])
def test_to_batches_predicate(written, variable):
    ds = open_ds(written)
    label, quality = EXPECTED["label"], EXPECTED["quality"]
    split = tsfs.in_pseudorandom_split([0.7, 0.3], 0, "id")
    split_mask = split({"id": ALL_IDS.copy()})
    assert 0 < split_mask.sum() < N
    cases = [
        (tsfs.in_set([1, 4, 8], "label"), np.isin(label, [1, 4, 8])),
        (tsfs.in_range("quality", 0.25, 0.5), (quality >= 0.25) & (quality < 0.5)),
        (tsfs.in_reduce([tsfs.in_set([0, 9], "label"), tsfs.in_range("id", 10, 290)], "all"),
         np.isin(label, [0, 9]) & (ALL_IDS >= 10) & (ALL_IDS < 290)),
        (tsfs.in_negate(tsfs.in_set([3], "label")), label != 3),
        (tsfs.in_lambda(["name"], _name_ends_in_7), ALL_IDS % 10 == 7),
        (split, split_mask),
        (tsfs.in_pseudorandom_split([0.7, 0.3], 1, "id"), ~split_mask),
    ]
    for predicate, mask in cases:
        batches = list(ds.to_batches(predicate=predicate, batch_size=40, variable=variable))
        assert_rows(numpy_rows(batches, variable), ALL_IDS[mask])
    # predicate and filter together; the predicate's column is not among those read
    batches = list(ds.to_batches(columns=["x", "tokens"], filter=pc.field("label") < 5,
                                 predicate=tsfs.in_set([2, 3, 4, 5, 6], "label"), variable=variable))
    assert_rows(numpy_rows(batches, variable), ALL_IDS[(label < 5) & (label >= 2)], ["x", "tokens"])


# -- planned reads (PyTorch) --------------------------------------------------------------------------------
def test_shuffled_epochs_read_every_row_once(written):
    reader = torch_reader(written, batch_size=32, shuffle=True, seed=7, with_row_ids=True)
    epochs = []
    for epoch in range(2):
        batches = list(reader)  # num_workers=0: each iteration is the next epoch
        ids = check_torch_batches(batches)
        exactly_once([ids])
        epochs.append(ids)
    assert not np.array_equal(epochs[0], ALL_IDS), "shuffled"
    assert not np.array_equal(epochs[0], epochs[1]), "each epoch has its own order"
    # the same seed and epoch give the same order
    again = torch_reader(written, batch_size=32, shuffle=True, seed=7, with_row_ids=True)
    np.testing.assert_array_equal(row_ids(list(again)), epochs[0])
    # another seed, another order
    other = torch_reader(written, batch_size=32, shuffle=True, seed=8, with_row_ids=True, columns=["id"])
    assert not np.array_equal(row_ids(list(other)), epochs[0])


def test_unshuffled_torch_reads_storage_order(written):
    batches = list(torch_reader(written, batch_size=64, with_row_ids=True))
    ids = check_torch_batches(batches)
    np.testing.assert_array_equal(ids, ALL_IDS)


def test_torch_columns_filter_predicate(written):
    label = EXPECTED["label"]
    reader = torch_reader(written, columns=["x", "tokens", "name"], filter=pc.field("label") >= 4,
                          predicate=tsfs.in_set([4, 5, 9], "label"), batch_size=16, shuffle=True, seed=1,
                          with_row_ids=True)
    batches = list(reader)
    got = torch_rows(batches)
    ids = got.pop("__row_id__")
    assert_rows(got, ids, ["x", "tokens", "name"])
    exactly_once([ids], ALL_IDS[np.isin(label, [4, 5, 9])])


@pytest.mark.parametrize("remainder", ["uneven", "drop", "pad"])
def test_distributed_split(written, remainder):
    """world_size=3, ranks in one process: disjoint shares whose union is every row once
    ("uneven"), equal shares missing fewer rows than ranks ("drop"), equal shares padded by
    repeats marked in ``__pad__`` ("pad")."""
    world = 3
    per_rank, pads = [], []
    for rank in range(world):
        reader = torch_reader(written, batch_size=16, shuffle=True, seed=3, remainder=remainder, rank=rank,
                              world_size=world, with_row_ids=True)
        assert reader.rank == rank and reader.world_size == world
        batches = list(reader)
        assert len(batches) == len(torch_reader(written, batch_size=16, shuffle=True, seed=3, remainder=remainder,
                                                rank=rank, world_size=world))
        pad = np.concatenate([b.pop("__pad__").numpy() for b in batches]) if remainder == "pad" else None
        per_rank.append(check_torch_batches(batches))
        pads.append(pad)
    sizes = [len(r) for r in per_rank]
    if remainder == "uneven":
        exactly_once(per_rank)
        assert max(sizes) - min(sizes) <= 1
    elif remainder == "drop":
        assert len(set(sizes)) == 1 and N - world < sum(sizes) <= N
        seen = np.concatenate(per_rank)
        assert len(np.unique(seen)) == len(seen), "shares are disjoint"
    else:
        assert len(set(sizes)) == 1 and sum(sizes) >= N
        report = audit_epoch(per_rank, N, pads)
        assert report.exactly_once and report.balanced, str(report)
        assert report.padded == sum(sizes) - N
    # a filter is applied before the rows are balanced: the ranks share exactly the rows it leaves
    if remainder == "uneven":
        want = ALL_IDS[EXPECTED["label"] % 3 == 1]
        shares = [row_ids(list(torch_reader(written, columns=["id"], filter=pc.field("label").isin([1, 4, 7]),
                                            batch_size=8, remainder="uneven", rank=r, world_size=world,
                                            with_row_ids=True)))
                  for r in range(world)]
        exactly_once(shares, want)
        # tf.data splits the same way: each rank reads the rows its TorchDataset reads, in the same order
        pytest.importorskip("tensorflow")
        from tensorstore_fs.readers.tf import make_tf_dataset

        for rank in range(world):
            tf_ids = [b["__row_id__"].numpy() for b in make_tf_dataset(
                written.url, columns=["id"], batch_size=16, shuffle=True, seed=3, remainder="uneven", rank=rank,
                world_size=world, with_row_ids=True, storage_options=written.options)]
            np.testing.assert_array_equal(np.concatenate(tf_ids), per_rank[rank])


def test_dataloader_two_workers_fork(written):
    _check_dataloader(written, "fork")


@pytest.mark.parametrize("written", ["local", "s3"], indirect=True)  # memory:// lives in one process
def test_dataloader_two_workers_spawn(written):
    _check_dataloader(written, "spawn")


def _check_dataloader(written, start_method):
    # an opened Dataset (fork) or a URL (spawn): either reaches the workers
    source = open_ds(written) if start_method == "fork" else written.url
    reader = TorchDataset(source, batch_size=24, shuffle=True, seed=4, with_row_ids=True, rank=0, world_size=1,
                          storage_options=None if start_method == "fork" else written.options)
    loader = DataLoader(reader, batch_size=None, num_workers=2, multiprocessing_context=start_method)
    assert len(loader) == len(reader)
    batches = list(loader)
    assert len(batches) == len(reader)
    ids = check_torch_batches(batches)
    exactly_once([ids])
    # the DataLoader's order is the epoch plan's: the same rows as in-process reading with two plan workers
    same = torch_reader(written, batch_size=24, shuffle=True, seed=4, with_row_ids=True)
    planned = [same.stream.row_ids(i) for i, _ in same.stream.plan(0, 1).rank_stream(0, 2)]
    np.testing.assert_array_equal(ids, np.concatenate(planned))


# -- resume ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 5, 9])
def test_resume_continues_with_the_remaining_rows(written, k):
    kw = dict(batch_size=16, shuffle=True, seed=11, with_row_ids=True, remainder="uneven")
    full = [b["__row_id__"].numpy().copy() for b in torch_reader(written, **kw)]
    assert len(full) > 9
    reader = torch_reader(written, **kw)
    it = iter(reader)
    head = [next(it) for _ in range(k)]
    state = json.loads(json.dumps(reader.state_dict()))  # JSON-ready
    assert state["consumed_batches"] == k
    resumed = torch_reader(written, **kw)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - k
    rest = list(resumed)
    assert len(rest) == len(full) - k
    for got, want in zip(rest, full[k:]):  # batch for batch the uninterrupted stream
        np.testing.assert_array_equal(got["__row_id__"].numpy(), want)
    ids = check_torch_batches(head + rest) if head + rest else np.zeros(0, np.int64)
    exactly_once([ids])


def test_resume_with_dataloader_workers(written):
    """A rank-level state saved after k batches of a 2-worker DataLoader continues a new
    2-worker DataLoader with exactly the rest of the stream."""
    kw = dict(batch_size=16, shuffle=True, seed=17, with_row_ids=True)

    def loader(reader):
        return DataLoader(reader, batch_size=None, num_workers=2, multiprocessing_context="fork")

    full = [b["__row_id__"].numpy().copy() for b in loader(torch_reader(written, **kw))]
    k = 7
    reader = torch_reader(written, **kw)
    head = []
    for b in loader(reader):
        head.append(b)
        if len(head) == k:
            break
    state = json.loads(json.dumps(reader.state_dict(consumed_batches=k, num_workers=2)))
    resumed = torch_reader(written, **kw)
    resumed.load_state_dict(state)
    rest = list(loader(resumed))
    assert len(rest) == len(full) - k
    for got, want in zip(head + rest, full):
        np.testing.assert_array_equal(got["__row_id__"].numpy(), want)
    exactly_once([check_torch_batches(head + rest)])


@pytest.mark.parametrize("variable", ["list", "flat"])
def test_torch_variable_layouts(written, variable):
    reader = torch_reader(written, columns=["tokens"], batch_size=32, shuffle=True, seed=6, variable=variable,
                          with_row_ids=True)
    ids, rows = [], []
    for b in reader:
        ids.append(b["__row_id__"].numpy())
        if variable == "list":
            assert isinstance(b["tokens"], list)
            rows += [r.numpy() for r in b["tokens"]]
        else:
            values, offsets, shape = b["tokens"], b["tokens__offsets"], b["tokens__shape"]
            assert values.ndim == 1 and offsets[0] == 0 and len(offsets) == len(shape) + 1
            np.testing.assert_array_equal(np.diff(offsets.numpy()), shape[:, 0].numpy())
            rows += [values[a:z].numpy() for a, z in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    ids = np.concatenate(ids)
    exactly_once([ids])
    assert_rows({"tokens": rows}, ids, ["tokens"])


# -- tf.data --------------------------------------------------------------------------------------------------
def tf_rows(batches: list[dict[str, Any]]) -> dict[str, Any]:
    import tensorflow as tf

    out: dict[str, Any] = {}
    for key in batches[0]:
        if key == "tokens":
            assert all(isinstance(b[key], tf.RaggedTensor) for b in batches)
            out[key] = [np.asarray(r, dtype=np.int32) for b in batches for r in b[key].to_list()]
        elif key == "name":
            out[key] = [v.decode() for b in batches for v in b[key].numpy()]
        else:
            out[key] = np.concatenate([b[key].numpy() for b in batches])
    return out


def test_make_tf_dataset_yields_the_rows_of_to_batches(written):
    tf = pytest.importorskip("tensorflow")
    from tensorstore_fs.readers.tf import TFReader, make_tf_dataset

    ds = open_ds(written)
    cases = [
        dict(),
        dict(columns=["x", "tokens", "label"], filter=pc.field("label") >= 6),
        dict(columns=["id", "name"], predicate=tsfs.in_set([0, 2], "label")),
    ]
    for kw in cases:
        want_batches = list(ds.to_batches(batch_size=32, **kw))
        tf_batches = list(make_tf_dataset(written.url, batch_size=32, storage_options=written.options, **kw))
        assert [len(b[next(iter(b))]) for b in tf_batches] == [len(b[next(iter(b))]) for b in want_batches]
        got, want = tf_rows(tf_batches), numpy_rows(want_batches)
        assert set(got) == set(want)
        ids = want.get("id", None)
        columns = kw.get("columns", SCHEMA.names)
        mask = np.ones(N, bool)
        if "filter" in kw:
            mask &= EXPECTED["label"] >= 6
        if "predicate" in kw:
            mask &= np.isin(EXPECTED["label"], [0, 2])
        assert_rows(got, ALL_IDS[mask], columns)
        assert_rows(want, ALL_IDS[mask], columns)
        if ids is not None:
            np.testing.assert_array_equal(got["id"], ids)
    spec = make_tf_dataset(written.url, batch_size=8, storage_options=written.options).element_spec
    assert spec["x"] == tf.TensorSpec((None, 4, 3), tf.float32)
    assert isinstance(spec["tokens"], tf.RaggedTensorSpec)
    # shuffled, with row ids: every row once per epoch, values matching each row id
    reader = TFReader(written.url, batch_size=32, shuffle=True, seed=5, with_row_ids=True,
                      storage_options=written.options)
    got = tf_rows(list(reader.dataset()))
    ids = got.pop("__row_id__")
    exactly_once([ids])
    assert_rows(got, ids)
    assert not np.array_equal(ids, ALL_IDS)
    # two plan workers in threads: the order of a DataLoader with two workers (the epoch plan's)
    kw = dict(batch_size=24, shuffle=True, seed=4, with_row_ids=True, rank=0, world_size=1)
    tf_ids = np.concatenate([b["__row_id__"].numpy() for b in make_tf_dataset(
        written.url, columns=["id"], num_workers=2, storage_options=written.options, **kw)])
    plan = torch_reader(written, **kw).stream
    planned = [plan.row_ids(i) for i, _ in plan.plan(0, 1).rank_stream(0, 2)]
    np.testing.assert_array_equal(tf_ids, np.concatenate(planned))


def test_tf_resumes_a_torch_state(written):
    """The rank-level state of a TorchDataset continues in tf.data with exactly the same rows."""
    pytest.importorskip("tensorflow")
    from tensorstore_fs.readers.tf import TFReader

    kw = dict(batch_size=16, shuffle=True, seed=13, with_row_ids=True, remainder="uneven")
    full = [b["__row_id__"].numpy().copy() for b in torch_reader(written, **kw)]
    reader = torch_reader(written, **kw)
    it = iter(reader)
    head = [next(it)["__row_id__"].numpy().copy() for _ in range(6)]
    state = json.loads(json.dumps(reader.state_dict()))
    tfr = TFReader(written.url, storage_options=written.options, rank=0, world_size=1, **kw)
    tfr.load_state_dict(state)
    rest = list(tfr.dataset())
    assert len(rest) == len(full) - 6
    for got, want in zip(rest, full[6:]):
        np.testing.assert_array_equal(got["__row_id__"].numpy(), want)
    got = tf_rows(rest)
    ids = got.pop("__row_id__")
    assert_rows(got, ids)
    exactly_once([np.concatenate(head + [ids])])


# -- versions --------------------------------------------------------------------------------------------------
def test_append_then_read_both_versions(fresh):
    first, second = np.arange(0, 170), np.arange(170, N)
    with tsfs.DatasetWriter(fresh.url, SCHEMA, storage_options=fresh.options, **WRITER_OPTIONS) as w:
        for s in range(0, len(first), 60):
            w.write(columns_of(first[s:s + 60]))
    with tsfs.DatasetWriter(fresh.url, mode="append", storage_options=fresh.options, **WRITER_OPTIONS) as w:
        assert w.schema == SCHEMA  # taken from the dataset
        for s in range(0, len(second), 60):
            w.write(columns_of(second[s:s + 60]))
    v1, v2, latest = open_ds(fresh, 1), open_ds(fresh, 2), open_ds(fresh)
    assert (v1.version, v2.version, latest.version) == (1, 2, 2)
    assert v2.parent_version == 1 and v1.versions() == v2.versions() == [1, 2]
    assert (len(v1), len(v2)) == (len(first), N)
    assert len(v2.shards) > len(v1.shards) >= 2
    assert set(v1.files) < set(v2.files)
    assert_rows(numpy_rows(list(v1.to_batches(batch_size=64))), first)
    assert_rows(numpy_rows(list(v2.to_batches(batch_size=64))), ALL_IDS)
    # a filter only the appended rows pass, on both versions
    label = EXPECTED["label"]
    assert sum(len(b["id"]) for b in v1.to_batches(filter=pc.field("label") >= 6)) == 0
    assert_rows(numpy_rows(list(v2.to_batches(filter=pc.field("label") >= 6, variable="pad")), "pad"),
                ALL_IDS[label >= 6])
    # planned readers pin a version too
    for version, ids in ((1, first), (2, ALL_IDS)):
        reader = torch_reader(fresh, version=version, batch_size=32, shuffle=True, seed=2, with_row_ids=True)
        assert reader.dataset.version == version
        got = check_torch_batches(list(reader))
        exactly_once([got], ids)
    v1.verify()
    v2.verify()
    # an overwrite is a third version; the older ones stay readable by number
    tsfs.write_dataset(fresh.url, columns_of(np.arange(5)), SCHEMA, mode="overwrite", storage_options=fresh.options)
    assert open_ds(fresh).versions() == [1, 2, 3]
    assert_rows(open_ds(fresh).head(10), np.arange(5))
    assert_rows(numpy_rows(list(open_ds(fresh, 1).to_batches())), first)
    assert_rows(numpy_rows(list(open_ds(fresh, 2).to_batches())), ALL_IDS)
