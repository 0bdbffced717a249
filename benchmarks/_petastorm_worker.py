#!/usr/bin/env python
"""Petastorm side of the loader benchmark and the suite; runs with the interpreter of
``benchmarks/.petastorm-venv`` (see ``benchmarks/petastorm_venv.py``), as a script.

Never imported by tensorstore_fs or by the main benchmark process (petastorm 0.13.1 needs numpy<2 and
pyarrow<15, which the project venv does not have). It imports the benchmarks package's standard-library
modules (``data``, ``consume``, ``harness``, ``suite.phase``): the same columns, consumer, timing and peak
RSS as every other system. Sub-commands, each printing one JSON object as the last line of stdout:

``write``        the loader's Petastorm dataset: the image rows of a ``.npy`` source folder (the very
                 arrays the tsfs dataset was written from), written by Spark (local mode) inside
                 ``materialize_dataset`` (:func:`spark_write`)
``read``         ``make_reader`` + ``petastorm.pytorch.DataLoader`` over it: warm-up epochs, then timed
                 epochs (the loader resets the reader between passes), every batch consumed like the tsfs
                 one; peak RSS; optionally the shuffle quality of one epoch (``id`` = storage row id)
``suite-write``  for every dataset of the task: the Spark-written Petastorm dataset, a plain Parquet store
                 with list columns for ``make_batch_reader`` (written with pyarrow: Spark would be handed
                 12,288 Python ints per image row), and the 1000-file copies (the Spark-written rows re-cut
                 with pyarrow, metadata as materialize_dataset writes it: a Spark write of 1000 files costs
                 ~0.3 s a file here)
``suite-read``   one reader's measures, through the suite's harness (``suite.phase.read_kinds``)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
from pathlib import Path

# the benchmarks package, not benchmarks/ itself (its module names would shadow other packages')
sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks import data  # noqa: E402
from benchmarks.consume import consume, spearman  # noqa: E402
from benchmarks.harness import PeakRSS, Phase, Skip, alternate, dir_bytes, fresh_each_pass, summary  # noqa: E402


def unischema(kind: str):
    """The Unischema of a benchmark dataset: ``ScalarCodec`` scalars, ``NdarrayCodec`` tensors."""
    import numpy as np
    from petastorm.codecs import NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import FloatType, IntegerType, LongType

    spark_type = {"int64": LongType, "int32": IntegerType, "float32": FloatType}
    return Unischema(f"Suite{kind.title()}", [
        UnischemaField(c.name, np.dtype(c.dtype).type, c.shape,
                       ScalarCodec(spark_type[c.dtype]()) if c.is_scalar else NdarrayCodec(), False)
        for c in data.spec(kind, 0).cols])


def _rows(task):
    """Spark task: rows a..b of one dataset, from its .npy sources, as dicts of numpy values. Pickled by
    value and run in Spark's Python workers, where the benchmarks package is not importable: no calls into it."""
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
    spark.sparkContext.parallelize(range(8), 2).map(lambda x: x).collect()  # warm-up: start the Python workers
    return spark


