"""File-located tensor rows (tensorstore_fs.filemap): DataLoader workers send where rows are, the
main process maps or gathers them. Values must equal the copied path exactly; writes must never
reach the file or another batch."""

from __future__ import annotations

import gc
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import tensorstore_fs as tsfs
from tensorstore_fs.parquet.filemap import FileRows
from tensorstore_fs.readers._torch_handoff import FileTensor
from tensorstore_fs.readers.torch import TorchDataset

N = 700


def image_of(ids):
    ids = np.asarray(ids)
    return ((ids[:, None] * 13 + np.arange(2 * 6 * 6)) % 251).astype(np.uint8).reshape(-1, 2, 6, 6)


def emb_of(ids):
    return (np.asarray(ids)[:, None] + np.arange(5) / 8).astype(np.float32)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("filemap") / "ds")
    ids = np.arange(N)
    tsfs.write_dataset(path, {"id": ids, "image": image_of(ids), "emb": emb_of(ids),
                              "mask": (image_of(ids) > 100), "maybe": np.ma.MaskedArray(emb_of(ids), mask=False)},
                       tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("image", "uint8", (2, 6, 6)),
                                    tsfs.Field("emb", "float32", (5,)), tsfs.Field("mask", "bool", (2, 6, 6)),
                                    tsfs.Field("maybe", "float32", (5,), nullable=True)]),
                       row_group_bytes=6000, shard_bytes=30000)
    return path


def stream_batches(url, shuffle):
    t = TorchDataset(url, batch_size=32, shuffle=shuffle, seed=3)
    plan = t.stream.plan(0, 1)
    return list(t.stream.iter_worker(plan, 0, 0, 1, located="rows"))


@pytest.mark.parametrize("shuffle", [False, True])
def test_located_rows_equal_the_data(url, shuffle):
    seen = []
    for b in stream_batches(url, shuffle):
        assert isinstance(b["image"], FileRows) and isinstance(b["emb"], FileRows)
        # bool tensors are bit-packed and nullable ones carry validity: those are decoded as usual
        assert not isinstance(b["mask"], FileRows) and not isinstance(b["maybe"], FileRows)
        ids = b["id"]
        img = b["image"].materialize()
        np.testing.assert_array_equal(img, image_of(ids))
        np.testing.assert_array_equal(b["emb"].materialize(), emb_of(ids))
        assert img.flags.writeable
        seen.append(ids)
    assert sorted(np.concatenate(seen).tolist()) == list(range(N))


def test_contiguous_rows_are_private_copy_on_write_maps(url):
    batches = stream_batches(url, shuffle=False)
    rows = batches[1]["image"]
    assert rows.is_contiguous()
    first = rows.materialize()
    first[:] = 0  # in-place augmentation: copy-on-write, private to this array
    again = rows.materialize()
    np.testing.assert_array_equal(again, image_of(batches[1]["id"]))
    fresh = np.concatenate([b["image"] for b in tsfs.open_dataset(url).to_batches(columns=["image"])])
    np.testing.assert_array_equal(fresh, image_of(np.arange(N)))  # the file never changed


def test_gathered_rows_recycle_only_released_arrays(url):
    batches = [b for b in stream_batches(url, shuffle=True) if not b["image"].is_contiguous()]
    assert len(batches) >= 3
    kept = [torch.from_numpy(b["image"].materialize()) for b in batches]
    for b, t in zip(batches, kept):  # all alive at once: no array was handed out twice
        np.testing.assert_array_equal(t.numpy(), image_of(b["id"]))


def test_file_tensor_pickles_as_a_tensor(url):
    rows = stream_batches(url, shuffle=True)[0]["emb"]
    payload = pickle.dumps(FileTensor(rows))
    assert len(payload) < 2000
    t = pickle.loads(payload)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), rows.materialize())


