"""The tf.data adapter's native row gather (``readers/_tf_gather.cc``) against its Python path.

The kernel copies fixed-shape tensor rows out of the shard files; every check compares its batches
with the Python path's (``native=False``) or with the data itself, through real TensorFlow.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")

import tensorstore_fs as tsfs  # noqa: E402
from tensorstore_fs.readers import _tf_native  # noqa: E402
from tensorstore_fs.readers.tf import TFReader, make_tf_dataset  # noqa: E402

pytestmark = pytest.mark.timeout(180)

N = 1000
SCHEMA = tsfs.Schema([
    tsfs.Field("id", "int64"),
    tsfs.Field("image", "uint8", (3, 4, 4)),
    tsfs.Field("emb", "float32", (8,)),
    tsfs.Field("half", "float16", (2, 3)),
    tsfs.Field("mask", "bool", (4,)),
    tsfs.Field("maybe", "int16", (2,), nullable=True),
    tsfs.Field("tokens", "int32", (None,)),
    tsfs.Field("name", "string"),
])


def columns_of(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return {
        "id": ids,
        "image": ((ids[:, None] * 7 + np.arange(48)) % 256).astype(np.uint8).reshape(-1, 3, 4, 4),
        "emb": (ids[:, None] + np.arange(8) / 8).astype(np.float32),
        "half": (ids[:, None] % 100 + np.arange(6)).astype(np.float16).reshape(-1, 2, 3),
        "mask": (ids[:, None] + np.arange(4)) % 3 == 0,
        "maybe": [None if i % 9 == 0 else np.array([i, -i], np.int16) for i in ids],
        "tokens": [np.arange(i % 5, dtype=np.int32) + i for i in ids],
        "name": [f"row-{i}" for i in ids],
    }


@pytest.fixture(scope="module")
def native_op():
    op = _tf_native.load()
    if op is None:
        if shutil.which(os.environ.get("CXX") or "c++") is None:  # a machine without a compiler reads through Python
            pytest.skip(f"no C++ compiler: {_tf_native.unavailable_reason()}")
        pytest.fail(f"the native row gather must build where a compiler is: {_tf_native.unavailable_reason()}")
    return op


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tf_native") / "ds")
    tsfs.write_dataset(path, (columns_of(np.arange(s, min(s + 250, N))) for s in range(0, N, 250)), SCHEMA,
                       row_group_bytes=6000, shard_bytes=40000)
    return path


def batches(ds) -> list[dict[str, np.ndarray]]:
    out = []
    for b in ds:
        out.append({k: (v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy()) for k, v in b.items()})
    return out


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) and got
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            if isinstance(w[k], list):
                assert g[k] == w[k], k
            else:
                assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, k
                np.testing.assert_array_equal(g[k], w[k], err_msg=k)


CASES = {
    "sequential": {},
    "shuffled": {"shuffle": True, "seed": 3},
    "2 workers, shuffled": {"shuffle": True, "num_workers": 2},
    "filter": {"filter": (pc.field("id") < 300) | (pc.field("id") > 700)},
    "columns, pad": {"columns": ["emb", "id", "image"], "remainder": "pad", "batch_size": 96},
    "rank 1 of 3": {"rank": 1, "world_size": 3, "shuffle": True},
    "variable pad, row ids": {"variable": "pad", "with_row_ids": True},
}


@pytest.mark.parametrize("case", CASES)
def test_native_gather_gives_the_python_paths_batches(url, native_op, case):
    kwargs = {"batch_size": 64, **CASES[case]}
    fast, slow = TFReader(url, native=None, **kwargs), TFReader(url, native=False, **kwargs)
    assert fast.native and not slow.native
    assert fast.dataset().element_spec == slow.dataset().element_spec
    assert_same(batches(fast.dataset()), batches(slow.dataset()))


def test_native_batches_hold_the_data(url, native_op):
    got = batches(make_tf_dataset(url, columns=["id", "image", "emb", "half"], batch_size=128, shuffle=True))
    ids = np.concatenate([b["id"] for b in got])
    assert sorted(ids.tolist()) == list(range(N))
    want = columns_of(ids)
    for k in ("image", "emb", "half"):
        np.testing.assert_array_equal(np.concatenate([b[k] for b in got]), want[k])


def test_batches_kept_by_the_consumer_are_never_overwritten(url, native_op):
    """Output memory is recycled once TensorFlow lets go of it: batches a training loop keeps
    (two epochs' worth, four prefetched) must keep their values."""
    ds = make_tf_dataset(url, columns=["id", "image", "emb"], batch_size=32, shuffle=True, num_epochs=2).prefetch(4)
    kept = list(ds)
    for b in kept:
        want = columns_of(b["id"].numpy())
        np.testing.assert_array_equal(b["image"].numpy(), want["image"])
        np.testing.assert_array_equal(b["emb"].numpy(), want["emb"])


def mapped_file(array: np.ndarray) -> str | None:
    """The file whose mapping holds ``array``'s memory ("" for anonymous memory, None if unmapped)."""
    addr = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return parts[5] if len(parts) > 5 else ""
    return None


ALIGNED = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("emb", "float32", (5,)),
                       tsfs.Field("image", "uint8", (4, 4, 8))])  # 128-byte rows: any batch start is aligned


