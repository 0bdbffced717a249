#!/usr/bin/env python
"""Petastorm side of ``bench_loader.py``; runs with the interpreter of ``benchmarks/.petastorm-venv``.

Never imported by tensorstore_fs or by the main benchmark process (petastorm 0.13.1 needs numpy<2 and
pyarrow<16, which the project venv does not have). Sub-commands, each printing one JSON object as the
last line of stdout (``bench_suite.py`` uses ``suite-write`` / ``suite-read``, see the end of this file):

``write``  build the Petastorm dataset the way petastorm's docs show: a ``Unischema`` of
           ``ScalarCodec`` + ``NdarrayCodec`` fields, rows as dicts -> ``dict_to_spark_row`` -> a Spark
           (local mode) DataFrame written inside ``materialize_dataset``. The rows are the exact rows of
           the tensorstore_fs dataset: every Spark task reads one row group of a tsfs shard file with
           pyarrow and yields its rows as dicts of numpy values (so both systems hold the same bytes).
``read``   ``make_reader`` + ``petastorm.pytorch.DataLoader`` over that dataset: warm-up epochs, then timed
           epochs (``reader.reset()`` between epochs, as petastorm's DataLoader does on a new pass), every
           batch consumed like the tsfs one (every tensor read, one byte a page); peak RSS; optionally the shuffle
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
from pathlib import Path

# _common imports only the standard library at module level (numpy / pyarrow inside functions), so it loads
# in this virtualenv too. Spark tasks (``_rows_of_row_group``) must not use it: they are pickled by value
# and run in Spark's Python workers, where benchmarks/ is not on sys.path.
from _common import EMB_DIM, IMAGE_SHAPE, descendants, reset_hwm, spearman, status_kib, touch_pages

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


def spark_session(cores: int, driver_memory: str, spark_tmp: str):
    """A local-mode SparkSession (UI off, logs at ERROR) whose Python workers use this interpreter."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("petastorm-bench")
             .config("spark.driver.memory", driver_memory)
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", str(cores))
             .config("spark.local.dir", spark_tmp)
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def cmd_write(args) -> dict:
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row

    schema = unischema()
    tasks = [(f, g) for f in args.src_files for g in range(pq.ParquetFile(f).num_row_groups)]
    url = "file://" + os.path.abspath(args.dir)
    t0 = time.perf_counter()
    spark = spark_session(args.spark_cores, args.driver_memory, args.spark_tmp)
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
                touch_pages(v.numpy())
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


# ------------------------------------------------------------------------------------------------
# bench_suite.py: the suite's three datasets, make_reader and make_batch_reader
# ------------------------------------------------------------------------------------------------
# ``suite-write --task T.json``: for every dataset of the task, the Petastorm dataset written by Spark
# (local mode) inside ``materialize_dataset`` from the suite's .npy sources (Spark tasks read row ranges
# of the very arrays every other system writes), a plain Parquet store with list columns for
# ``make_batch_reader`` (written with pyarrow: Spark would be handed 12,288 Python ints per image row),
# and the 1000-file copies (the Spark-written rows re-cut with pyarrow, metadata as materialize_dataset
# writes it: a Spark write of 1000 files costs ~0.3 s a file here). ``suite-read --task T.json``: one reader's measures, through the
# same harness as every other system (``suite.phase.read_kinds``). Results go to the task's ``out``.

SUITE_TAB = tuple(f"f{i:02d}" for i in range(16))


def suite_unischema(kind: str):
    import numpy as np
    from petastorm.codecs import NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import FloatType, IntegerType, LongType

    if kind == "image":
        return unischema()
    fields = [UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
              UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False)]
    if kind == "tabular":
        fields += [UnischemaField(f, np.float32, (), ScalarCodec(FloatType()), False) for f in SUITE_TAB]
    else:
        fields.append(UnischemaField("tokens", np.int32, (None,), NdarrayCodec(), False))
    return Unischema(f"Suite{kind.title()}", fields)