@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_workers_deliver_the_same_batches(url, shuffle):
    def epochs(file_backed):
        loader = DataLoader(TorchDataset(url, batch_size=32, shuffle=shuffle, seed=5, file_backed=file_backed),
                            batch_size=None, num_workers=2, persistent_workers=True)
        out = []
        for _ in range(2):
            batches = list(loader)
            for b in batches:
                b["image"].add_(1)  # training code augmenting in place must not affect the next epoch
            out.append(batches)
        return out

    mapped, copied = epochs(True), epochs(False)
    for a_epoch, b_epoch in zip(mapped, copied):
        assert len(a_epoch) == len(b_epoch)
        for a, b in zip(a_epoch, b_epoch):
            for key in ("id", "image", "emb", "mask", "maybe"):
                assert torch.equal(a[key], b[key]), key
            np.testing.assert_array_equal(a["image"].numpy(), image_of(a["id"].numpy()) + 1)


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_in_process_batches_are_private_views(url, remainder):
    """num_workers=0: consecutive rows are views of a private map (no copy); in-place writes stay
    in the batch — the next epoch and padded repeats see the file's values."""
    ds = TorchDataset(url, batch_size=48, remainder=remainder, world_size=3, rank=2, num_epochs=2)
    batches = list(ds)
    assert len(batches) == 2 * len(ds) // 2
    for b in batches:
        np.testing.assert_array_equal(b["image"].numpy(), image_of(b["id"].numpy()))
        np.testing.assert_array_equal(b["emb"].numpy(), emb_of(b["id"].numpy()))
        b["image"].zero_()
        b["emb"].mul_(-1)
    for b in ds:  # next epoch through the same object: fresh maps
        np.testing.assert_array_equal(b["image"].numpy(), image_of(b["id"].numpy()))
        np.testing.assert_array_equal(b["emb"].numpy(), emb_of(b["id"].numpy()))
    fresh = np.concatenate([b["image"] for b in tsfs.open_dataset(url).to_batches(columns=["image"])])
    np.testing.assert_array_equal(fresh, image_of(np.arange(N)))


@pytest.mark.parametrize("workers", [0, 2])
def test_row_groups_stored_otherwise_mid_run_are_decoded(tmp_path, workers):
    # shards appended with compressed tensors cannot be mapped: a sequential run that starts in
    # mapped shards and reaches them decodes those batches (columns are located per batch)
    path = str(tmp_path / "ds")
    ids = np.arange(N)
    schema = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("image", "uint8", (2, 6, 6))])
    tsfs.write_dataset(path, {"id": ids[:400], "image": image_of(ids[:400])}, schema,
                       row_group_bytes=6000, shard_bytes=30000)
    tsfs.write_dataset(path, {"id": ids[400:], "image": image_of(ids[400:])}, mode="append",
                       row_group_bytes=6000, shard_bytes=30000, compression="zstd")
    loader = DataLoader(TorchDataset(path, batch_size=48), batch_size=None, num_workers=workers)
    batches = list(loader)
    got = torch.cat([b["id"] for b in batches]).numpy()
    assert sorted(got.tolist()) == list(range(N))
    for b in batches:
        np.testing.assert_array_equal(b["image"].numpy(), image_of(b["id"].numpy()))


# -- shared rings: workers gather shuffled rows, the main process views them in place -------------
def test_ring_slot_is_reused_only_after_every_reference_is_gone(url):
    # one process plays both sides: gather into a ring slot, pickle as a worker would, unpickle
    # as the main process does
    from multiprocessing.reduction import ForkingPickler

    from tensorstore_fs.readers import _ring
    from tensorstore_fs.readers._torch_handoff import _SlotTensor

    if not _ring.available():
        pytest.skip("no memfd_create on this platform")
    shuffled = [b["image"] for b in stream_batches(url, True)]
    rows = next(r for r in shuffled if not r.is_contiguous())
    sent = _ring.gather_to_ring("test-image", rows)
    ring, slot = sent.ring, sent.slot
    assert ring.state[slot] == 1
    first = ForkingPickler.loads(ForkingPickler.dumps(_SlotTensor(sent)))  # carries the ring's descriptor
    assert ring.state[_ring.RING_SLOTS] == 1  # the "main process" has mapped it: no more descriptors
    np.testing.assert_array_equal(first.numpy(), rows.materialize())
    assert first.numpy().flags.writeable
    view = first[1:, 0]
    arr = view.numpy()[::2]
    pid = os.fork()
    if pid == 0:  # a forked child dropping its copies must not free the parent's slot
        del first, view, arr
        gc.collect()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert ring.state[slot] == 1
    del first
    assert ring.state[slot] == 1  # still viewed (a torch view and a numpy view of it)
    del view
    assert ring.state[slot] == 1
    del arr
    assert ring.state[slot] == 0  # given back the moment its last view went

    # later batches carry no descriptor and reuse the freed slot
    again = _ring.gather_to_ring("test-image", rows)
    assert again.slot == slot and again.location()[2] is None
    got = ForkingPickler.loads(ForkingPickler.dumps(_SlotTensor(again)))
    np.testing.assert_array_equal(got.numpy(), rows.materialize())
    del got
    assert ring.state[slot] == 0