@pytest.fixture(scope="module")
def aligned_url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tf_zero_copy") / "ds")
    ids = np.arange(1200)
    image = ((ids[:, None] * 3 + np.arange(128)) % 256).astype(np.uint8).reshape(-1, 4, 4, 8)
    tsfs.write_dataset(path, {"id": ids, "emb": (ids[:, None] + np.arange(5)).astype(np.float32), "image": image},
                       ALIGNED, row_group_bytes=16 * 1024, shard_bytes=16 * 1024)
    return path


def test_sequential_batches_are_the_mapped_file_bytes(aligned_url, native_op, monkeypatch):
    ds = tsfs.open_dataset(aligned_url)
    assert len(ds.shards) > 8  # more files than the kernel keeps mapped: kept batches hold theirs
    shards = {os.path.realpath(ds.storage.path(s.path)) for s in ds.shards}
    kept = list(make_tf_dataset(aligned_url, batch_size=32))
    image = [np.asarray(b["image"]) for b in kept]
    assert all(os.path.realpath(mapped_file(a)) in shards for a in image)  # the file's own pages
    assert not any(a.flags.writeable for a in image)
    ids = np.concatenate([b["id"].numpy() for b in kept])
    np.testing.assert_array_equal(ids, np.arange(1200))
    want = ((ids[:, None] * 3 + np.arange(128)) % 256).astype(np.uint8).reshape(-1, 4, 4, 8)
    np.testing.assert_array_equal(np.concatenate(image), want)

    for copied in (list(make_tf_dataset(aligned_url, batch_size=32, zero_copy=False)),
                   _with_env(monkeypatch, "TSFS_TF_ZERO_COPY", "0",
                             lambda: list(make_tf_dataset(aligned_url, batch_size=32)))):
        assert not any(mapped_file(np.asarray(b["image"])) in shards for b in copied)
        np.testing.assert_array_equal(np.concatenate([b["image"].numpy() for b in copied]), want)
    # the argument wins over the environment variable
    again = _with_env(monkeypatch, "TSFS_TF_ZERO_COPY", "0",
                      lambda: list(make_tf_dataset(aligned_url, batch_size=32, zero_copy=True)))
    assert all(os.path.realpath(mapped_file(np.asarray(b["image"]))) in shards for b in again)
    with pytest.raises(tsfs.InvalidArgumentError, match="zero_copy must be None, True or False, got 'no'"):
        make_tf_dataset(aligned_url, zero_copy="no")


def _with_env(monkeypatch, name, value, make):
    with monkeypatch.context() as m:
        m.setenv(name, value)
        return make()


