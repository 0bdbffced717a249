#!/usr/bin/env python
"""Petastorm side of ``bench_loader.py``; runs with the interpreter of ``benchmarks/.petastorm-venv``.

Never imported by tensorstore_fs or by the main benchmark process (petastorm 0.13.1 needs numpy<2 and
pyarrow<16, which the project venv does not have). Two sub-commands, each printing one JSON object as the
last line of stdout:

``write``  build the Petastorm dataset the way petastorm's docs show: a ``Unischema`` of
           ``ScalarCodec`` + ``NdarrayCodec`` fields, rows as dicts -> ``dict_to_spark_row`` -> a Spark
           (local mode) DataFrame written inside ``materialize_dataset``. The rows are the exact rows of
           the tensorstore_fs dataset: every Spark task reads one row group of a tsfs shard file with
           pyarrow and yields its rows as dicts of numpy values (so both systems hold the same bytes).
``read``   ``make_reader`` + ``petastorm.pytorch.DataLoader`` over that dataset: warm-up epochs, then timed
           epochs (``reader.reset()`` between epochs, as petastorm's DataLoader does on a new pass), every
           batch consumed like the tsfs one (one element of every tensor); peak RSS; optionally the shuffle
           quality of one epoch (the ``id`` column is the storage row id of the source data).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

# _common imports only the standard library at module level (numpy / pyarrow inside functions), so it loads
# in this virtualenv too. Spark tasks (``_rows_of_row_group``) must not use it: they are pickled by value
# and run in Spark's Python workers, where benchmarks/ is not on sys.path.
from _common import EMB_DIM, IMAGE_SHAPE, descendants, reset_hwm, spearman, status_kib

def unischema():
    import numpy as np
    from petastorm.codecs import NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import IntegerType, LongType

    return Unischema("BenchSchema", [
        UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
        UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
        UnischemaField("image", np.uint8, IMAGE_SHAPE, NdarrayCodec(), False),
        UnischemaField("embedding", np.float32, (EMB_DIM,), NdarrayCodec(), False),
    ])


def _rows_of_row_group(task):
    """Spark task: the rows of one row group of one tsfs shard file, as dicts of numpy values."""
    import numpy as np
    import pyarrow.parquet as pq

    path, rg = task
    t = pq.ParquetFile(path).read_row_group(rg, columns=["id", "label", "image", "embedding"])
    n = t.num_rows

    def fixed(name, dtype, shape):
        arr = t.column(name).combine_chunks()
        width = arr.type.byte_width
        flat = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=n * width, offset=arr.offset * width)
        return flat.view(dtype).reshape((n, *shape))

    ids = t.column("id").to_numpy()
    labels = t.column("label").to_numpy()
    images = fixed("image", np.uint8, IMAGE_SHAPE)
    embs = fixed("embedding", np.float32, (EMB_DIM,))
    for i in range(n):
        yield {"id": np.int64(ids[i]), "label": np.int32(labels[i]), "image": images[i].copy(),
               "embedding": embs[i].copy()}


def cmd_write(args) -> dict:
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    schema = unischema()
    tasks = [(f, g) for f in args.src_files for g in range(pq.ParquetFile(f).num_row_groups)]
    url = "file://" + os.path.abspath(args.dir)
    t0 = time.perf_counter()
    spark = (SparkSession.builder.master(f"local[{args.spark_cores}]").appName("petastorm-bench")
             .config("spark.driver.memory", args.driver_memory)
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", str(args.spark_cores))
             .config("spark.local.dir", args.spark_tmp)
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    t_spark = time.perf_counter() - t0
    t1 = time.perf_counter()
    with materialize_dataset(spark, url, schema, args.row_group_mb):
        rdd = (spark.sparkContext.parallelize(tasks, len(tasks))
               .flatMap(_rows_of_row_group)
               .map(lambda r: dict_to_spark_row(schema, r)))
        (spark.createDataFrame(rdd, schema.as_spark_schema())
         .coalesce(args.files)
         .write.mode("overwrite")
         .parquet(url))
    t_write = time.perf_counter() - t1
    spark.stop()
    files = sorted(glob.glob(os.path.join(args.dir, "*.parquet")))
    rgs, rows, nbytes, codecs = [], 0, 0, set()
    for f in files:
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rgs.append(md.row_group(g).num_rows)
            for c in range(md.row_group(g).num_columns):
                codecs.add(md.row_group(g).column(c).compression)
        rows += md.num_rows
        nbytes += os.path.getsize(f)
    return {"url": url, "files": files, "rows": rows, "nbytes": nbytes, "rg_rows": rgs, "compression": sorted(codecs),
            "spark_start_s": t_spark, "write_s": t_write}


def _storage_positions(dir_: str):
    """id -> (storage position, file index, global row-group index) of the Petastorm dataset."""
    import numpy as np
    import pyarrow.parquet as pq

    ids, files, groups = [], [], []
    g_all = 0
    for fi, f in enumerate(sorted(glob.glob(os.path.join(dir_, "*.parquet")))):
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            col = pf.read_row_group(g, columns=["id"]).column("id").to_numpy()
            ids.append(col)
            files.append(np.full(len(col), fi))
            groups.append(np.full(len(col), g_all))
            g_all += 1
    ids = np.concatenate(ids)
    n = int(ids.max()) + 1
    pos = np.empty(n, np.int64)
    pos[ids] = np.arange(len(ids))
    f_of = np.empty(n, np.int64)
    f_of[ids] = np.concatenate(files)
    g_of = np.empty(n, np.int64)
    g_of[ids] = np.concatenate(groups)
    return pos, f_of, g_of


def cmd_read(args) -> dict:
    import numpy as np
    import torch
    from petastorm import make_reader
    from petastorm.pytorch import DataLoader

    torch.set_num_threads(1)
    url = "file://" + os.path.abspath(args.dir)
    reader = make_reader(url, reader_pool_type=args.pool, workers_count=args.workers, num_epochs=1,
                         shuffle_row_groups=args.shuffle, shuffle_rows=args.shuffle,
                         seed=args.seed if args.shuffle else None)
    loader = DataLoader(reader, batch_size=args.batch_size)
    hwm_method = "VmHWM reset after setup" if reset_hwm() else "VmHWM (includes setup)"

    def epoch(collect: bool):
        rows, batches = 0, []
        for b in loader:
            n = len(b["id"])
            for v in b.values():
                if len(v) != n:
                    raise AssertionError("ragged batch")
                v.reshape(-1)[0].item()
            if collect:
                batches.append(b["id"].numpy().copy())
            rows += n
        return rows, batches

    for _ in range(args.warmup):
        epoch(False)
    times = []
    rows = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        rows, _ = epoch(False)
        times.append(time.perf_counter() - t0)
    quality = None
    if args.quality:
        _, batches = epoch(True)
        pos, f_of, g_of = _storage_positions(args.dir)
        out_ids = np.concatenate(batches)
        quality = {
            "spearman": spearman(np.arange(len(out_ids)), pos[out_ids]),
            "shards_per_batch": float(np.mean([len(np.unique(f_of[b])) for b in batches])),
            "row_groups_per_batch": float(np.mean([len(np.unique(g_of[b])) for b in batches])),
            "batches": len(batches),
            "rows": int(len(out_ids)),
            "distinct_rows": int(len(np.unique(out_ids))),
        }
    peak_kib = status_kib("VmHWM") or 0
    kids = descendants(os.getpid())
    peak_kib += sum(status_kib("VmHWM", str(k)) or 0 for k in kids)
    reader.stop()
    reader.join()
    return {"times_s": times, "median_s": statistics.median(times), "rows": rows,
            "peak_rss_mib": peak_kib / 1024, "rss_method": hwm_method, "child_processes": len(kids),
            "quality": quality, "pool": args.pool, "workers": args.workers, "shuffle": args.shuffle}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--dir", required=True)
    w.add_argument("--src-files", nargs="+", required=True)
    w.add_argument("--files", type=int, default=2, help="output Parquet files (Spark coalesce)")
    w.add_argument("--row-group-mb", type=int, default=8)
    w.add_argument("--spark-cores", type=int, default=2)
    w.add_argument("--driver-memory", default="4g")
    w.add_argument("--spark-tmp", default="/tmp")
    r = sub.add_parser("read")
    r.add_argument("--dir", required=True)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--pool", default="thread", choices=["thread", "process", "dummy"])
    r.add_argument("--shuffle", action="store_true")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--repeat", type=int, default=2)
    r.add_argument("--quality", action="store_true")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("petastorm").setLevel(logging.ERROR)
    res = cmd_write(args) if args.cmd == "write" else cmd_read(args)
    sys.stdout.flush()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
