#!/usr/bin/env python
"""tf.data benchmark: tensorstore_fs's tf.data adapter vs its PyTorch adapter vs TFRecordDataset, one run.

Dataset: the core benchmark's rows (``id``, ``label``, ``image uint8 (3,64,64)``, ``embedding float32
(256,)``; 13,324 payload bytes a row), written with library defaults to tmpfs, and the same rows
exported with ``tensorstore_fs.converters.to_tfrecord`` (uncompressed, 4 files).

Each measured pass reads ``--epochs`` epochs (default 5: 100,000 rows, 1.3 GB) through one iterator,
as training reads a dataset of that size; a pass's start (making the iterator, the first read) is
paid once, and reported on its own as the time to the first batch (tf.data spends ~15-30 ms making
an iterator: it optimises every function of the pipeline).

Systems, each consuming batches of 256 (every tensor's batch dimension checked and one byte of every
4 KiB of it read: ``_common.touch_pages``; the torch adapter's batches are views of mapped files):

* ``tf adapter``     ``make_tf_dataset(url, batch_size=256, shuffle=...)``: 1 reader thread, the same
                     with ``.prefetch(AUTOTUNE)``, and 2 reader threads (``num_workers=2``); tensor
                     columns through the native row gather (the default where it builds), and the
                     Python path (``native=False``) for comparison
* ``torch adapter``  ``TorchDataset(url, batch_size=256, shuffle=...)`` iterated in-process
                     (``num_workers=0``: the same plan, no worker hand-off), and through
                     ``DataLoader(num_workers=2, persistent_workers=True)`` (the usual training setup)
* ``TFRecordDataset`` the recommended fast pipeline for our export:
                     ``TFRecordDataset(files, num_parallel_reads=4).batch(256).map(parse_example +
                     decode_raw + reshape, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)``

A second table measures the steady state alone: endless passes (``num_epochs=None``), each
measured stretch of 3 epochs after 20 warm-up batches on a fresh iterator (which is then dropped,
so no pipeline prefetches while another is measured).

Rounds alternate between systems (``--repeat`` rounds after one warm-up) and medians are
reported with ratios computed inside the run. Results: ``benchmarks/results/tf.md``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EMB_DIM, IMAGE_SHAPE, ROW_NBYTES, make_data, md_table, touch_pages, tsfs_schema  # noqa: E402

BATCH = 256


def consume_tf(ds, first: list[float]) -> int:
    """Rows of one pass; ``first`` gets the time the first batch arrived."""
    rows = 0
    for b in ds:
        if not rows:
            first.append(time.perf_counter())
        rows += int(b["image"].shape[0])
        assert b["embedding"].shape[0] == b["label"].shape[0] == b["image"].shape[0]
        for v in b.values():
            touch_pages(v)  # np.asarray inside: reads the tensor's own memory (.numpy() would copy it)
    return rows


def consume_torch(ds, first: list[float]) -> int:
    rows = 0
    for b in ds:
        if not rows:
            first.append(time.perf_counter())
        rows += len(b["image"])
        assert len(b["embedding"]) == len(b["label"]) == len(b["image"])
        for v in b.values():
            touch_pages(v.numpy())  # shares the tensor's memory
    return rows


def tfrecord_pipeline(tf, paths: list[str], epochs: int):
    spec = {
        "id": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "image": tf.io.FixedLenFeature([], tf.string),
        "embedding": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(records):
        ex = tf.io.parse_example(records, spec)
        return {
            "id": ex["id"],
            "label": tf.cast(ex["label"], tf.int32),
            "image": tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (-1, *IMAGE_SHAPE)),
            "embedding": tf.reshape(tf.io.decode_raw(ex["embedding"], tf.float32), (-1, EMB_DIM)),
        }

    return (tf.data.TFRecordDataset(paths, num_parallel_reads=len(paths)).repeat(epochs).batch(BATCH)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def steady_state(url: str, repeat: int, make_tf_dataset, TorchDataset, warm: int = 20) -> str:
    """The steady-state table: ms per epoch once a pass is running (no iterator start in it)."""
    rows = {}
    for shuffle in (False, True):
        tag = "shuffle" if shuffle else "sequential"
        rows[f"tf adapter, {tag}"] = (consume_tf, make_tf_dataset(url, batch_size=BATCH, shuffle=shuffle, num_epochs=None))
        rows[f"tf adapter, Python path (native=False), {tag}"] = (consume_tf, make_tf_dataset(
            url, batch_size=BATCH, shuffle=shuffle, num_epochs=None, native=False))
        rows[f"torch adapter (num_workers=0), {tag}"] = (
            consume_torch, TorchDataset(url, batch_size=BATCH, shuffle=shuffle, num_epochs=None))
    per_epoch = len(TorchDataset(url, batch_size=BATCH, num_epochs=1))
    times: dict[str, list[float]] = {k: [] for k in rows}
    for r in range(repeat + 1):
        for name, (consume, source) in rows.items():
            it = iter(source)
            consume(itertools.islice(it, warm), [])
            t0 = time.perf_counter()
            consume(itertools.islice(it, 3 * per_epoch), [])
            if r:
                times[name].append((time.perf_counter() - t0) / 3)
            del it
            gc.collect()
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = []
    for name in rows:
        ref = med[f"torch adapter (num_workers=0), {name.rsplit(', ', 1)[1]}"]
        lines.append([name, f"{1e3 * med[name]:.1f}", f"{ref / med[name]:.2f}×"])
    return md_table(["system", "ms per epoch", "vs torch adapter (same shuffle)"], lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="epochs one measured pass reads")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tf.md"))
    args = parser.parse_args()

    import tensorflow as tf

    import tensorstore_fs as tsfs
    from tensorstore_fs.converters import to_tfrecord
    from tensorstore_fs.readers.tf import make_tf_dataset
    from tensorstore_fs.readers.torch import TorchDataset
    from torch.utils.data import DataLoader

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="tsfs-bench-tf-") as tmp:
        url = str(Path(tmp) / "ds")
        tsfs.write_dataset(url, make_data(args.rows), tsfs_schema())
        export = to_tfrecord(url, str(Path(tmp) / "tfrecord"), shards=4)
        e = args.epochs
        total = args.rows * e
        nbytes = total * ROW_NBYTES
        systems = {}
        for shuffle in (False, True):
            tag = "shuffle" if shuffle else "sequential"
            systems[f"tf adapter, {tag}"] = (
                consume_tf, make_tf_dataset(url, batch_size=BATCH, shuffle=shuffle, num_epochs=e))
            systems[f"tf adapter + prefetch(AUTOTUNE), {tag}"] = (consume_tf, make_tf_dataset(
                url, batch_size=BATCH, shuffle=shuffle, num_epochs=e).prefetch(tf.data.AUTOTUNE))
            systems[f"tf adapter 2 threads, {tag}"] = (
                consume_tf, make_tf_dataset(url, batch_size=BATCH, shuffle=shuffle, num_workers=2, num_epochs=e))
            systems[f"tf adapter, Python path (native=False), {tag}"] = (consume_tf, make_tf_dataset(
                url, batch_size=BATCH, shuffle=shuffle, num_epochs=e, native=False))
            systems[f"torch adapter (num_workers=0), {tag}"] = (
                consume_torch, TorchDataset(url, batch_size=BATCH, shuffle=shuffle, num_epochs=e))
            systems[f"torch adapter, DataLoader(num_workers=2), {tag}"] = (consume_torch, DataLoader(
                TorchDataset(url, batch_size=BATCH, shuffle=shuffle, num_epochs=e), batch_size=None, num_workers=2,
                persistent_workers=True))
        systems["TFRecordDataset on our export, sequential"] = (
            consume_tf, tfrecord_pipeline(tf, list(export.paths), e))
        times: dict[str, list[float]] = {k: [] for k in systems}
        firsts: dict[str, list[float]] = {k: [] for k in systems}
        for r in range(args.repeat + 1):
            for name, (consume, source) in systems.items():
                first: list[float] = []
                t0 = time.perf_counter()
                rows = consume(source, first)
                dt = time.perf_counter() - t0
                assert rows == total, (name, rows)
                if r:  # round 0 warms caches and traces tf functions
                    times[name].append(dt)
                    firsts[name].append(first[0] - t0)
        steady = steady_state(url, args.repeat, make_tf_dataset, TorchDataset)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows_s = {k: total / v for k, v in med.items()}
    lines = []
    for name in systems:
        tag = name.rsplit(", ", 1)[1]
        torch_ref = rows_s[f"torch adapter (num_workers=0), {tag}"]
        tfr = rows_s["TFRecordDataset on our export, sequential"]
        lines.append([name, f"{rows_s[name]:,.0f}", f"{nbytes / med[name] / 1e9:.2f}",
                      f"{rows_s[name] / torch_ref:.2f}×", f"{rows_s[name] / tfr:.1f}×",
                      f"{1e3 * statistics.median(firsts[name]):.1f}"])
    table = md_table(["system", "rows/s", "GB/s", "vs torch adapter (same shuffle)", "vs TFRecordDataset",
                      "first batch (ms)"], lines)
    text = (f"# tf.data benchmark\n\n{args.rows:,} rows × {ROW_NBYTES:,} B; each measured pass reads {e} epochs "
            f"({total:,} rows, {nbytes / 1e9:.2f} GB) through one iterator; batch {BATCH}, median of "
            f"{args.repeat} alternating rounds, tmpfs, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}.\n"
            f"Command: `python benchmarks/bench_tf.py --rows {args.rows} --repeat {args.repeat} --epochs {e}`\n\n"
            f"{table}\n\n## Steady state\n\nEndless passes; per round, a fresh iterator reads 20 warm-up batches, "
            f"then 3 epochs ({3 * args.rows:,} rows) are timed; median of {args.repeat} alternating rounds.\n\n"
            f"{steady}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