def test_a_kept_mapped_batch_outlives_its_deleted_file(aligned_url, native_op, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(aligned_url, copy)
    ds = tsfs.open_dataset(str(copy))
    it = iter(make_tf_dataset(str(copy), columns=["id", "image"], batch_size=64))
    batch = next(it)
    assert mapped_file(np.asarray(batch["image"])).endswith(".parquet")
    del it
    for shard in ds.shards:
        os.unlink(ds.storage.path(shard.path))
    want = ((np.arange(64)[:, None] * 3 + np.arange(128)) % 256).astype(np.uint8).reshape(-1, 4, 4, 8)
    np.testing.assert_array_equal(batch["image"].numpy(), want)


def test_ops_never_write_into_mapped_batches(aligned_url, native_op):
    """TensorFlow reuses an input's buffer for an op's output when nothing else holds it, also the
    root buffer under a slice. A mapped batch (read-only pages) must never be one: each of these
    crashed the process (SIGSEGV) while slices of a batch could be; run in a child process so a
    regression fails this test, not the suite."""
    script = textwrap.dedent(f"""
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np
        import tensorflow as tf
        from tensorstore_fs.readers.tf import make_tf_dataset
        zeros = tf.zeros((1, 4, 4, 8), tf.uint8)

        def first_zeroed(x):
            x = x.copy()
            x[0] = 0
            return x

        ops = {{  # name: (op on the batch, the same in NumPy)
            "add": (lambda x: x + 1, lambda x: x + 1),
            "slice, add": (lambda x: x[:32] + 1, lambda x: x[:32] + 1),
            "slice, multiply": (lambda x: x[32:] * 2, lambda x: x[32:] * 2),
            "split, add": (lambda x: tf.split(x, 2)[1] + 1, lambda x: x[32:] + 1),
            "reshape, add": (lambda x: tf.reshape(x, (64, -1)) + 1, lambda x: x.reshape(64, -1) + 1),
            "scatter": (lambda x: tf.tensor_scatter_nd_update(x, [[0]], zeros), first_zeroed),
            "slice, scatter": (lambda x: tf.tensor_scatter_nd_update(x[:32], [[0]], zeros),
                               lambda x: first_zeroed(x[:32])),
        }}
        for name, (op, numpy_op) in ops.items():
            # the batch itself is not passed on: the op's input is then its only holder
            ds = make_tf_dataset({aligned_url!r}, columns=["id", "image"], batch_size=64, num_epochs=2, drop_last=True)
            for b in ds.map(lambda b: {{"id": b["id"], "out": op(b["image"])}}):
                want = ((b["id"].numpy()[:, None] * 3 + np.arange(128)) % 256).astype(np.uint8).reshape(-1, 4, 4, 8)
                assert (b["out"].numpy() == numpy_op(want)).all(), name
            print(name, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert len(done.stdout.splitlines()) == 7
    tsfs.open_dataset(aligned_url).verify()  # the files are as written


def rewrite_with_small_pages(url: str, shard_index: int = 0) -> None:
    """Rewrite one shard with many data pages per column chunk (as other writers do): its tensor
    columns can no longer be located, so the stream decodes them."""
    ds = tsfs.open_dataset(url)
    shard = ds.shards[shard_index]
    path = os.path.join(url, shard.path)
    table = pq.read_table(path)
    with pq.ParquetWriter(path, table.schema, compression="none", use_dictionary=False, data_page_size=256,
                          store_schema=True) as w:
        start = 0
        for g in shard.row_groups:
            w.write_table(table.slice(start, g.rows), row_group_size=g.rows)
            start += g.rows


def test_rows_that_cannot_be_located_travel_inline(tmp_path, native_op):
    url = str(tmp_path / "ds")
    tsfs.write_dataset(url, columns_of(np.arange(600)), SCHEMA, row_group_bytes=6000, shard_bytes=40000)
    rewrite_with_small_pages(url, 0)
    for shuffle in (False, True):
        fast, slow = TFReader(url, batch_size=50, shuffle=shuffle), TFReader(url, batch_size=50, shuffle=shuffle, native=False)
        assert fast.native
        assert_same(batches(fast.dataset()), batches(slow.dataset()))


@pytest.fixture
def rebuilt(monkeypatch):
    """``monkeypatch`` for the environment of the next build; the loaded gather is forgotten
    before and after the test (so later tests load the real one again)."""
    _tf_native._state.clear()
    yield monkeypatch
    _tf_native._state.clear()


def falls_back(url: str, caplog, *why: str) -> None:
    """A reader built now reads through Python, with a warning saying ``why`` (nothing when
    ``why`` is empty: switched off on purpose), and still reads every row."""
    with caplog.at_level(logging.WARNING, logger="tensorstore_fs.readers._tf_native"):
        reader = TFReader(url, batch_size=100)
    assert not reader.native
    for text in why:
        assert text in caplog.text
    if not why:
        assert "unavailable" not in caplog.text
    assert sum(int(b["id"].shape[0]) for b in reader.dataset()) == N


def test_unavailable_gather_falls_back_to_python_with_a_warning(url, tmp_path, rebuilt, caplog):
    rebuilt.setenv("TSFS_CACHE_DIR", str(tmp_path / "cache"))  # nothing built there
    rebuilt.setenv("CXX", str(tmp_path / "no-such-compiler"))
    falls_back(url, caplog, "no C++ compiler", "no-such-compiler")
    with pytest.raises(tsfs.InvalidArgumentError, match="native=True, but the native row gather is unavailable: "
                                                        "no C.. compiler"):
        TFReader(url, batch_size=100, native=True)


def test_unwritable_cache_falls_back_to_python(url, tmp_path, rebuilt, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rebuilt.setenv("TSFS_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    falls_back(url, caplog, "cannot write the build to", "TSFS_CACHE_DIR")


def test_switched_off_by_environment(url, rebuilt, caplog):
    rebuilt.setenv("TSFS_TF_NATIVE", "0")
    falls_back(url, caplog)


def test_native_needs_a_local_dataset(native_op):
    url = "memory://tf-native/ds"
    tsfs.write_dataset(url, columns_of(np.arange(50)), SCHEMA, mode="overwrite")
    assert not TFReader(url, batch_size=10).native  # object stores read through Python
    with pytest.raises(tsfs.InvalidArgumentError, match="native=True needs a local dataset"):
        TFReader(url, batch_size=10, native=True)
    with pytest.raises(tsfs.InvalidArgumentError, match="native must be None, True or False"):
        TFReader(url, batch_size=10, native="yes")


def test_kernel_errors_name_the_file(tmp_path, native_op):
    path = tmp_path / "shard.parquet"
    path.write_bytes(bytes(range(256)) * 4)
    paths = tf.constant([str(path), str(tmp_path / "gone.parquet")])
    empty = tf.zeros((0, 4), tf.uint8)
    rows = native_op.tsfs_gather_rows(paths, tf.constant([0, 0], tf.int32), tf.constant([8, 1020], tf.int64), empty,
                                      row_shape=[4])
    np.testing.assert_array_equal(rows.numpy(), [[8, 9, 10, 11], [252, 253, 254, 255]])
    with pytest.raises(tf.errors.NotFoundError, match=r"cannot open shard file .*gone\.parquet"):
        native_op.tsfs_gather_rows(paths, tf.constant([1], tf.int32), tf.constant([0], tf.int64), empty, row_shape=[4])
    with pytest.raises(tf.errors.DataLossError, match=r"shard file .*shard\.parquet ends before the rows its "
                                                      r"manifest places at byte 1022"):
        native_op.tsfs_gather_rows(paths, tf.constant([0], tf.int32), tf.constant([1022], tf.int64), empty,
                                   row_shape=[4])
    with pytest.raises(tf.errors.InvalidArgumentError, match="file index out of range"):
        native_op.tsfs_gather_rows(paths, tf.constant([2], tf.int32), tf.constant([0], tf.int64), empty, row_shape=[4])


@pytest.mark.parametrize("native", [True, False])
def test_process_exits_with_a_pipeline_still_running(url, native):
    """An endless pipeline with prefetching left running at exit hung the interpreter forever
    (TensorFlow's threads wait for the GIL of a finalizing interpreter)."""
    script = textwrap.dedent(f"""
        import itertools, os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tensorflow as tf
        from tensorstore_fs.readers.tf import make_tf_dataset
        ds = make_tf_dataset({url!r}, batch_size=64, num_epochs=None, num_workers=2, native={native})
        it = iter(ds.prefetch(tf.data.AUTOTUNE))
        print(sum(int(b["id"].shape[0]) for b in itertools.islice(it, 5)), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["320"]

