#!/usr/bin/env python
"""tf.data benchmark: tensorstore_fs's tf.data adapter vs its PyTorch adapter vs TFRecordDataset, one run.

Dataset: the core benchmark's rows (``id``, ``label``, ``image uint8 (3,64,64)``, ``embedding float32
(256,)``; 13,324 payload bytes a row), written with library defaults to tmpfs, and the same rows
exported with ``tensorstore_fs.converters.to_tfrecord`` (uncompressed, 4 files).

Systems, each consuming batches of 256 (every tensor's batch dimension checked and one byte of every
4 KiB of it read: ``_common.touch_pages``; the torch adapter's batches are views of mapped files):

* ``tf adapter``     ``make_tf_dataset(url, batch_size=256, shuffle=...)``: 1 reader thread, the same
                     with ``.prefetch(AUTOTUNE)``, and 2 reader threads (``num_workers=2``)
* ``torch adapter``  ``TorchDataset(url, batch_size=256, shuffle=...)`` iterated in-process
                     (``num_workers=0``: the same plan, no worker hand-off), and through
                     ``DataLoader(num_workers=2, persistent_workers=True)`` (the usual training setup)
* ``TFRecordDataset`` the recommended fast pipeline for our export:
                     ``TFRecordDataset(files, num_parallel_reads=4).batch(256).map(parse_example +
                     decode_raw + reshape, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)``

Rounds alternate between systems (``--repeat`` rounds after one warm-up) and medians are
reported with ratios computed inside the run. Results: ``benchmarks/results/tf.md``.
"""

from __future__ import annotations

import argparse
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


def consume_tf(ds) -> int:
    rows = 0
    for b in ds:
        rows += int(b["image"].shape[0])
        assert b["embedding"].shape[0] == b["label"].shape[0] == b["image"].shape[0]
        for v in b.values():
            touch_pages(v)  # np.asarray inside: reads the tensor's own memory (.numpy() would copy it)
    return rows


def consume_torch(ds) -> int:
    rows = 0
    for b in ds:
        rows += len(b["image"])
        assert len(b["embedding"]) == len(b["label"]) == len(b["image"])
        for v in b.values():
            touch_pages(v.numpy())  # shares the tensor's memory
    return rows


def tfrecord_pipeline(tf, paths: list[str]):
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

    return (tf.data.TFRecordDataset(paths, num_parallel_reads=len(paths)).batch(BATCH)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
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
        nbytes = args.rows * ROW_NBYTES
        systems = {}
        for shuffle in (False, True):
            tag = "shuffle" if shuffle else "sequential"
            systems[f"tf adapter, {tag}"] = (
                consume_tf, make_tf_dataset(url, batch_size=BATCH, shuffle=shuffle, num_epochs=1))
            systems[f"tf adapter + prefetch(AUTOTUNE), {tag}"] = (
                consume_tf, make_tf_dataset(url, batch_size=BATCH, shuffle=shuffle).prefetch(tf.data.AUTOTUNE))
            systems[f"tf adapter 2 threads, {tag}"] = (
                consume_tf, make_tf_dataset(url, batch_size=BATCH, shuffle=shuffle, num_workers=2))
            systems[f"torch adapter (num_workers=0), {tag}"] = (
                consume_torch, TorchDataset(url, batch_size=BATCH, shuffle=shuffle, num_epochs=1))
            systems[f"torch adapter, DataLoader(num_workers=2), {tag}"] = (consume_torch, DataLoader(
                TorchDataset(url, batch_size=BATCH, shuffle=shuffle), batch_size=None, num_workers=2,
                persistent_workers=True))
        systems["TFRecordDataset on our export, sequential"] = (consume_tf, tfrecord_pipeline(tf, list(export.paths)))
        times: dict[str, list[float]] = {k: [] for k in systems}
        for r in range(args.repeat + 1):
            for name, (consume, source) in systems.items():
                t0 = time.perf_counter()
                rows = consume(source)
                dt = time.perf_counter() - t0
                assert rows == args.rows or "drop" in name, (name, rows)
                if r:  # round 0 warms caches and traces tf functions
                    times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows_s = {k: args.rows / v for k, v in med.items()}
    lines = []
    for name in systems:
        tag = name.rsplit(", ", 1)[1]
        torch_ref = rows_s[f"torch adapter (num_workers=0), {tag}"]
        tfr = rows_s["TFRecordDataset on our export, sequential"]
        lines.append([name, f"{rows_s[name]:,.0f}", f"{nbytes / med[name] / 1e9:.2f}",
                      f"{rows_s[name] / torch_ref:.2f}×", f"{rows_s[name] / tfr:.1f}×"])
    table = md_table(["system", "rows/s", "GB/s", "vs torch adapter (same shuffle)", "vs TFRecordDataset"], lines)
    text = (f"# tf.data benchmark\n\n{args.rows:,} rows × {ROW_NBYTES:,} B, batch {BATCH}, median of "
            f"{args.repeat} alternating rounds, tmpfs, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}.\n"
            f"Command: `python benchmarks/bench_tf.py --rows {args.rows} --repeat {args.repeat}`\n\n{table}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
