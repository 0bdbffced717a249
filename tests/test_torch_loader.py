"""TorchDataset through real DataLoaders: start methods, worker counts, epochs, a real 3-process
gloo world, resume across world shapes (and torchdata's StatefulDataLoader), memory over epochs.

Every check compares what a DataLoader actually delivered with the dataset itself (each row's
values are a function of its id) or with the epoch plan (``EpochPlan.rank_stream``), and proves
coverage with :func:`tensorstore_fs.audit.audit_epoch`. Warnings are errors here (pyproject), in
the main process and, through ``worker_init_fn``, in DataLoader workers of every start method.
"""

from __future__ import annotations

import copy
import gc
import json
import multiprocessing as mp
import socket
import time
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from torch.utils.data import DataLoader

import tensorstore_fs as tsfs
from tensorstore_fs.audit import audit_epoch
from tensorstore_fs.readers.torch import TorchDataset

N = 1003  # divisible by neither the world sizes (2, 3) nor the batch sizes used here
SCHEMA = tsfs.Schema([
    tsfs.Field("id", "int64"),
    tsfs.Field("image", "uint8", (3, 8, 8)),
    tsfs.Field("label", "int32"),
    tsfs.Field("seq", "float32", (None, 3)),
    tsfs.Field("score", "float32", nullable=True),
    tsfs.Field("emb", "float32", (4,), nullable=True),
    tsfs.Field("name", "string"),
])
FILTER = pc.field("label") < 7
PREDICATE = tsfs.in_pseudorandom_split([0.7, 0.3], 0, "id")


# -- the data: every value is a function of the row's id ------------------------------------------
def image_of(i):
    return ((np.asarray(i)[..., None] * 7 + np.arange(192)) % 256).astype(np.uint8).reshape(*np.shape(i), 3, 8, 8)


def seq_of(i):
    return (i + np.arange((i % 5) * 3, dtype=np.float32)).reshape(i % 5, 3)


def columns_of(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return {
        "id": ids,
        "image": image_of(ids),
        "label": (ids % 10).astype(np.int32),
        "seq": [seq_of(int(i)) for i in ids],
        "score": np.ma.MaskedArray(ids * 0.5, mask=ids % 7 == 0).astype(np.float32),
        "emb": np.ma.MaskedArray(ids[:, None] + np.arange(4.0), mask=np.repeat((ids % 11 == 0)[:, None], 4, 1)).astype(np.float32),
        "name": [f"row-{i}" for i in ids],
    }


def selected_ids():
    """Row ids passing FILTER and PREDICATE (ids equal row indices)."""
    ids = np.arange(N)
    return ids[(ids % 10 < 7) & PREDICATE({"id": ids})]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("torch_loader") / "ds")
    ds = tsfs.write_dataset(path, (columns_of(np.arange(s, min(s + 250, N))) for s in range(0, N, 250)), SCHEMA,
                            row_group_bytes=3000, shard_bytes=15000)
    assert len(ds) == N and len(ds.row_groups) >= 40 and len(ds.shards) >= 8
    return path


# -- helpers ------------------------------------------------------------------------------------------
def _strict_warnings(worker_id):
    """worker_init_fn: warnings are errors inside workers too (spawn/forkserver start clean)."""
    warnings.simplefilter("error")


def make_loader(ds, num_workers, context="fork", **kw):
    if num_workers == 0:
        return DataLoader(ds, batch_size=None, num_workers=0, **kw)
    return DataLoader(ds, batch_size=None, num_workers=num_workers, multiprocessing_context=context,
                      worker_init_fn=_strict_warnings, **kw)


def row_ids(batches):
    return [b["__row_id__"].numpy().copy() for b in batches]


def id_stream(loader, limit=None):
    out = []
    for b in loader:
        out.append(b["__row_id__"].numpy().copy())
        if limit is not None and len(out) >= limit:
            break
    return out


def planned(ds, epoch, num_workers, rank=None):
    """Global row ids per batch, in DataLoader order, as the epoch plan prescribes."""
    plan = ds.stream.plan(epoch, ds.world_size)
    r = ds.rank if rank is None else rank
    return [ds.stream.row_ids(ids) for ids, _ in plan.rank_stream(r, max(1, num_workers))]


