"""Each pass over a reader is the next epoch, however the previous pass ended (issue 17, item 2).

A training loop that takes exactly ``len(loader)`` batches and stops — as PyTorch Lightning does —
never exhausts the DataLoader's iterator; one that breaks off early does not either. Every new
pass (a new ``iter()`` of the DataLoader) must still read the next epoch, with ``num_workers=0``
and with DataLoader workers, persistent or not, unless ``set_epoch`` pins it. Each pass is
compared batch for batch with the epoch plan (``EpochPlan.rank_stream``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import tensorstore_fs as tsfs
from tensorstore_fs.readers.torch import TorchDataset

N = 240
SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("x", "float32", (2,))])
KW = dict(batch_size=16, shuffle=True, seed=3, with_row_ids=True)
# (num_workers, persistent_workers)
LOADERS = [(0, False), (2, False), (2, True)]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("epochs") / "ds")

    def chunks():
        for s in range(0, N, 40):
            ids = np.arange(s, s + 40, dtype=np.int64)
            yield {"id": ids, "x": np.stack([ids, -ids], axis=1).astype(np.float32)}

    ds = tsfs.write_dataset(path, chunks(), SCHEMA, row_group_bytes=400, shard_bytes=1600)
    assert len(ds.row_groups) >= 6
    return path


def _strict_warnings(worker_id):
    warnings.simplefilter("error")


def make_loader(ds, num_workers, persistent=False):
    if num_workers == 0:
        return DataLoader(ds, batch_size=None)
    return DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=persistent,
                      multiprocessing_context="fork", worker_init_fn=_strict_warnings)


def planned(ds, epoch, num_workers):
    """Row ids per batch, in DataLoader order, as the plan of ``epoch`` prescribes."""
    plan = ds.stream.plan(epoch, ds.world_size)
    return [ds.stream.row_ids(ids) for ids, _ in plan.rank_stream(ds.rank, max(1, num_workers))]


def take(loader, n):
    """``n`` batches of a new pass, then the loop stops (the iterator is not exhausted)."""
    it = iter(loader)
    out = [next(it)["__row_id__"].numpy().copy() for _ in range(n)]
    del it
    return out


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def is_whole_epoch(batches):
    return np.array_equal(np.sort(np.concatenate(batches)), np.arange(N))


@pytest.mark.parametrize("num_workers,persistent", LOADERS)
def test_a_loop_that_stops_at_len_reads_the_next_epoch(url, num_workers, persistent):
    ds = TorchDataset(url, **KW)
    loader = make_loader(ds, num_workers, persistent)
    passes = []
    for e in range(3):
        assert ds.epoch == e
        passes.append(take(loader, len(loader)))
        assert same(passes[-1], planned(ds, e, num_workers)), e
        assert is_whole_epoch(passes[-1])
    orders = [np.concatenate(p) for p in passes]
    assert not any(np.array_equal(orders[i], orders[j]) for i, j in ((0, 1), (1, 2), (0, 2)))
    assert ds.epoch == 3


@pytest.mark.parametrize("num_workers,persistent", LOADERS)
def test_a_pass_broken_off_early_is_followed_by_the_next_epoch(url, num_workers, persistent):
    ds = TorchDataset(url, **KW)
    loader = make_loader(ds, num_workers, persistent)
    assert same(take(loader, 3), planned(ds, 0, num_workers)[:3])
    whole = [b["__row_id__"].numpy().copy() for b in loader]
    assert same(whole, planned(ds, 1, num_workers))  # read to its end
    assert same(take(loader, 1), planned(ds, 2, num_workers)[:1])
    assert same(take(loader, len(loader)), planned(ds, 3, num_workers))


@pytest.mark.parametrize("num_workers,persistent", LOADERS)
def test_set_epoch_pins_the_next_pass(url, num_workers, persistent):
    ds = TorchDataset(url, **KW)
    loader = make_loader(ds, num_workers, persistent)
    take(loader, 2)  # epoch 0, broken off
    ds.set_epoch(5)  # also reaches persistent workers started before it
    assert ds.epoch == 5 and len(loader) == len(planned(ds, 5, num_workers))
    assert same(take(loader, len(loader)), planned(ds, 5, num_workers))
    assert same(take(loader, len(loader)), planned(ds, 6, num_workers))  # and counts on from there
    for e in (1, 1):  # the same epoch twice: pinned each time
        ds.set_epoch(e)
        assert same([b["__row_id__"].numpy().copy() for b in loader], planned(ds, e, num_workers))
    assert ds.epoch == 2


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (2, False)])
def test_state_saved_in_a_later_pass_resumes_that_epoch(url, num_workers, persistent):
    ds = TorchDataset(url, **KW)
    loader = make_loader(ds, num_workers, persistent)
    take(loader, len(loader))
    head = take(loader, 5)  # epoch 1, stopped after 5 batches
    state = ds.state_dict() if num_workers == 0 else ds.state_dict(consumed_batches=5, num_workers=num_workers)
    assert (state["epoch"], state["consumed_batches"]) == (1, 5)
    ds2 = TorchDataset(url, **KW)
    ds2.load_state_dict(state)
    loader2 = make_loader(ds2, num_workers, persistent)
    rest = [b["__row_id__"].numpy().copy() for b in loader2]
    assert same(head + rest, planned(ds, 1, num_workers))
    assert same(take(loader2, len(loader2)), planned(ds, 2, num_workers))  # then the next epoch


def test_num_epochs_per_pass_and_the_pass_after(url):
    ds = TorchDataset(url, num_epochs=2, **KW)
    take(ds, 3)  # a pass covers epochs 0 and 1; broken off in epoch 0
    assert ds.epoch == 2
    assert same(list(b["__row_id__"].numpy().copy() for b in ds), planned(ds, 2, 0) + planned(ds, 3, 0))


def test_an_endless_pass_is_followed_by_the_epoch_after_the_last_one_it_read(url):
    ds = TorchDataset(url, num_epochs=None, **KW)
    per_epoch = len(planned(ds, 0, 0))
    take(ds, per_epoch + 2)  # read epoch 0 and began epoch 1
    assert ds.epoch == 2
    assert same(take(ds, 2), planned(ds, 2, 0)[:2])


@pytest.mark.parametrize("context", ["forkserver"])
def test_workers_that_are_started_not_forked_share_the_passes(url, context):
    ds = TorchDataset(url, **KW)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context,
                        worker_init_fn=_strict_warnings)
    for e in range(2):
        assert same(take(loader, len(loader)), planned(ds, e, 2)), e
    assert ds.epoch == 2


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch >= 2.9
@pytest.mark.parametrize("persistent", [False, True])
def test_stateful_dataloader_restore_then_the_next_epoch(url, persistent):
    sdl = pytest.importorskip("torchdata.stateful_dataloader")

    def loader():
        ds = TorchDataset(url, **KW)
        return ds, sdl.StatefulDataLoader(ds, batch_size=None, num_workers=2, persistent_workers=persistent,
                                          multiprocessing_context="fork", worker_init_fn=_strict_warnings)

    ds, ld = loader()
    take(ld, len(ld))  # epoch 0, stopped at len
    it = iter(ld)
    head = [next(it)["__row_id__"].numpy().copy() for _ in range(5)]  # epoch 1, 5 batches
    state = ld.state_dict()
    del it
    ds2, ld2 = loader()
    ld2.load_state_dict(state)
    rest = [b["__row_id__"].numpy().copy() for b in ld2]
    assert same(head + rest, planned(ds, 1, 2))
    assert same([b["__row_id__"].numpy().copy() for b in ld2], planned(ds, 2, 2))  # then the next epoch


# -- a real Lightning Trainer ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # Lightning 2.6 on torch 2.13: pytree LeafSpec
def test_lightning_trainer_sees_a_new_order_every_epoch(url, num_workers):
    pl = pytest.importorskip("lightning.pytorch")

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.epochs: list[list[np.ndarray]] = []

        def on_train_epoch_start(self):
            self.epochs.append([])

        def training_step(self, batch, batch_idx):
            self.epochs[-1].append(batch["id"].numpy().copy())
            return self.layer(batch["x"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    ds = TorchDataset(url, **KW)
    model = Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, enable_checkpointing=False, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, make_loader(ds, num_workers))
    assert len(model.epochs) == 3
    orders = [np.concatenate(e) for e in model.epochs]
    for e, order in enumerate(orders):
        assert np.array_equal(np.sort(order), np.arange(N)), e  # each epoch every row exactly once
        assert np.array_equal(order, np.concatenate(planned(ds, e, num_workers))), e
    assert not any(np.array_equal(orders[i], orders[j]) for i, j in ((0, 1), (1, 2), (0, 2)))


# -- tf.data: one pass number per iterator, for all of its plan workers -----------------------------------
@pytest.mark.parametrize("num_workers", [1, 2])
def test_tf_passes_broken_off_or_stopped_at_len_read_the_next_epoch(url, num_workers):
    tf = pytest.importorskip("tensorflow")
    from tensorstore_fs.readers.tf import TFReader

    reader = TFReader(url, num_workers=num_workers, **KW)
    ds = reader.dataset()
    torch_ds = TorchDataset(url, **KW)

    def tf_pass(n=None):
        out = []
        for b in ds:
            out.append(b["__row_id__"].numpy().copy())
            if n is not None and len(out) >= n:
                break
        return out

    assert same(tf_pass(1), planned(torch_ds, 0, num_workers)[:1])  # broken off after one batch
    assert same(tf_pass(len(reader)), planned(torch_ds, 1, num_workers))  # stopped at len()
    it = iter(ds)
    next(it)
    del it  # an iterator dropped after one batch
    assert same(tf_pass(), planned(torch_ds, 3, num_workers))
    assert reader.epoch == 4 and isinstance(ds, tf.data.Dataset)
