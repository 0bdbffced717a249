"""The tf.data adapter against real TensorFlow and against the PyTorch adapter.

Every check compares what tf.data delivered with the data itself (values are a function of the
row id) or with what ``TorchDataset`` delivers through a real DataLoader for the same arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.compute as pc
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import tensorstore_fs as tsfs  # noqa: E402
from tensorstore_fs.audit import audit_epoch  # noqa: E402
from tensorstore_fs.readers.tf import TFReader, make_tf_dataset  # noqa: E402
from tensorstore_fs.readers.torch import TorchDataset  # noqa: E402

N = 803
SCHEMA = tsfs.Schema([
    tsfs.Field("id", "int64"),
    tsfs.Field("image", "uint8", (3, 4, 4)),
    tsfs.Field("label", "int32"),
    tsfs.Field("tokens", "int32", (None,)),
    tsfs.Field("patch", "float32", (2, None, None), nullable=True),
    tsfs.Field("score", "float64", nullable=True),
    tsfs.Field("name", "string", nullable=True),
])
# each test takes seconds; a pipeline that waits forever should fail the run well before the
# project-wide 10 minutes
pytestmark = pytest.mark.timeout(120)

FILTER = pc.field("label") < 7
PREDICATE = tsfs.in_pseudorandom_split([0.6, 0.4], 0, "id")


def image_of(i):
    return ((np.asarray(i)[..., None] * 5 + np.arange(48)) % 256).astype(np.uint8).reshape(*np.shape(i), 3, 4, 4)


def tokens_of(i):
    return np.arange(i % 9, dtype=np.int32) + i


def patch_of(i):
    return None if i % 13 == 0 else np.full((2, 1 + i % 3, 1 + i % 2), i, np.float32)


def columns_of(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return {
        "id": ids,
        "image": image_of(ids),
        "label": (ids % 10).astype(np.int32),
        "tokens": [tokens_of(int(i)) for i in ids],
        "patch": [patch_of(int(i)) for i in ids],
        "score": np.ma.MaskedArray(ids * 0.25, mask=ids % 7 == 0),
        "name": [None if i % 11 == 0 else f"row-{i}" for i in ids],
    }


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tf_reader") / "ds")
    tsfs.write_dataset(path, (columns_of(np.arange(s, min(s + 200, N))) for s in range(0, N, 200)), SCHEMA,
                       row_group_bytes=2500, shard_bytes=12000)
    return path


def tf_ids(ds) -> list[np.ndarray]:
    return [b["id"].numpy() for b in ds]


def torch_ids(dataset, num_workers: int) -> list[np.ndarray]:
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return [b["id"].numpy() for b in loader]


def assert_same_batches(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# -- element spec --------------------------------------------------------------------------------
def test_element_spec_from_schema(url):
    spec = make_tf_dataset(url, batch_size=32).element_spec
    assert spec["id"] == tf.TensorSpec((None,), tf.int64)
    assert spec["image"] == tf.TensorSpec((None, 3, 4, 4), tf.uint8)
    assert spec["name"] == tf.TensorSpec((None,), tf.string)
    assert spec["score"] == tf.TensorSpec((None,), tf.float64)
    assert spec["score__valid"] == tf.TensorSpec((None,), tf.bool)
    assert isinstance(spec["tokens"], tf.RaggedTensorSpec)
    assert spec["tokens"].shape.as_list() == [None, None] and spec["tokens"].dtype == tf.int32
    assert spec["patch"].shape.as_list() == [None, 2, None, None] and spec["patch"].dtype == tf.float32
    assert list(spec) == ["id", "image", "label", "tokens", "patch", "patch__valid", "score", "score__valid",
                          "name", "name__valid"]
    padded = make_tf_dataset(url, columns=["tokens"], batch_size=32, variable="pad").element_spec
    assert padded["tokens"] == tf.TensorSpec((None, None), tf.int32)
    assert padded["tokens__shape"] == tf.TensorSpec((None, 1), tf.int64)


def test_variable_pad_reads_whole_epochs(url):
    """A padded variable field is None-shaped in the element spec; the end of a pass still
    comes through (the end marker of such a field failed to build, ending every pass in an error)."""
    got = list(make_tf_dataset(url, columns=["id", "tokens"], batch_size=64, variable="pad", num_epochs=2))
    ids = np.concatenate([b["id"].numpy() for b in got])
    assert sorted(ids.tolist()) == sorted(list(range(N)) * 2)
    for b in got:
        for i, row, shape in zip(b["id"].numpy(), b["tokens"].numpy(), b["tokens__shape"].numpy()):
            want = tokens_of(int(i))
            assert shape.tolist() == [len(want)]
            np.testing.assert_array_equal(row[:len(want)], want)
            assert not row[len(want):].any()


def test_values_match_the_data(url):
    seen = 0
    for b in make_tf_dataset(url, batch_size=50, shuffle=True, seed=1):
        ids = b["id"].numpy()
        want = columns_of(ids)
        np.testing.assert_array_equal(b["image"].numpy(), want["image"])
        np.testing.assert_array_equal(b["label"].numpy(), want["label"])
        for i, row in zip(ids, b["tokens"].to_list()):
            assert row == tokens_of(int(i)).tolist()
        for i, row, valid in zip(ids, b["patch"], b["patch__valid"].numpy()):
            expect = patch_of(int(i))
            assert valid == (expect is not None)
            if expect is not None:
                np.testing.assert_array_equal(row.to_tensor().numpy(), expect)
            else:
                assert row.flat_values.shape[0] == 0
        valid = b["score__valid"].numpy()
        np.testing.assert_array_equal(valid, ids % 7 != 0)
        np.testing.assert_array_equal(b["score"].numpy()[valid], ids[valid] * 0.25)
        names = [s.decode() for s in b["name"].numpy()]
        assert names == ["" if i % 11 == 0 else f"row-{i}" for i in ids]
        np.testing.assert_array_equal(b["name__valid"].numpy(), ids % 11 != 0)
        seen += len(ids)
    assert seen == N


# -- same rows, same order as the PyTorch adapter ------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_same_order_as_torch_dataloader(url, workers, shuffle):
    kw = dict(batch_size=40, shuffle=shuffle, seed=7, columns=["id", "label"])
    ours = tf_ids(make_tf_dataset(url, num_workers=max(1, workers), **kw))
    theirs = torch_ids(TorchDataset(url, **kw), workers)
    assert_same_batches(ours, theirs)


@pytest.mark.parametrize("remainder", ["drop", "pad", "uneven"])
def test_ranks_filtered_balanced_and_identical_to_torch(url, remainder):
    world = 3
    expected = np.arange(N)[(np.arange(N) % 10 < 7) & PREDICATE({"id": np.arange(N)})]
    kw = dict(columns=["id"], filter=FILTER, predicate=PREDICATE, batch_size=16, shuffle=True, seed=3,
              remainder=remainder, with_row_ids=True, world_size=world)
    per_rank, pads = [], []
    for rank in range(world):
        batches = list(make_tf_dataset(url, rank=rank, **kw))
        assert_same_batches([b["id"].numpy() for b in batches], torch_ids(TorchDataset(url, rank=rank, **kw), 0))
        per_rank.append(np.concatenate([b["__row_id__"].numpy() for b in batches]))
        pads.append(np.concatenate([b["__pad__"].numpy() for b in batches]) if remainder == "pad" else None)
    report = audit_epoch(per_rank, expected, pads if remainder == "pad" else None)
    if remainder == "drop":
        assert not len(report.duplicates) and not len(report.unexpected) and len(report.missing) < world
    else:
        assert report.exactly_once, str(report)
    if remainder != "uneven":
        assert report.balanced, str(report)


def test_each_pass_is_the_next_epoch(url):
    reader = TFReader(url, columns=["id"], batch_size=64, shuffle=True, seed=5)
    ds = reader.dataset()
    first, second = tf_ids(ds), tf_ids(ds)
    assert np.concatenate(first).tolist() != np.concatenate(second).tolist()
    torch_ds = TorchDataset(url, columns=["id"], batch_size=64, shuffle=True, seed=5)
    torch_ds.set_epoch(1)
    assert_same_batches(second, torch_ids(torch_ds, 0))
    assert sorted(np.concatenate(second).tolist()) == list(range(N))
    assert reader.epoch == 2 and len(reader) == len(first)


def test_num_epochs_and_cardinality(url):
    reader = TFReader(url, columns=["id"], batch_size=100, num_epochs=2, drop_last=True)
    ds = reader.dataset()
    assert ds.cardinality().numpy() == len(reader) == 2 * (N // 100)
    assert len(tf_ids(ds)) == 2 * (N // 100)


# -- resume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [0, 3, 11])
def test_resume_same_world_continues_exactly(url, stop):
    kw = dict(columns=["id"], batch_size=32, shuffle=True, seed=9, num_workers=2)
    full = tf_ids(make_tf_dataset(url, **kw))
    reader = TFReader(url, **kw)
    head = [b["id"].numpy() for _, b in zip(range(stop), reader.dataset())]
    state = json.loads(json.dumps(reader.state_dict(consumed_batches=stop)))
    resumed = TFReader(url, **kw)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - stop
    assert_same_batches(head + tf_ids(resumed.dataset()), full)


def test_resume_from_torch_state_with_other_world(url):
    """A rank-level state saved by TorchDataset (world 2) continues in tf.data with world 3:
    exactly the rows not consumed yet, each once."""
    kw = dict(columns=["id"], batch_size=24, shuffle=True, seed=2, remainder="uneven", with_row_ids=True)
    consumed = []
    for rank in range(2):
        t = TorchDataset(url, rank=rank, world_size=2, **kw)
        it = iter(t)
        consumed += [next(it)["__row_id__"].numpy() for _ in range(5)]
        state = t.state_dict()
    rest = []
    for rank in range(3):
        r = TFReader(url, rank=rank, world_size=3, **kw)
        r.load_state_dict(state)
        rest += [b["__row_id__"].numpy() for b in r.dataset()]
    report = audit_epoch([np.concatenate(consumed + rest)], N)
    assert report.exactly_once, str(report)


def test_state_rolls_over_finished_epochs(url):
    reader = TFReader(url, columns=["id"], batch_size=100, num_epochs=2)
    per_epoch = len(reader) // 2
    state = reader.state_dict(consumed_batches=per_epoch + 1)
    assert state["epoch"] == 1 and state["consumed_batches"] == 1


# -- frameworks: prefetch, Keras, tf.distribute --------------------------------------------------
def test_prefetch_and_keras_fit(url):
    ds = make_tf_dataset(url, columns=["image", "label"], batch_size=64, shuffle=True, seed=0)
    ds = ds.map(lambda b: (tf.cast(b["image"], tf.float32) / 255.0, b["label"])).prefetch(tf.data.AUTOTUNE)
    import keras

    model = keras.Sequential([keras.Input((3, 4, 4)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)  # the plan shuffles
    assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))


def test_distribute_datasets_from_function(url, tmp_path):
    """Two CPU replicas (a fresh process: logical devices must be set before TF starts)."""
    script = textwrap.dedent(f"""
        import os, json
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tensorstore_fs.readers.tf import make_tf_dataset
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        def fn(ctx):
            return make_tf_dataset({url!r}, columns=["id"], batch_size=ctx.get_per_replica_batch_size(64),
                                   shuffle=True, seed=4, input_context=ctx)
        dist = strategy.distribute_datasets_from_function(fn)
        ids = []
        for per_replica in dist:
            for t in strategy.experimental_local_results(per_replica["id"]):
                ids += t.numpy().tolist()
        print(json.dumps({{"replicas": strategy.num_replicas_in_sync, "ids": ids}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert sorted(result["ids"]) == list(range(N))


# -- bad arguments ---------------------------------------------------------------------------------
def test_bad_arguments(url):
    with pytest.raises(tsfs.InvalidArgumentError, match="variable"):
        TFReader(url, variable="nested")
    with pytest.raises(tsfs.InvalidArgumentError, match="num_workers"):
        TFReader(url, num_workers=0)
    with pytest.raises(tsfs.InvalidArgumentError, match="num_epochs"):
        TFReader(url, num_epochs=0)

    class Ctx:
        input_pipeline_id, num_input_pipelines = 0, 2

    with pytest.raises(tsfs.InvalidArgumentError, match="input_context"):
        TFReader(url, rank=0, world_size=2, input_context=Ctx())
    with pytest.raises(tsfs.InvalidArgumentError, match="unknown column"):
        TFReader(url, columns=["nope"])
    # a column name as a bare string was read letter by letter ("unknown column 'l'")
    with pytest.raises(tsfs.InvalidArgumentError, match="columns must be a list of field names, got the string 'label'"):
        TFReader(url, columns="label")
    with pytest.raises(tsfs.InvalidArgumentError, match="columns must name at least one field"):
        TFReader(url, columns=[])
    reader = TFReader(url, batch_size=10)
    with pytest.raises(tsfs.InvalidArgumentError, match="stream state"):
        reader.load_state_dict({"format": "something else"})
    other = TFReader(url, batch_size=20).state_dict(consumed_batches=1)
    with pytest.raises(tsfs.InvalidArgumentError, match="state was saved with"):
        reader.load_state_dict(other)
    with pytest.raises(tsfs.InvalidArgumentError, match="consumed_batches"):
        reader.state_dict(consumed_batches=-1)


def test_torch_is_not_needed_by_the_tf_adapter(url):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from tensorstore_fs.readers.tf import make_tf_dataset\n"
            f"print(sum(int(b['id'].shape[0]) for b in make_tf_dataset({url!r}, columns=['id'], batch_size=100)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(N)
    assert torch.__version__  # the parent process has torch; the child ran without it


def test_resume_twice_in_one_epoch_continues_exactly(url):
    """Found in review: the second state of a resumed pass must count from the resume point."""
    kw = dict(columns=["id"], batch_size=24, shuffle=True, seed=12, num_workers=2)
    full = tf_ids(make_tf_dataset(url, **kw))
    got, state = [], None
    for stop in (4, 7):
        reader = TFReader(url, **kw)
        if state is not None:
            reader.load_state_dict(state)
        got += [b["id"].numpy() for _, b in zip(range(stop), reader.dataset())]
        state = json.loads(json.dumps(reader.state_dict(consumed_batches=stop)))
    reader = TFReader(url, **kw)
    reader.load_state_dict(state)
    assert_same_batches(got + tf_ids(reader.dataset()), full)


def test_columns_tensorflow_cannot_use_in_place_are_copied_once_into_aligned_memory():
    # TensorFlow kernels abort on buffers that are not 64-byte aligned: such columns (and
    # read-only or strided ones) cross as one aligned copy, others zero-copy through DLPack
    from tensorstore_fs.read import ALIGN
    from tensorstore_fs.readers._tf_transport import to_tensor as _to_tensor

    raw = np.arange(4 * 100 + 64, dtype=np.uint8)
    base = raw[-raw.ctypes.data % ALIGN + 4:][:400]  # 4 bytes past an aligned address
    odd = base.view(np.float32).reshape(10, 10)
    assert odd.ctypes.data % ALIGN != 0
    readonly = np.arange(12, dtype=np.int64)
    readonly.flags.writeable = False
    strided = np.arange(40, dtype=np.int32).reshape(10, 4)[:, ::2]
    for a, dt in ((odd, tf.float32), (readonly, tf.int64), (strided, tf.int32)):
        t = _to_tensor(a, dt)
        assert t.dtype == dt and tuple(t.shape) == a.shape
        np.testing.assert_array_equal(t.numpy(), a)