def same_stream(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def flat(batches):
    return np.concatenate(batches) if batches else np.zeros(0, np.int64)


def exactly_once(per_rank, expected=N):
    report = audit_epoch([flat(r) for r in per_rank], expected)
    assert report.exactly_once, str(report)
    return report


def check_full_batch(b, bs):
    """All columns, variable='pad': dtypes, shapes and values against the row ids."""
    rid = b["__row_id__"].numpy()
    n = len(rid)
    assert 0 < n <= bs
    assert set(b) == {"id", "image", "label", "seq", "seq__shape", "score", "score__valid", "emb", "emb__valid",
                      "name", "__row_id__"}
    assert b["__row_id__"].dtype == torch.int64
    assert b["id"].dtype == torch.int64 and np.array_equal(b["id"].numpy(), rid)
    assert b["image"].dtype == torch.uint8 and tuple(b["image"].shape) == (n, 3, 8, 8)
    assert np.array_equal(b["image"].numpy(), image_of(rid))
    assert b["image"].is_contiguous()
    b["image"].add_(1)  # writable memory: in-place augmentation works
    assert b["label"].dtype == torch.int32 and np.array_equal(b["label"].numpy(), rid % 10)
    # variable shape, padded: (n, max rows, 3) plus each row's shape
    assert b["seq"].dtype == torch.float32 and b["seq__shape"].dtype == torch.int64
    assert tuple(b["seq__shape"].shape) == (n, 2)
    assert np.array_equal(b["seq__shape"].numpy(), np.stack([rid % 5, np.full(n, 3)], 1))
    assert tuple(b["seq"].shape) == (n, int((rid % 5).max()), 3)
    for j, i in enumerate(rid):
        padded = b["seq"][j].numpy()
        assert np.array_equal(padded[: i % 5], seq_of(int(i))) and not padded[i % 5:].any()
    # nullable scalar and nullable fixed tensor: values filled with 0 plus __valid
    assert b["score"].dtype == torch.float32 and b["score__valid"].dtype == torch.bool
    valid = rid % 7 != 0
    assert np.array_equal(b["score__valid"].numpy(), valid)
    assert np.array_equal(b["score"].numpy(), np.where(valid, rid * 0.5, 0).astype(np.float32))
    assert b["emb"].dtype == torch.float32 and tuple(b["emb"].shape) == (n, 4)
    valid = rid % 11 != 0
    assert np.array_equal(b["emb__valid"].numpy(), valid)
    assert np.array_equal(b["emb"].numpy(), np.where(valid[:, None], rid[:, None] + np.arange(4.0), 0))
    # strings: a list of str
    assert isinstance(b["name"], list) and b["name"] == [f"row-{i}" for i in rid]


def check_selected_batch(b, variable):
    """columns=["id", "seq", "name"] with remainder='pad', variable 'list' or 'nested'."""
    rid = b["__row_id__"].numpy()
    assert set(b) == {"id", "seq", "name", "__pad__", "__row_id__"}
    assert b["__pad__"].dtype == torch.bool and b["__pad__"].shape == b["id"].shape
    assert np.array_equal(b["id"].numpy(), rid)
    assert b["name"] == [f"row-{i}" for i in rid]
    if variable == "list":
        assert isinstance(b["seq"], list) and len(b["seq"]) == len(rid)
        rows = b["seq"]
    else:
        assert isinstance(b["seq"], torch.Tensor) and b["seq"].is_nested and b["seq"].size(0) == len(rid)
        assert b["seq"].layout == torch.jagged  # only the first dimension varies
        rows = b["seq"].unbind()
    for t, i in zip(rows, rid):
        assert t.dtype == torch.float32 and tuple(t.shape) == (i % 5, 3)
        assert np.array_equal(t.numpy(), seq_of(int(i)))


# -- 1. start methods x worker counts ----------------------------------------------------------------
LOADER_CASES = [(0, None)] + [(nw, ctx) for ctx in ("fork", "spawn", "forkserver") for nw in (1, 2)]


@pytest.mark.parametrize("num_workers, context", LOADER_CASES, ids=[f"{nw}-{c}" for nw, c in LOADER_CASES])
def test_dataloader_workers_and_start_methods(url, num_workers, context):
    # every column, variable="pad", shuffled: each row exactly once, values intact
    ds = TorchDataset(url, batch_size=32, shuffle=True, seed=5, with_row_ids=True)
    assert (ds.rank, ds.world_size) == (0, 1)
    loader = make_loader(ds, num_workers, context)
    batches = list(loader)
    assert len(loader) == len(ds) == len(batches) == -(-N // 32)
    for b in batches:
        check_full_batch(b, 32)
    exactly_once([row_ids(batches)])
    assert same_stream(row_ids(batches), planned(ds, 0, num_workers))

    # columns + filter + predicate, balanced over a world of 2 with padding; the variable-shape
    # field as a list of tensors on rank 0 and as a nested tensor on rank 1
    expected = selected_ids()
    ids, pads, counts = [], [], []
    for rank, variable in ((0, "list"), (1, "nested")):
        ds = TorchDataset(url, columns=["id", "seq", "name"], filter=FILTER, predicate=PREDICATE, batch_size=16,
                          shuffle=True, seed=5, remainder="pad", rank=rank, world_size=2, variable=variable,
                          with_row_ids=True)
        loader = make_loader(ds, num_workers, context)
        batches = list(loader)
        assert len(loader) == len(ds) == len(batches)
        for b in batches:
            check_selected_batch(b, variable)
        ids.append(flat(row_ids(batches)))
        pads.append(np.concatenate([b["__pad__"].numpy() for b in batches]))
        counts.append(len(batches))
    report = audit_epoch(ids, expected, pads)
    assert report.exactly_once and report.balanced, str(report)
    # balanced after filtering: each rank gets ceil(selected / 2) rows
    assert report.per_rank == (-(-len(expected) // 2),) * 2 and report.padded == len(expected) % 2
    assert counts[0] == counts[1]


def test_in_process_batches_are_private_and_writable(url):
    # in-process, consecutive rows are sliced out of one decode per read (not decoded per batch):
    # a write to one batch must reach neither the batches beside it nor the next epoch
    ds = TorchDataset(url, batch_size=48, with_row_ids=True)
    first = list(ds)
    for b in first:
        for k in ("id", "label", "score", "emb"):
            b[k].add_(1)
    for b in list(ds):
        check_full_batch(b, 48)
    for b in first:
        rid = b["__row_id__"].numpy()
        assert np.array_equal(b["id"].numpy(), rid + 1)
        assert np.array_equal(b["label"].numpy(), rid % 10 + 1)


def test_worker_hand_off_forms():
    # what a worker's batch becomes on the way to the main process: small dense tensors travel by
    # value in the pickle (no shared-memory block, no descriptor passing), larger ones in ONE
    # shared block; both arrive as writable tensors with the values sent
    from multiprocessing.reduction import ForkingPickler

    from tensorstore_fs.readers._torch_handoff import INLINE_BYTES, share_batch

    small = {"id": torch.arange(256), "label": torch.arange(256, dtype=torch.int32) % 10, "name": ["a"] * 256}
    sent = share_batch(small)
    assert sent["name"] is small["name"]
    assert not any(isinstance(v, torch.Tensor) for k, v in sent.items() if k != "name")
    got = ForkingPickler.loads(ForkingPickler.dumps(sent))
    for k in ("id", "label"):
        assert isinstance(got[k], torch.Tensor) and not got[k].is_shared()
        assert got[k].dtype == small[k].dtype and torch.equal(got[k], small[k])
        got[k][0] = 7  # writable, and the worker's tensor is untouched
    assert small["id"][0] == 0

    rows = INLINE_BYTES // 64 + 1  # just over the inline limit in all
    big = {"image": torch.arange(rows * 64, dtype=torch.int64).reshape(rows, 64).to(torch.uint8),
           "label": torch.arange(rows)}

    def check(got):
        assert torch.equal(got["image"], big["image"]) and torch.equal(got["label"], big["label"])
        assert all(v.data_ptr() % 64 == 0 for v in got.values())

    # with a shared ring (Linux): the dense tensors share one slot, attached once per batch
    from tensorstore_fs.readers import _ring
    if _ring.available():
        got = ForkingPickler.loads(ForkingPickler.dumps(share_batch(big)))
        check(got)
        owners = [o for o in _ring._owners.values() if np.shares_memory(o, got["image"].numpy())]
        assert len(owners) == 1 and np.shares_memory(owners[0], got["label"].numpy())  # one slot, both tensors
        got["label"][0] = 5  # writable
        del got

    # without one: ONE torch shared-memory block for the batch
    import tensorstore_fs.readers.torch as tmod
    saved = tmod._ring.available
    tmod._ring.available = lambda: False
    try:
        shared = share_batch(big)
    finally:
        tmod._ring.available = saved
    assert all(v.is_shared() for v in shared.values())
    assert shared["image"].untyped_storage().data_ptr() == shared["label"].untyped_storage().data_ptr()
    check(shared)


# -- 2. order: deterministic, per epoch, persistent workers vs set_epoch -----------------------------
def test_stream_order_and_epochs(url):
    kw = dict(batch_size=10, shuffle=True, seed=7, with_row_ids=True)
    assert TorchDataset(url, **kw).spec.window_rows > 10  # several batches per window (shuffle buffer)
    streams = {}
    for nw in (0, 1, 2):
        a = id_stream(make_loader(TorchDataset(url, **kw), nw))
        b = id_stream(make_loader(TorchDataset(url, **kw), nw))
        assert same_stream(a, b), nw  # same seed, same workers: same order on every run
        assert same_stream(a, planned(TorchDataset(url, **kw), 0, nw))
        exactly_once([a])
        streams[nw] = a
    assert same_stream(streams[0], streams[1])
    other_seed = id_stream(make_loader(TorchDataset(url, **{**kw, "seed": 8}), 1))
    assert not same_stream(other_seed, streams[1])
    exactly_once([other_seed])

    # persistent workers advance the epoch by themselves
    per_workers = {}
    for nw in (1, 2):
        ds = TorchDataset(url, **kw)
        loader = make_loader(ds, nw, persistent_workers=True)
        epochs = [id_stream(loader) for _ in range(3)]
        for e, s in enumerate(epochs):
            exactly_once([s])
            assert same_stream(s, planned(ds, e, nw)), (nw, e)
            assert len(s) == len(loader)
        assert not same_stream(epochs[0], epochs[1]) and not same_stream(epochs[1], epochs[2])
        assert not np.array_equal(flat(epochs[0]), flat(epochs[2]))
        per_workers[nw] = epochs
    assert same_stream(per_workers[1][0], streams[1])

    # without persistent workers: set_epoch(e) on the dataset object gives persistent epoch e
    ds = TorchDataset(url, **kw)
    loader = make_loader(ds, 2)
    for e in (2, 0, 1):
        ds.set_epoch(e)
        assert same_stream(id_stream(loader), per_workers[2][e]), e
    assert same_stream(id_stream(loader), per_workers[2][2])  # no set_epoch: the pass after epoch 1 (issue 17)

    # num_workers=0 iterates in this process and advances by itself
    ds = TorchDataset(url, **kw)
    loader = make_loader(ds, 0)
    for e in range(3):
        assert ds.epoch == e
        assert same_stream(id_stream(loader), per_workers[1][e]), e
    assert ds.epoch == 3

    # num_epochs=2: one iteration covers two consecutive epochs. In this process they follow each
    # other; with workers, a worker that finishes its share of epoch 0 first starts its share of
    # epoch 1 while the other still reads epoch 0 (round-robin), so only the multiset is fixed.
    ds = TorchDataset(url, num_epochs=2, **kw)
    s = id_stream(make_loader(ds, 0))
    assert same_stream(s, per_workers[1][0] + per_workers[1][1])
    ds = TorchDataset(url, num_epochs=2, **kw)
    loader = make_loader(ds, 2)
    s = id_stream(loader)
    assert len(loader) == len(s) == 2 * len(per_workers[2][0])
    assert np.array_equal(np.sort(flat(s)), np.repeat(np.arange(N), 2))
    assert same_stream(s, id_stream(make_loader(TorchDataset(url, num_epochs=2, **kw), 2)))  # still deterministic


# -- 3. a real distributed world ---------------------------------------------------------------------
DIST_WORLD = 3
DIST_BATCH = 16


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_rank(rank, world_size, port, url, out_dir):
    """One rank: detect the world from torch.distributed, read every remainder policy, all-gather
    the row ids, audit on rank 0. Writes rank<k>.json (or the traceback) to out_dir."""
    import torch.distributed as dist

    out = Path(out_dir) / f"rank{rank}.json"
    result = {"ok": False}
    try:
        warnings.simplefilter("error")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=60))
        result["audits"] = {}
        for remainder in ("drop", "pad", "uneven"):
            ds = TorchDataset(url, batch_size=DIST_BATCH, shuffle=True, seed=3, remainder=remainder,
                              with_row_ids=True)
            assert (ds.rank, ds.world_size) == (rank, world_size), (ds.rank, ds.world_size)
            # fork as under torchrun: a spawned process's default start method is spawn (slow here)
            loader = make_loader(ds, 2, "fork")
            ids, pads, n = [], [], 0
            for b in loader:
                ids.append(b["__row_id__"].numpy().copy())
                if remainder == "pad":
                    pads.append(b["__pad__"].numpy().copy())
                n += 1
            mine = {"ids": flat(ids), "pads": np.concatenate(pads) if pads else None, "batches": n,
                    "len": len(loader), "planned": flat(planned(ds, 0, 2))}
            gathered = [None] * world_size
            dist.all_gather_object(gathered, mine)
            if rank == 0:
                if remainder == "drop":  # the last N % world rows of the epoch sequence are dropped
                    plan = ds.stream.plan(0, world_size)
                    seq = ds.stream.row_ids(plan.sequence.all_ids())
                    expected = seq[: len(seq) // world_size * world_size]
                else:
                    expected = N
                report = audit_epoch([g["ids"] for g in gathered], expected,
                                     [g["pads"] for g in gathered] if remainder == "pad" else None)
                result["audits"][remainder] = {
                    "exactly_once": report.exactly_once,
                    "balanced": report.balanced,
                    "report": str(report),
                    "per_rank_rows": list(report.per_rank),
                    "padded": report.padded,
                    "missing_vs_all": int(len(np.setdiff1d(np.arange(N), flat([g["ids"] for g in gathered])))),
                    "batches": [g["batches"] for g in gathered],
                    "lens": [g["len"] for g in gathered],
                    "as_planned": [bool(np.array_equal(g["ids"], g["planned"])) for g in gathered],
                }
            dist.barrier()
        result["ok"] = True
    except BaseException:
        result["error"] = traceback.format_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        out.write_text(json.dumps(result))


def test_distributed_gloo_world_of_three(url, tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_dist_rank, args=(r, DIST_WORLD, port, url, str(tmp_path))) for r in range(DIST_WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 180  # a hang fails the test instead of blocking it
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        assert not hung, f"ranks {hung} did not finish in time"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(DIST_WORLD)]
    for r, res in enumerate(results):
        assert res["ok"], f"rank {r} failed:\n{res.get('error')}"
        assert procs[r].exitcode == 0
    audits = results[0]["audits"]
    for remainder, a in audits.items():
        assert a["exactly_once"], (remainder, a["report"])
        assert a["lens"] == a["batches"], remainder  # len(loader) == batches received, on every rank
        assert all(a["as_planned"]), remainder
    q, rem = divmod(N, DIST_WORLD)
    assert audits["drop"]["per_rank_rows"] == [q] * DIST_WORLD and audits["drop"]["missing_vs_all"] == rem
    assert audits["pad"]["per_rank_rows"] == [q + 1] * DIST_WORLD and audits["pad"]["padded"] == DIST_WORLD - rem
    assert audits["uneven"]["per_rank_rows"] == [q + (r < rem) for r in range(DIST_WORLD)]
    for remainder in ("drop", "pad"):  # equal batch counts: no rank waits for a collective that never comes
        assert audits[remainder]["balanced"] and len(set(audits[remainder]["batches"])) == 1, remainder
    assert max(audits["uneven"]["batches"]) - min(audits["uneven"]["batches"]) <= 1


# -- 4. resume -----------------------------------------------------------------------------------------
def _ks(n, extra=3, seed=0):
    """0, the last batch, the one before, and a few random stopping points."""
    rng = np.random.default_rng(seed)
    return sorted({0, 1, n - 1, n, *(int(k) for k in rng.integers(1, n, extra))})


def _roundtrip(state):
    return json.loads(json.dumps(state))  # states are JSON-ready


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_same_world_num_workers_0(url, shuffle):
    kw = dict(batch_size=10, shuffle=shuffle, seed=4, world_size=2, with_row_ids=True)
    for rank in range(2):
        full = id_stream(TorchDataset(url, rank=rank, **kw))
        n = len(full)
        for k in _ks(n, seed=rank):
            ds = TorchDataset(url, rank=rank, **kw)
            it = iter(make_loader(ds, 0))
            head = [next(it)["__row_id__"].numpy().copy() for _ in range(k)]
            assert same_stream(head, full[:k])
            state = _roundtrip(ds.state_dict())
            assert state["consumed_batches"] == k
            ds2 = TorchDataset(url, rank=rank, **kw)
            ds2.load_state_dict(state)
            assert len(ds2) == n - k
            rest = id_stream(make_loader(ds2, 0))
            assert len(rest) == n - k
            # batch for batch the uninterrupted stream (so every row of the epoch exactly once)
            assert same_stream(rest, full[k:]), (rank, k)
            assert np.array_equal(np.sort(flat(head + rest)), np.sort(flat(full))), (rank, k)


RESUME_KW = dict(batch_size=10, shuffle=True, seed=9, remainder="uneven", with_row_ids=True)


def _rank_streams(url, world, num_workers, state=None):
    """Per rank: (dataset object, loader batches) of a world restored from ``state``."""
    out = []
    for rank in range(world):
        ds = TorchDataset(url, rank=rank, world_size=world, **RESUME_KW)
        if state is not None:
            ds.load_state_dict(_roundtrip(state))
        loader = make_loader(ds, num_workers)
        n = len(ds)
        assert len(loader) == n  # before iterating: with num_workers=0 the dataset advances to the next epoch
        s = id_stream(loader)
        assert len(s) == n
        out.append((ds, s))
    return out


def test_resume_across_world_sizes_and_worker_counts(url):
    # the uninterrupted run: world 2 x 2 workers
    full = [s for _, s in _rank_streams(url, 2, 2)]
    exactly_once(full)
    n = max(len(s) for s in full)
    chained_done = 0
    for k in _ks(n, extra=2, seed=1):
        # stop after k loader batches on each rank (a real break out of the loop), save per rank
        states = []
        for rank in range(2):
            ds = TorchDataset(url, rank=rank, world_size=2, **RESUME_KW)
            head = id_stream(make_loader(ds, 2), limit=k) if k else []
            assert same_stream(head, full[rank][:k])
            states.append(ds.state_dict(consumed_batches=k, num_workers=2))
        assert states[0] == states[1]  # a rank-level state does not depend on the rank
        consumed = [s[:k] for s in full]
        for world, nw in ((3, 1), (1, 2), (2, 0), (2, 2)):
            restored = _rank_streams(url, world, nw, states[0])
            exactly_once(consumed + [s for _, s in restored])
            if (world, nw) == (2, 2):  # the same shape continues the interrupted stream exactly
                for r in range(2):
                    assert same_stream(restored[r][1], full[r][k:]), (k, r)
            if (world, nw) == (3, 1) and 0 < k < n and chained_done < 2:
                # a second interruption inside the resumed epoch (chained history), restored into three shapes
                chained_done += 1
                k2 = max(1, min(len(s) for _, s in restored) // 2)
                states2 = [ds.state_dict(consumed_batches=k2, num_workers=1) for ds, _ in restored]
                assert states2[0] == states2[1] == states2[2] and len(states2[0]["history"]) == 1
                consumed2 = [s[:k2] for _, s in restored]
                for world3, nw3 in ((1, 2), (2, 0), (3, 1)):
                    rest = [s for _, s in _rank_streams(url, world3, nw3, states2[0])]
                    exactly_once(consumed + consumed2 + rest)
                    if (world3, nw3) == (3, 1):
                        for r in range(3):
                            assert same_stream(rest[r], restored[r][1][k2:]), (k, k2, r)
    assert chained_done == 2


def test_resume_twice_with_workers_same_shape(url):
    """Found in review: a rank-level state saved after resuming (iteration ran in DataLoader
    workers) counts from the resume point, so a second resume still continues exactly."""
    kw = dict(RESUME_KW, rank=1, world_size=2)
    full = id_stream(make_loader(TorchDataset(url, **kw), 2))
    seen, state = [], None
    for k in (6, 9):
        ds = TorchDataset(url, **kw)
        if state is not None:
            ds.load_state_dict(state)
        seen += id_stream(make_loader(ds, 2), limit=k)
        state = _roundtrip(ds.state_dict(consumed_batches=k, num_workers=2))
    assert state["history"] == [] and state["consumed_batches"] == 15
    ds = TorchDataset(url, **kw)
    ds.load_state_dict(state)
    assert same_stream(seen + id_stream(make_loader(ds, 2)), full)


def test_resume_chained_in_process(url):
    """num_workers=0, self-counted states: three interruptions in one epoch, then the next epoch."""
    kw = dict(RESUME_KW, rank=0, world_size=1)
    full = id_stream(TorchDataset(url, **kw))
    seen, state = [], None
    for k in (7, 0, 11, 5):
        ds = TorchDataset(url, **kw)
        if state is not None:
            ds.load_state_dict(state)
        it = iter(ds)
        seen += [next(it)["__row_id__"].numpy().copy() for _ in range(k)]
        state = _roundtrip(ds.state_dict())
    ds = TorchDataset(url, **kw)
    ds.load_state_dict(state)
    assert len(ds) == len(full) - len(seen)
    rest = id_stream(ds)
    exactly_once([seen + rest])
    assert same_stream(seen + rest, full)  # same world, same worker count: the uninterrupted stream
    # the epoch was read to its end: the saved state starts the next epoch afresh
    state = _roundtrip(ds.state_dict())
    assert (state["epoch"], state["history"], state["consumed_batches"]) == (1, [], 0)
    ds2 = TorchDataset(url, **kw)
    ds2.load_state_dict(state)
    assert same_stream(id_stream(ds2), planned(ds2, 1, 1))


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch >= 2.9
def test_resume_stateful_dataloader(url):
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    kw = dict(batch_size=10, shuffle=True, seed=2, with_row_ids=True)

    def loader(**extra):
        return sdl.StatefulDataLoader(TorchDataset(url, **kw), batch_size=None, num_workers=2,
                                      multiprocessing_context="fork", worker_init_fn=_strict_warnings, **extra)

    full = id_stream(loader())
    assert same_stream(full, planned(TorchDataset(url, **kw), 0, 2))
    n = len(full)
    # n - 1 and n: one worker already exhausted its share while the other still reads
    for k in _ks(n, extra=2, seed=2):
        ld = loader()
        it = iter(ld)
        head = [next(it)["__row_id__"].numpy().copy() for _ in range(k)]
        state = copy.deepcopy(ld.state_dict())
        del it, ld
        ld2 = loader()
        ld2.load_state_dict(state)
        rest = id_stream(ld2)
        assert same_stream(head, full[:k]) and same_stream(rest, full[k:]), k

    # a state saved at the end of an epoch: persistent workers continue with the next epoch
    ld = loader(persistent_workers=True)
    assert same_stream(id_stream(ld), full)
    state = copy.deepcopy(ld.state_dict())
    ld2 = loader(persistent_workers=True)
    ld2.load_state_dict(state)
    nxt = id_stream(ld2)
    assert same_stream(nxt, planned(TorchDataset(url, **kw), 1, 2))
    exactly_once([nxt])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_dataloader_that_would_batch_the_batches_again_is_refused(url, num_workers):
    # DataLoader(TorchDataset(...)) without batch_size=None stacked batches into an extra leading
    # dimension ((1, 16, ...) with the DataLoader's default batch_size=1), silently
    for kw in ({}, {"batch_size": 4}):
        loader = DataLoader(TorchDataset(url, batch_size=16), num_workers=num_workers, **kw)
        with pytest.raises(tsfs.InvalidArgumentError, match=r"about to stack \d+ TorchDataset batches into one: .* "
                                                           r"create the DataLoader with batch_size=None"):
            next(iter(loader))
    batch = next(iter(DataLoader(TorchDataset(url, batch_size=16), batch_size=None, num_workers=num_workers)))
    assert isinstance(batch, dict) and batch["id"].shape == (16,)


def test_column_arguments_are_checked_like_the_scanners(url):
    # a column name as a bare string was read letter by letter ("unknown column 'i'")
    for columns, match in (("id", "columns must be a list of field names, got the string 'id'"),
                           ([], "columns must name at least one field"), (["nope"], "unknown column 'nope'")):
        with pytest.raises(tsfs.InvalidArgumentError, match=match):
            TorchDataset(url, columns=columns)


def test_resume_rejects_bad_states(url, tmp_path):
    path = str(tmp_path / "small")
    tsfs.write_dataset(path, columns_of(np.arange(100)), SCHEMA, row_group_bytes=3000)
    kw = dict(batch_size=8, shuffle=True, seed=1)
    ds = TorchDataset(path, **kw)
    it = iter(ds)
    next(it)
    next(it)
    good = _roundtrip(ds.state_dict())
    TorchDataset(path, **kw).load_state_dict(good)  # sanity: the good state loads

    tsfs.write_dataset(path, columns_of(np.arange(100, 120)), mode="append")
    with pytest.raises(tsfs.InvalidArgumentError, match="version"):
        TorchDataset(path, **kw).load_state_dict(good)
    TorchDataset(path, version=1, **kw).load_state_dict(good)  # pinned to the saved version: fine

    for change in (dict(batch_size=16), dict(seed=2), dict(shuffle=False), dict(remainder="pad"), dict(drop_last=True)):
        with pytest.raises(tsfs.InvalidArgumentError):
            TorchDataset(path, version=1, **{**kw, **change}).load_state_dict(good)

    def broken(**changes):
        s = copy.deepcopy(good)
        for key, value in changes.items():
            if value is KeyError:
                del s[key]
            else:
                s[key] = value
        return s

    garbage = [None, "state", [1, 2], {}, {"format": "something else"}, broken(format_version=99),
               broken(spec=None), broken(spec={"batch_size": 8, "nonsense": 1}), broken(spec=KeyError),
               broken(epoch=-1), broken(epoch="0"), broken(epoch=1.5), broken(epoch=KeyError),
               broken(history="abc"), broken(history=[[1]]), broken(history=[[0, 1, 1]]), broken(history=KeyError),
               broken(consumed_batches=-1), broken(consumed_batches="2"), broken(consumed_batches=KeyError),
               broken(world_size=0), broken(num_workers=KeyError), broken(dataset_version=KeyError),
               broken(worker=0), broken(worker=1, worker_batches=3)]  # a worker state in the main process
    for bad in garbage:
        reader = TorchDataset(path, version=1, **kw)
        before = reader.state_dict()
        with pytest.raises(tsfs.InvalidArgumentError):
            reader.load_state_dict(bad)
        assert reader.state_dict() == before, bad  # a rejected state changes nothing


# -- 5. memory over epochs -------------------------------------------------------------------------------
def _rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
def test_memory_flat_across_epochs(tmp_path):
    rows, shape = 6400, (4, 64, 64)  # 16 KiB per row: ~105 MB
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("image", "uint8", shape)])
    path = str(tmp_path / "big")

    def chunks():
        for s in range(0, rows, 800):
            ids = np.arange(s, s + 800)
            yield {"id": ids, "image": np.broadcast_to((ids % 251).astype(np.uint8)[:, None, None, None], (800, *shape))}

    ds = tsfs.write_dataset(path, chunks(), schema, row_group_bytes=2 * 2**20, shard_bytes=16 * 2**20)
    assert ds.nbytes > 100e6 and len(ds.shards) >= 6
    tds = TorchDataset(path, batch_size=64, shuffle=True, seed=0, with_row_ids=True)
    loader = make_loader(tds, 0)
    rss = {}
    for epoch in range(1, 7):
        ids = []
        for b in loader:
            rid = b["__row_id__"].numpy()
            assert np.array_equal(b["image"][:, 0, 0, 0].numpy(), rid % 251)
            ids.append(rid.copy())
        exactly_once([ids], rows)
        del b
        gc.collect()
        rss[epoch] = _rss_mb()
    assert tds.epoch == 6
    assert rss[6] - rss[2] < 50, rss


def test_nested_jagged_batches_come_from_flat_values(tmp_path, monkeypatch):
    # variable="nested": a field whose only variable dimension is the first becomes one jagged
    # nested tensor built from the batch's flat values and offsets (no tensor per row), in-process
    # and shuffled alike; a field with null rows stays a list (None where the row is null)
    n = 300
    rng = np.random.default_rng(8)
    toks = [np.arange(int(rng.integers(0, 12)), dtype=np.int32) + i for i in range(n)]
    opt = [None if i % 9 == 0 else np.full((i % 3, 2), i, np.float32) for i in range(n)]
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("toks", "int32", (None,)),
                          tsfs.Field("opt", "float32", (None, 2), nullable=True)])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(n), "toks": toks, "opt": opt}, schema,
                            row_group_bytes=2000)
    import tensorstore_fs.readers.torch as reader_module

    built = []
    real = reader_module._jagged_tensor
    monkeypatch.setattr(reader_module, "_jagged_tensor", lambda rows: built.append(len(rows)) or real(rows))
    for shuffle in (False, True):
        seen = []
        for b in TorchDataset(ds, batch_size=32, shuffle=shuffle, seed=1, variable="nested"):
            ids = b["id"].numpy()
            t = b["toks"]
            assert t.is_nested and t.layout == torch.jagged and t.size(0) == len(ids)
            lengths = np.array([len(toks[i]) for i in ids])
            assert np.array_equal(t.offsets().numpy(), np.concatenate([[0], np.cumsum(lengths)]))
            assert np.array_equal(t.values().numpy(), np.concatenate([toks[i] for i in ids]))
            t.values().add_(1)  # private, writable values: the next epoch is untouched
            assert isinstance(b["opt"], list)
            for r, i in zip(b["opt"], ids):
                assert (r is None) == (i % 9 == 0)
                assert r is None or np.array_equal(r.numpy(), opt[i])
            seen.extend(ids.tolist())
        assert sorted(seen) == list(range(n))
        assert sum(built) == n  # every batch's toks went through the flat path
        built.clear()


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_flat_variable_batches(tmp_path, num_workers, shuffle):
    # variable="flat": values back to back plus offsets from 0 (cu_seqlens), per-row shapes and,
    # for a nullable field, __valid; in-process and through 2 forked workers, shuffled (gathered)
    # and in order (decoded once per read and sliced; batches spanning two shard files joined)
    n = 400
    rng = np.random.default_rng(4)
    toks = [np.arange(int(rng.integers(0, 20)), dtype=np.int32) + 1000 * i for i in range(n)]
    opt = [None if i % 6 == 0 else np.full((i % 4, 2), i, np.float32) for i in range(n)]
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("toks", "int32", (None,)),
                          tsfs.Field("opt", "float32", (None, 2), nullable=True)])
    ds = tsfs.write_dataset(str(tmp_path / "ds"), {"id": np.arange(n), "toks": toks, "opt": opt}, schema,
                            row_group_bytes=3000, shard_bytes=9000)
    assert len(ds.shards) > 2 and any(s.rows % 48 for s in ds.shards)  # some batch spans two files
    tds = TorchDataset(str(tmp_path / "ds"), batch_size=48, shuffle=shuffle, seed=3, variable="flat")
    loader = make_loader(tds, num_workers, "fork" if num_workers else None)
    seen = []
    for b in loader:
        ids = b["id"].numpy()
        assert set(b) == {"id", "toks", "toks__offsets", "toks__shape", "opt", "opt__offsets", "opt__shape",
                          "opt__valid"}
        offs = b["toks__offsets"].numpy()
        assert offs[0] == 0 and len(offs) == len(ids) + 1 and b["toks"].dtype == torch.int32
        for j, i in enumerate(ids):
            assert np.array_equal(b["toks"].numpy()[offs[j]:offs[j + 1]], toks[i])
            assert tuple(b["toks__shape"][j].tolist()) == toks[i].shape
        valid = b["opt__valid"].numpy()
        assert np.array_equal(valid, ids % 6 != 0)
        o = b["opt__offsets"].numpy()
        for j, i in enumerate(ids):
            shape = tuple(b["opt__shape"][j].tolist())
            got = b["opt"].numpy()[o[j]:o[j + 1]].reshape(shape)
            assert np.array_equal(got, opt[i]) if opt[i] is not None else (got.size == 0 and shape == (0, 0))
        b["toks"].add_(1)  # writable, private
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(n))