def spark_write(spark, kind: str, src: str, rows: int, out: str, parts: int, files: int, row_group_mb: int) -> dict:
    """The dataset written the way petastorm's docs show: rows as dicts -> ``dict_to_spark_row`` -> a
    Spark DataFrame of ``parts`` tasks, coalesced to ``files`` files, written inside ``materialize_dataset``."""
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row

    schema = unischema(kind)
    url = "file://" + os.path.abspath(out)
    bounds = [rows * i // parts for i in range(parts + 1)]
    tasks = [(src, kind, bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]
    with materialize_dataset(spark, url, schema, row_group_mb):
        rdd = (spark.sparkContext.parallelize(tasks, len(tasks))
               .flatMap(_rows)
               .map(lambda r: dict_to_spark_row(schema, r)))
        df = spark.createDataFrame(rdd, schema.as_spark_schema())
        df.coalesce(files).write.mode("overwrite").parquet(url)
    paths = sorted(glob.glob(os.path.join(out, "*.parquet")))
    rgs, codecs = [], set()
    for f in paths:
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rgs.append(md.row_group(g).num_rows)
            codecs.update(md.row_group(g).column(c).compression for c in range(md.row_group(g).num_columns))
    return {"url": url, "files": paths, "rows": sum(rgs), "nbytes": dir_bytes(Path(out)), "rg_rows": rgs,
            "compression": sorted(codecs)}


def cmd_write(args) -> dict:
    t0 = time.perf_counter()
    spark = spark_session(args.spark_cores, args.driver_memory, args.spark_tmp)
    t_spark = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = len(data.load_source(args.src, mmap=True)["id"])
    info = spark_write(spark, "image", args.src, rows, args.dir, args.parts, args.files, args.row_group_mb)
    t_write = time.perf_counter() - t1
    spark.stop()
    return {**info, "spark_start_s": t_spark, "write_s": t_write}


def _storage_positions(dir_: str):
    """id -> (storage position, file index, global row-group index) of the Petastorm dataset."""
    import numpy as np
    import pyarrow.parquet as pq

    ids, files, groups = [], [], []
    for fi, f in enumerate(sorted(glob.glob(os.path.join(dir_, "*.parquet")))):
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            col = pf.read_row_group(g, columns=["id"]).column("id").to_numpy()
            ids.append(col)
            files.append(np.full(len(col), fi))
            groups.append(np.full(len(col), len(groups)))
    ids = np.concatenate(ids)
    out = [np.empty(int(ids.max()) + 1, np.int64) for _ in range(3)]
    for a, v in zip(out, (np.arange(len(ids)), np.concatenate(files), np.concatenate(groups))):
        a[ids] = v
    return out


def cmd_read(args) -> dict:
    import numpy as np
    import torch
    from petastorm import make_reader
    from petastorm.pytorch import DataLoader

    torch.set_num_threads(1)
    reader = make_reader("file://" + os.path.abspath(args.dir), reader_pool_type=args.pool, workers_count=args.workers,
                         num_epochs=1, shuffle_row_groups=args.shuffle, shuffle_rows=args.shuffle,
                         seed=args.seed if args.shuffle else None)
    loader = DataLoader(reader, batch_size=args.batch_size)
    mem = PeakRSS()
    runs = alternate({"epoch": lambda: consume(loader)}, args.repeat, args.warmup)["epoch"]
    quality = None
    if args.quality:
        batches = consume(loader, id_key="id").ids
        pos, f_of, g_of = _storage_positions(args.dir)
        out_ids = np.concatenate(batches)
        quality = {"spearman": spearman(np.arange(len(out_ids)), pos[out_ids]),
                   "shards_per_batch": float(np.mean([len(np.unique(f_of[b])) for b in batches])),
                   "row_groups_per_batch": float(np.mean([len(np.unique(g_of[b])) for b in batches])),
                   "batches": len(batches), "rows": int(len(out_ids)), "distinct_rows": int(len(np.unique(out_ids)))}
    rows = runs[-1][1].rows
    res = summary([t for t, _ in runs], rows, rows * data.ROW_NBYTES, **mem.read(), quality=quality, pool=args.pool,
                  workers=args.workers, shuffle=args.shuffle)
    reader.stop()
    reader.join()
    return res


def _suite_plain(kind: str, src: str, rows: int, out: str, files: int = 1) -> dict:
    """The plain Parquet store ``make_batch_reader`` reads: scalars, tensors as flattened list columns."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = data.load_source(src, mmap=True)
    arrays = {"id": pa.array(np.asarray(source["id"])), "label": pa.array(np.asarray(source["label"]))}
    if kind == "image":
        for name in ("image", "embedding"):
            a = np.ascontiguousarray(source[name]).reshape(rows, -1)
            offs = np.arange(rows + 1, dtype=np.int32) * a.shape[1]
            arrays[name] = pa.ListArray.from_arrays(pa.array(offs), pa.array(a.reshape(-1)))
    elif kind == "tabular":
        for f in data.TAB_FEATURES:
            arrays[f] = pa.array(np.asarray(source[f]))
    else:
        offs = np.asarray(source["tokens_offsets"]).astype(np.int32)
        arrays["tokens"] = pa.ListArray.from_arrays(pa.array(offs), pa.array(np.asarray(source["tokens_flat"])))
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
    phase = Phase(task["out"], 1, 1)
    root = task["root"]
    t0 = time.perf_counter()
    spark = spark_session(task.get("spark_cores", 2), task.get("driver_memory", "4g"), task["spark_tmp"])
    t_spark = time.perf_counter() - t0
    shards = task.get("ttfb_shards", 0)

    def timed_write(kind: str, src: str, rows: int, out: str) -> dict:
        shutil.rmtree(out, ignore_errors=True)
        mem = PeakRSS()
        t = time.perf_counter()
        info = spark_write(spark, kind, src, rows, out, task.get("parts", 8), task.get("files", 2),
                           task.get("row_group_mb", 8))
        dt = time.perf_counter() - t
        m = mem.read()
        m["rss_method"] += "; Spark's JVM and Python workers included"
        payload = data.column_bytes(data.spec(kind, rows), data.load_source(src, mmap=True))
        return summary([dt], rows, payload, inner=1, warmup_counted=True, spark_start_s=t_spark,
                       disk_bytes=info["nbytes"], files=len(info["files"]), **m)

    def split_copy(out: str, dst: str, files: int) -> dict:
        t = time.perf_counter()
        info = _suite_split_copy(out, dst, files)
        return {"status": "ok", "seconds": time.perf_counter() - t, **info}

    try:
        for kind, rows in task["kinds"].items():
            src = os.path.join(root, kind, "src")
            out = os.path.join(root, kind, "petastorm")
            plain = os.path.join(root, kind, "petastorm-plain")
            phase.guarded(f"{kind}/petastorm/write", lambda: timed_write(kind, src, rows, out))
            phase.guarded(f"{kind}/petastorm-plain/prep",
                          lambda: {"status": "ok", **_suite_plain(kind, src, rows, plain)})
            if shards and os.path.isdir(out):
                phase.guarded(f"{kind}/petastorm/ttfb-prep", lambda: split_copy(
                    out, os.path.join(root, kind, "petastorm-ttfb"), min(shards, rows)))
            if shards:
                phase.guarded(f"{kind}/petastorm-plain/ttfb-prep", lambda: {"status": "ok", **_suite_plain(
                    kind, src, rows, plain + "-ttfb", min(shards, rows))})
    finally:
        spark.stop()
    return {"ok": True, "out": task["out"]}


class SuiteReaders:
    """``make_reader`` + ``petastorm.pytorch.DataLoader`` / ``make_batch_reader`` + ``BatchedDataLoader``
    for ``benchmarks.suite.phase.read_kinds``: a fresh reader per pass (``num_epochs=1``: exact row counts; the
    previous pass's reader is stopped and joined untimed), thread pool of 2 workers, batches of 256."""

    FORMAT = "petastorm"

    @staticmethod
    def reader(name: str, s, ctx: dict, measure: str):
        import torch
        from petastorm import make_batch_reader, make_reader
        from petastorm.predicates import in_lambda
        from petastorm.pytorch import BatchedDataLoader, DataLoader

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
        cap = data.SHUFFLE_BUFFER if shuffle else 0
        limit = 1 if measure == "ttfb" else None
        collate = {}
        if s.kind == "tokens" and not batch:
            from torch.utils.data.dataloader import default_collate

            def ragged_collate(rows):
                return {k: ([torch.as_tensor(r[k]) for r in rows] if k == "tokens" else default_collate([r[k] for r in rows]))
                        for k in rows[0]}
            collate = {"collate_fn": ragged_collate}

        def make(epoch: int):
            if batch:
                return BatchedDataLoader(make_batch_reader(url, seed=epoch if shuffle else None, **kw),
                                         batch_size=data.BATCH, shuffling_queue_capacity=cap)
            return DataLoader(make_reader(url, seed=epoch if shuffle else None, **kw), batch_size=data.BATCH,
                              shuffling_queue_capacity=cap, **collate)

        def eat(dl):
            try:
                return consume(dl, keys, id_key, limit=limit)
            except RuntimeError as e:  # a limitation of the reader, not a failed run: say so
                if batch and "expected to be the same length" in str(e):
                    raise Skip("BatchedDataLoader cannot batch variable-length rows (Petastorm: 'Length of all "
                               "values in column ... are expected to be the same length')") from None
                raise

        def stop(dl) -> None:
            dl.reader.stop()
            dl.reader.join()

        run, meta = fresh_each_pass(make, eat, stop)
        if shuffle:
            meta["shuffle_buffer"] = cap
        return run, meta


def cmd_suite_read(task: dict) -> dict:
    from benchmarks.suite import phase as suite_phase

    suite_phase.read_kinds(task, suite_phase.new_phase(task), SuiteReaders)
    return {"ok": True, "out": task["out"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--dir", required=True)
    w.add_argument("--src", required=True, help="folder of the image rows' .npy sources")
    w.add_argument("--files", type=int, default=2, help="output Parquet files (Spark coalesce)")
    w.add_argument("--parts", type=int, default=8, help="Spark tasks the rows are split into")
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
        sub.add_parser(name).add_argument("--task", required=True, help="task JSON written by the suite")
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