def _suite_rows(task):
    """Spark task: rows a..b of one suite dataset, from its .npy sources, as dicts of numpy values."""
    import numpy as np

    src, kind, a, b = task

    def col(name):
        return np.load(os.path.join(src, name + ".npy"), mmap_mode="r")

    ids, labels = col("id"), col("label")
    if kind == "image":
        img, emb = col("image"), col("embedding")
        for i in range(a, b):
            yield {"id": np.int64(ids[i]), "label": np.int32(labels[i]), "image": np.array(img[i]),
                   "embedding": np.array(emb[i])}
    elif kind == "tabular":
        names = [f"f{j:02d}" for j in range(16)]
        feats = [col(n) for n in names]
        for i in range(a, b):
            row = {"id": np.int64(ids[i]), "label": np.int32(labels[i])}
            for n, f in zip(names, feats):
                row[n] = np.float32(f[i])
            yield row
    else:
        flat, off = col("tokens_flat"), col("tokens_offsets")
        for i in range(a, b):
            yield {"id": np.int64(ids[i]), "label": np.int32(labels[i]), "tokens": np.array(flat[off[i]:off[i + 1]])}


def _suite_spark_write(spark, kind: str, src: str, rows: int, url: str, parts: int, files, row_group_mb: int):
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row

    schema = suite_unischema(kind)
    bounds = [rows * i // parts for i in range(parts + 1)]
    tasks = [(src, kind, bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]
    with materialize_dataset(spark, url, schema, row_group_mb):
        rdd = (spark.sparkContext.parallelize(tasks, len(tasks))
               .flatMap(_suite_rows)
               .map(lambda r: dict_to_spark_row(schema, r)))
        df = spark.createDataFrame(rdd, schema.as_spark_schema())
        if files:
            df = df.coalesce(files)
        df.write.mode("overwrite").parquet(url)


def _suite_plain(kind: str, src: str, rows: int, out: str, files: int = 1) -> dict:
    """The plain Parquet store ``make_batch_reader`` reads: scalars, tensors as flattened list columns."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def col(name):
        return np.load(os.path.join(src, name + ".npy"), mmap_mode="r")

    arrays = {"id": pa.array(np.asarray(col("id"))), "label": pa.array(np.asarray(col("label")))}
    if kind == "image":
        for name in ("image", "embedding"):
            a = np.ascontiguousarray(col(name)).reshape(rows, -1)
            offs = np.arange(rows + 1, dtype=np.int32) * a.shape[1]
            arrays[name] = pa.ListArray.from_arrays(pa.array(offs), pa.array(a.reshape(-1)))
    elif kind == "tabular":
        for f in SUITE_TAB:
            arrays[f] = pa.array(np.asarray(col(f)))
    else:
        offs = np.asarray(col("tokens_offsets")).astype(np.int32)
        arrays["tokens"] = pa.ListArray.from_arrays(pa.array(offs), pa.array(np.asarray(col("tokens_flat"))))
    table = pa.table(arrays)
    rg_rows = max(1, (8 << 20) * rows // max(1, table.nbytes))
    os.makedirs(out, exist_ok=True)
    bounds = [rows * i // files for i in range(files + 1)]
    for i in range(files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), os.path.join(out, f"part-{i:05d}.parquet"),
                       row_group_size=rg_rows)
    return {"files": files, "row_group_rows": rg_rows}


def _suite_split_copy(src_dir: str, dst_dir: str, files: int) -> dict:
    """The Spark-written Petastorm dataset re-cut into ``files`` files of one row group each (the
    Spark-encoded rows as they are), with the ``_common_metadata`` ``materialize_dataset`` writes: the
    same pickled Unischema and the row groups of every file. Spark itself needs ~0.3 s a file here."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY

    shutil.rmtree(dst_dir, ignore_errors=True)
    os.makedirs(dst_dir)
    table = pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(os.path.join(src_dir, "*.parquet")))])
    n = table.num_rows
    bounds = [n * i // files for i in range(files + 1)]
    names = []
    for i in range(files):
        name = f"part-{i:05d}.parquet"
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(part, os.path.join(dst_dir, name), row_group_size=max(1, part.num_rows))
        names.append(name)
    schema = pq.read_metadata(os.path.join(src_dir, "_common_metadata")).schema.to_arrow_schema()
    md = dict(schema.metadata or {})
    md[ROW_GROUPS_PER_FILE_KEY] = json.dumps({name: 1 for name in names}).encode()
    pq.write_metadata(schema.with_metadata(md), os.path.join(dst_dir, "_common_metadata"))
    return {"files": files}


def cmd_suite_write(task: dict) -> dict:
    import shutil

    from suite import data
    from suite.harness import Phase, dir_bytes, peak_mib, release_memory, reset_hwm, rss_mib

    phase = Phase(task["out"], 1, 1, 0.0, 1)
    root = task["root"]
    t0 = time.perf_counter()
    spark = spark_session(task.get("spark_cores", 2), task.get("driver_memory", "4g"), task["spark_tmp"])
    spark.sparkContext.parallelize(range(8), 2).map(lambda x: x).collect()  # warm-up: start the Python workers
    t_spark = time.perf_counter() - t0
    shards = task.get("ttfb_shards", 0)
    try:
        for kind, rows in task["kinds"].items():
            src = os.path.join(root, kind, "src")
            s = data.spec(kind, rows)
            payload = data.payload_bytes(s, data.load_source(src, mmap=True))
            out = os.path.join(root, kind, "petastorm")

            def write(out=out, src=src, kind=kind, rows=rows, payload=payload) -> dict:
                shutil.rmtree(out, ignore_errors=True)
                release_memory()
                rss0 = rss_mib()
                hwm_ok = reset_hwm()
                t = time.perf_counter()
                _suite_spark_write(spark, kind, src, rows, "file://" + out, task.get("parts", 8),
                                   task.get("files", 2), task.get("row_group_mb", 8))
                dt = time.perf_counter() - t
                peak, kids = peak_mib()
                return {"status": "ok", "times_s": [dt], "median_s": dt, "reps": 1, "inner": 1,
                        "warmup_counted": True, "rows": rows, "payload_bytes": payload, "rows_s": rows / dt,
                        "gb_s": payload / dt / 1e9, "peak_rss_mib": peak, "rss_before_mib": rss0,
                        "rss_delta_mib": peak - rss0, "child_processes": kids, "spark_start_s": t_spark,
                        "rss_method": ("VmHWM reset before the measure" if hwm_ok else "VmHWM (whole process)")
                        + "; Spark's JVM and Python workers included",
                        "disk_bytes": dir_bytes(Path(out)),
                        "files": len(glob.glob(os.path.join(out, "*.parquet")))}

            phase.guarded(f"{kind}/petastorm/write", write)
            phase.guarded(f"{kind}/petastorm-plain/prep",
                          lambda kind=kind, src=src, rows=rows: {"status": "ok", **_suite_plain(
                              kind, src, rows, os.path.join(root, kind, "petastorm-plain"))})
            if shards and os.path.isdir(out):
                def ttfb(out=out, kind=kind, rows=rows) -> dict:
                    dst = os.path.join(root, kind, "petastorm-ttfb")
                    t = time.perf_counter()
                    info = _suite_split_copy(out, dst, min(shards, rows))
                    return {"status": "ok", "seconds": time.perf_counter() - t, **info}

                phase.guarded(f"{kind}/petastorm/ttfb-prep", ttfb)
            if shards:
                phase.guarded(f"{kind}/petastorm-plain/ttfb-prep",
                              lambda kind=kind, src=src, rows=rows: {"status": "ok", **_suite_plain(
                                  kind, src, rows, os.path.join(root, kind, "petastorm-plain-ttfb"),
                                  min(shards, rows))})
    finally:
        spark.stop()
    return {"ok": True, "out": task["out"]}


class SuiteReaders:
    """``make_reader`` + ``petastorm.pytorch.DataLoader`` / ``make_batch_reader`` + ``BatchedDataLoader``
    for ``suite.phase.read_kinds``: a fresh reader per pass (``num_epochs=1``: exact row counts; the
    previous pass's reader is stopped and joined untimed), thread pool of 2 workers, batches of 256."""

    FORMAT = "petastorm"

    @staticmethod
    def reader(name: str, s, ctx: dict, measure: str):
        import torch
        from petastorm import make_batch_reader, make_reader
        from petastorm.predicates import in_lambda
        from petastorm.pytorch import BatchedDataLoader, DataLoader

        from suite.data import BATCH, SHUFFLE_BUFFER
        from suite.harness import Skip, consume

        torch.set_num_threads(1)
        batch = name == "petastorm-batch"
        fmt = "petastorm-plain" if batch else "petastorm"
        path = ctx["paths"][fmt]
        if measure == "ttfb":
            path = ctx["ttfb_paths"].get(fmt)
            if path is None:
                raise Skip("no 1000-file copy")
        if not os.path.isdir(path):
            raise Skip(f"{fmt} store missing (its write failed)")
        url = "file://" + path
        shuffle = measure == "shuffle"
        kw: dict = {"reader_pool_type": "thread", "workers_count": 2, "num_epochs": 1, "shuffle_row_groups": shuffle}
        if measure == "filter":  # petastorm's own row predicate (reads ``id`` first, then matching row groups)
            k = s.filter_k
            kw["predicate"] = in_lambda(["id"], lambda v: v < k)
        if measure == "project":
            kw["schema_fields"] = ["label"]
        keys = {"label": "label"} if measure == "project" else {c: c for c in s.names}
        id_key = None if measure == "project" else "id"
        cap = SHUFFLE_BUFFER if shuffle else 0
        limit = 1 if measure == "ttfb" else None
        collate = {}
        if s.kind == "tokens" and not batch:
            from torch.utils.data.dataloader import default_collate

            def ragged_collate(rows):
                return {k: ([torch.as_tensor(r[k]) for r in rows] if k == "tokens" else default_collate([r[k] for r in rows]))
                        for k in rows[0]}
            collate = {"collate_fn": ragged_collate}
        open_readers: list = []

        def stop() -> None:
            while open_readers:
                r = open_readers.pop()
                r.stop()
                r.join()

        def run(epoch: int):
            if batch:
                r = make_batch_reader(url, seed=epoch if shuffle else None, **kw)
                dl = BatchedDataLoader(r, batch_size=BATCH, shuffling_queue_capacity=cap)
            else:
                r = make_reader(url, seed=epoch if shuffle else None, **kw)
                dl = DataLoader(r, batch_size=BATCH, shuffling_queue_capacity=cap, **collate)
            open_readers.append(r)
            try:
                return consume(dl, keys, id_key, limit=limit)
            except RuntimeError as e:  # a limitation of the reader, not a failed run: say so
                if batch and "expected to be the same length" in str(e):
                    raise Skip("BatchedDataLoader cannot batch variable-length rows (Petastorm: 'Length of all "
                               "values in column ... are expected to be the same length')") from None
                raise

        meta = {"before": stop, "close": stop}
        if shuffle:
            meta["shuffle_buffer"] = cap
        return run, meta


def cmd_suite_read(task: dict) -> dict:
    from suite import phase as suite_phase

    suite_phase.read_kinds(task, suite_phase.new_phase(task), SuiteReaders)
    return {"ok": True, "out": task["out"]}


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
    for name in ("suite-write", "suite-read"):
        sub.add_parser(name).add_argument("--task", required=True, help="task JSON written by bench_suite.py")
    args = p.parse_args(argv)
    import logging
    import warnings

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("petastorm").setLevel(logging.ERROR)
    if args.cmd.startswith("suite-"):
        warnings.filterwarnings("ignore")
        task = json.loads(Path(args.task).read_text())
        res = cmd_suite_write(task) if args.cmd == "suite-write" else cmd_suite_read(task)
    else:
        res = cmd_write(args) if args.cmd == "write" else cmd_read(args)
    sys.stdout.flush()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