@pytest.mark.parametrize("persistent", [False, True])
def test_rings_under_a_dataloader_keep_held_batches_intact(url, persistent):
    # a consumer that keeps every batch of two shuffled epochs: workers run out of free slots and
    # fall back to file locations; nothing a consumer holds is ever overwritten
    from tensorstore_fs.readers import _ring

    if not _ring.available():
        pytest.skip("no memfd_create on this platform")
    loader = DataLoader(TorchDataset(url, batch_size=16, shuffle=True, seed=9), batch_size=None, num_workers=2,
                        persistent_workers=persistent)
    kept = [list(loader) for _ in range(2)]
    assert _ring._rings, "no batch came through a ring"
    for epoch in kept:
        ids = torch.cat([b["id"] for b in epoch]).numpy()
        assert sorted(ids.tolist()) == list(range(N))
        for b in epoch:
            np.testing.assert_array_equal(b["image"].numpy(), image_of(b["id"].numpy()))
            np.testing.assert_array_equal(b["emb"].numpy(), emb_of(b["id"].numpy()))
    del kept, epoch, b
    gc.collect()
    # every slot is free again the moment its batch is dropped, so workers use their rings again
    assert all(not r.state[:_ring.RING_SLOTS].any() for r in _ring._rings.values())
    del loader
    # later loaders' first rings drop the rings of workers that have exited
    for _ in range(3):
        for _ in DataLoader(TorchDataset(url, batch_size=16, shuffle=True, seed=9), batch_size=None, num_workers=2):
            pass
    assert len(_ring._rings) <= 2 * 2 * 2  # two loaders at most (2 workers x 2 gathered columns): the rest were dropped


@pytest.mark.parametrize("shuffle", [False, True])
def test_large_decoded_batches_travel_through_the_ring(tmp_path, shuffle):
    # variable-length rows padded per batch (not file-located): each batch is well over the
    # inline limit, so workers copy it into a slot of their ring; a consumer keeping every batch
    # makes workers fall back to torch's shared memory once the slots run out
    from tensorstore_fs.readers import _ring
    from tensorstore_fs.readers._torch_handoff import INLINE_BYTES

    n = 600
    ids = np.arange(n)
    lengths = 100 + ids % 400
    rows = [(i * 3 + np.arange(k)).astype(np.int32) for i, k in zip(ids, lengths)]
    tsfs.write_dataset(str(tmp_path / "ds"), {"id": ids, "tokens": rows},
                       tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("tokens", "int32", (None,))]))
    loader = DataLoader(TorchDataset(str(tmp_path / "ds"), batch_size=64, shuffle=shuffle, seed=2), batch_size=None,
                        num_workers=2, persistent_workers=True)
    for _ in range(2):
        kept = list(loader)
        assert sum(len(b["id"]) for b in kept) == n
        assert max(b["tokens"].numel() * 4 for b in kept) > INLINE_BYTES
        if _ring.available():  # some batches arrived as views of ring slots
            owners = list(_ring._owners.values())
            assert any(np.shares_memory(o, b["tokens"].numpy()) for o in owners for b in kept)
        for b in kept:
            for j, i in enumerate(b["id"].tolist()):
                k = int(lengths[i])
                assert b["tokens__shape"][j].tolist() == [k]
                np.testing.assert_array_equal(b["tokens"][j, :k].numpy(), rows[i])
                assert not b["tokens"][j, k:].any()
            b["tokens"].add_(1)  # writable; a slot is reused only after its batch is dropped


def test_workers_without_shared_memory_fall_back(url, monkeypatch):
    # a sandbox that refuses memfd_create: workers send file locations and torch's shared
    # memory as before, and every value still arrives
    import os

    from tensorstore_fs.readers import _ring

    def refuse(*args, **kwargs):
        raise OSError("memfd_create refused")

    monkeypatch.setattr(os, "memfd_create", refuse, raising=False)
    monkeypatch.setattr(_ring, "_worker_rings", {})
    loader = DataLoader(TorchDataset(url, batch_size=16, shuffle=True, seed=4), batch_size=None, num_workers=2,
                        multiprocessing_context="fork")
    batches = list(loader)
    assert sorted(torch.cat([b["id"] for b in batches]).tolist()) == list(range(N))
    for b in batches:
        np.testing.assert_array_equal(b["image"].numpy(), image_of(b["id"].numpy()))
