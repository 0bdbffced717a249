"""tf.data: tensorstore_fs's tf.data adapter vs its PyTorch adapter vs TFRecordDataset, in one run.

Dataset: the image rows of ``data.py`` written with library defaults to tmpfs, and the same rows
exported with ``tensorstore_fs.converters.to_tfrecord`` (uncompressed, 4 files). Each measured pass
reads ``--epochs`` epochs (default 5: 100,000 rows, 1.3 GB) through one iterator, as training reads
a dataset of that size; a pass's start (making the iterator, the first read) is paid once and
reported on its own as the time to the first batch.

Systems, each consuming batches of 256 (``consume.consume``; the torch adapter's batches are views
of mapped files, tf tensors are read through ``np.asarray``, which shares their memory):

* ``tf adapter``      ``make_tf_dataset(url, batch_size=256, shuffle=...)``: 1 reader thread, the same
                      with ``.prefetch(AUTOTUNE)``, 2 reader threads, and the Python path (``native=False``)
* ``torch adapter``   ``TorchDataset`` in-process (``num_workers=0``) and through
                      ``DataLoader(num_workers=2, persistent_workers=True)``
* ``TFRecordDataset`` ``TFRecordDataset(files, num_parallel_reads=4).batch(256).map(parse_example +
                      decode_raw + reshape, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)``

A second table measures the steady state alone: endless passes, each measured stretch of 3 epochs
after 20 warm-up batches on a fresh iterator (then dropped, so no pipeline prefetches while another
is measured). Rounds alternate between systems (``harness.alternate``). Results: ``tf.md``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import time
from typing import Any, Callable

from . import data
from .consume import consume
from .data import BATCH, EMB_DIM, IMAGE_SHAPE, ROW_NBYTES
from .harness import RunInfo, alternate, header, md_table, ratio, summary, workdir, write_report

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

TITLE = "tf.data benchmark"
FULL = {"rows": 20_000, "repeat": 5, "warmup": 1, "epochs": 5}
QUICK = {"rows": 2_048, "repeat": 1, "warmup": 1, "epochs": 1}
STEADY_EPOCHS, STEADY_WARM_BATCHES = 3, 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, help="dataset rows (default 20,000; quick 2,048)")
    p.add_argument("--epochs", type=int, help="epochs one measured pass reads (default 5; quick 1)")


def check(args: argparse.Namespace) -> str | None:
    return f"--rows must be >= {BATCH} and --epochs >= 1" if args.rows < BATCH or args.epochs < 1 else None


def tfrecord_pipeline(tf: Any, paths: list[str], epochs: int) -> Any:
    spec = {"id": tf.io.FixedLenFeature([], tf.int64), "label": tf.io.FixedLenFeature([], tf.int64),
            "image": tf.io.FixedLenFeature([], tf.string), "embedding": tf.io.FixedLenFeature([], tf.string)}

    def parse(records: Any) -> dict[str, Any]:
        ex = tf.io.parse_example(records, spec)
        return {"id": ex["id"], "label": tf.cast(ex["label"], tf.int32),
                "image": tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (-1, *IMAGE_SHAPE)),
                "embedding": tf.reshape(tf.io.decode_raw(ex["embedding"], tf.float32), (-1, EMB_DIM))}

    return (tf.data.TFRecordDataset(paths, num_parallel_reads=len(paths)).repeat(epochs).batch(BATCH)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def systems(url: str, epochs: int | None, steady: bool = False) -> dict[str, Any]:
    """Name -> batch source (an iterable), for both shuffle settings; ``steady``: the rows of the
    steady-state table."""
    import tensorflow as tf
    from torch.utils.data import DataLoader

    from tensorstore_fs.readers.tf import make_tf_dataset
    from tensorstore_fs.readers.torch import TorchDataset

    out = {}
    for shuffle in (False, True):
        tag = "shuffle" if shuffle else "sequential"
        kw = {"batch_size": BATCH, "shuffle": shuffle, "num_epochs": epochs}
        out[f"tf adapter, {tag}"] = make_tf_dataset(url, **kw)
        if not steady:
            out[f"tf adapter + prefetch(AUTOTUNE), {tag}"] = make_tf_dataset(url, **kw).prefetch(tf.data.AUTOTUNE)
            out[f"tf adapter 2 threads, {tag}"] = make_tf_dataset(url, num_workers=2, **kw)
        out[f"tf adapter, Python path (native=False), {tag}"] = make_tf_dataset(url, native=False, **kw)
        out[f"torch adapter (num_workers=0), {tag}"] = TorchDataset(url, **kw)
        if not steady:
            out[f"torch adapter, DataLoader(num_workers=2), {tag}"] = DataLoader(
                TorchDataset(url, **kw), batch_size=None, num_workers=2, persistent_workers=True)
    return out


def _torch_ref(name: str) -> str:
    return f"torch adapter (num_workers=0), {name.rsplit(', ', 1)[1]}"


def steady_state(url: str, repeat: int, warmup: int) -> str:
    """The steady-state table: ms per epoch once a pass is running (no iterator start in it)."""
    from tensorstore_fs.readers.torch import TorchDataset

    per_epoch = len(TorchDataset(url, batch_size=BATCH, num_epochs=1))

    def stretch(source: Any) -> Callable[[], float]:
        def run() -> float:
            it = iter(source)
            consume(itertools.islice(it, STEADY_WARM_BATCHES))
            t0 = time.perf_counter()
            consume(itertools.islice(it, STEADY_EPOCHS * per_epoch))
            dt = time.perf_counter() - t0
            del it
            gc.collect()
            return dt / STEADY_EPOCHS
        return run

    runs = alternate({k: stretch(v) for k, v in systems(url, None, steady=True).items()}, repeat, warmup)
    med = {k: statistics.median(dt for _, dt in v) for k, v in runs.items()}
    lines = [[name, f"{1e3 * m:.1f}", f"{med[_torch_ref(name)] / m:.2f}×"] for name, m in med.items()]
    return md_table(["system", "ms per epoch", "vs torch adapter (same shuffle)"], lines)


def main(args: argparse.Namespace) -> int:
    import tensorflow as tf

    import tensorstore_fs as tsfs
    from tensorstore_fs.converters import to_tfrecord

    run = RunInfo()
    e, n = args.epochs, args.rows
    total = n * e
    with workdir(args.work, "tsfs-bench-tf-", args.keep) as work:
        url = str(work / "ds")
        s = data.spec("image", n)
        tsfs.write_dataset(url, data.generate(s), data.tsfs_schema(s))
        export = to_tfrecord(url, str(work / "tfrecord"), shards=4)
        sources = systems(url, e)
        sources["TFRecordDataset on our export, sequential"] = tfrecord_pipeline(tf, list(export.paths), e)
        runs = alternate({k: (lambda src=src: consume(src)) for k, src in sources.items()}, args.repeat, args.warmup)
        assert all(out.rows == total for v in runs.values() for _, out in v), "a pass read the wrong number of rows"
        steady = steady_state(url, args.repeat, args.warmup)
    res = {k: summary([t for t, _ in v], total, total * ROW_NBYTES) for k, v in runs.items()}
    tfr = res["TFRecordDataset on our export, sequential"]
    lines = [[name, f"{e_['rows_s']:,.0f}", f"{e_['gb_s']:.2f}", f"{ratio(e_, res[_torch_ref(name)]):.2f}×",
              f"{ratio(e_, tfr):.1f}×", f"{1e3 * statistics.median(out.first_s for _, out in runs[name]):.1f}"]
             for name, e_ in res.items()]
    table = md_table(["system", "rows/s", "GB/s", "vs torch adapter (same shuffle)", "vs TFRecordDataset",
                      "first batch (ms)"], lines)
    intro = (f"{n:,} rows × {ROW_NBYTES:,} B; each measured pass reads {e} epochs ({total:,} rows, "
             f"{total * ROW_NBYTES / 1e9:.2f} GB) through one iterator; batch {BATCH}, median of {args.repeat} "
             f"alternating rounds, tmpfs.")
    steady_intro = (f"Endless passes; per round, a fresh iterator reads {STEADY_WARM_BATCHES} warm-up batches, then "
                    f"{STEADY_EPOCHS} epochs ({STEADY_EPOCHS * n:,} rows) are timed; median of {args.repeat} "
                    f"alternating rounds.")
    write_report(args.out, "tf", [header(TITLE, run.command, run.env()), intro, table, "## Steady state", steady_intro,
                                  steady])
    return 0
