#!/usr/bin/env python
"""The storage benchmark's peers, MosaicML Streaming (MDS) and Lance, against the same S3 server;
runs with the interpreter of ``benchmarks/.storage-peers-venv`` (``storage_peers_venv.py``), as a script.

It imports the benchmarks package's standard-library modules (``data``, ``consume``, ``harness``,
``latency_proxy``): the same rows, consumer, timing and peak RSS as the tsfs measures. Sub-commands,
each printing one JSON object as the last line of stdout:

``check``        import both peers (the venv's smoke test)
``write-mds``    ``streaming.MDSWriter(out="s3://...")`` of the rows of a ``.npy`` source folder (the
                 arrays the tsfs dataset was written from): ``id int64``, ``label int32``, ``image``
                 and ``embedding`` as typed ``ndarray`` columns, no compression (MDS's defaults)
``write-lance``  ``lance.write_dataset(table, "s3://...")`` of the same rows (tensors as fixed-size lists)
``read``         one reader, warm-up passes then timed ones (``harness.Phase``; a first pass longer than
                 ``--slow-s`` is timed, and no pass starts after ``--budget-s``): MDS
                 ``StreamingDataset(remote, local=<fresh folder every pass>)`` in a torch ``DataLoader``
                 (every pass downloads every shard again: a first epoch); Lance ``to_batches`` (sequential)
                 or ``take`` of each shuffled batch's rows. Optionally counts requests at the latency proxy.

S3 credentials and endpoint come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``S3_ENDPOINT_URL``: the variable MosaicML Streaming reads).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import shutil
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

# the benchmarks package, not benchmarks/ itself (its module names would shadow other packages')
sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks import data  # noqa: E402
from benchmarks.consume import PassOut, consume  # noqa: E402
from benchmarks.harness import Phase  # noqa: E402
from benchmarks.latency_proxy import control  # noqa: E402

BATCH = data.BATCH


def stub_torchvision() -> None:
    """An empty stand-in for ``torchvision``: ``streaming/__init__`` imports ``streaming.vision``,
    which imports ``torchvision.datasets.VisionDataset`` and ``transforms.functional.to_tensor`` at its
    top level; nothing here calls them (the PyPI torchvision wheel does not load with the CPU torch)."""
    if "torchvision" in sys.modules:
        return
    mods = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.datasets", "torchvision.transforms",
                                             "torchvision.transforms.functional")}

    class VisionDataset:  # never instantiated
        pass

    def to_tensor(*_: Any, **__: Any) -> Any:
        raise RuntimeError("torchvision stand-in: not available in this benchmark venv")

    mods["torchvision.datasets"].VisionDataset = VisionDataset
    mods["torchvision.transforms.functional"].to_tensor = to_tensor
    mods["torchvision"].datasets = mods["torchvision.datasets"]
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    for name, m in mods.items():
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = m


def lance_options() -> dict[str, str]:
    return {"aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "aws_endpoint": os.environ["S3_ENDPOINT_URL"], "aws_region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "allow_http": "true"}


def s3_sizes(url: str) -> list[int]:
    """Sizes of the objects under ``url`` (boto3, straight from the server)."""
    import boto3

    bucket, _, prefix = url[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    sizes, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix.rstrip("/") + "/"}
        if token:
            kw["ContinuationToken"] = token
        r = s3.list_objects_v2(**kw)
        sizes += [o["Size"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            return sizes
        token = r["NextContinuationToken"]


def write_mds(a: argparse.Namespace) -> dict[str, Any]:
    stub_torchvision()
    from streaming import MDSWriter

    src = data.load_source(a.src, mmap=True)
    n = len(src["id"])
    cols = {"id": "int64", "label": "int32", "image": "ndarray:uint8:" + ",".join(map(str, data.IMAGE_SHAPE)),
            "embedding": f"ndarray:float32:{data.EMB_DIM}"}
    t0 = time.perf_counter()
    with MDSWriter(out=a.remote, columns=cols, progress_bar=False) as w:
        for i in range(n):
            w.write({"id": src["id"][i], "label": src["label"][i], "image": src["image"][i],
                     "embedding": src["embedding"][i]})
    dt = time.perf_counter() - t0
    sizes = s3_sizes(a.remote)
    return {"write_s": dt, "rows": n, "files": len(sizes), "nbytes": sum(sizes), "columns": cols}


def lance_table(src: dict[str, Any]) -> Any:
    import numpy as np
    import pyarrow as pa

    img = np.ascontiguousarray(src["image"]).reshape(-1)
    emb = np.ascontiguousarray(src["embedding"]).reshape(-1)
    return pa.table({"id": pa.array(src["id"]), "label": pa.array(src["label"]),
                     "image": pa.FixedSizeListArray.from_arrays(pa.array(img), int(np.prod(data.IMAGE_SHAPE))),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb), data.EMB_DIM)})


def write_lance(a: argparse.Namespace) -> dict[str, Any]:
    import lance

    table = lance_table(data.load_source(a.src))
    t0 = time.perf_counter()
    ds = lance.write_dataset(table, a.uri, storage_options=lance_options())
    dt = time.perf_counter() - t0
    sizes = s3_sizes(a.uri)
    return {"write_s": dt, "rows": table.num_rows, "files": len(sizes), "nbytes": sum(sizes),
            "fragments": len(ds.get_fragments()), "lance": lance.__version__}


def _lance_batch(rb: Any) -> dict[str, Any]:
    """numpy views of a Lance RecordBatch / Table (tensors reshaped, zero-copy where Arrow allows)."""
    def col(name: str) -> Any:
        c = rb.column(name)
        if hasattr(c, "combine_chunks"):
            c = c.combine_chunks()
        return c

    n = rb.num_rows
    return {"id": col("id").to_numpy(), "label": col("label").to_numpy(),
            "image": col("image").flatten().to_numpy().reshape(n, *data.IMAGE_SHAPE),
            "embedding": col("embedding").flatten().to_numpy().reshape(n, data.EMB_DIM)}


def read(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    n = a.rows
    proxy: list[dict[str, Any]] = []
    cleanup: list[Any] = []
    info: dict[str, Any] = {"system": a.system, "mode": a.mode, "num_workers": a.workers}

    def before() -> None:
        for fn in cleanup:
            fn()
        cleanup.clear()
        if a.ctl:
            proxy.append(control(a.ctl, "stats"))
            control(a.ctl, "reset")

    if a.system == "mds":
        stub_torchvision()
        import torch
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
        from torch.utils.data import DataLoader

        torch.set_num_threads(1)
        work = Path(a.work)

        def run(epoch: int) -> PassOut:
            local = work / f"mds-local-{uuid.uuid4().hex[:8]}"
            ds = StreamingDataset(remote=a.remote, local=str(local), batch_size=BATCH, shuffle=a.mode == "shuf",
                                  shuffle_seed=epoch + 1)
            dl = DataLoader(ds, batch_size=BATCH, num_workers=a.workers)
            out = consume(dl, id_key="id")

            def drop(dl: Any = dl, ds: Any = ds, local: Path = local) -> None:
                del dl, ds
                clean_stale_shared_memory()
                shutil.rmtree(local, ignore_errors=True)
            cleanup.append(drop)
            return out
        info["how"] = (f"StreamingDataset(remote, local=<fresh folder per pass>, batch_size={BATCH}, "
                       f"shuffle={a.mode == 'shuf'}) + DataLoader(batch_size={BATCH}, num_workers={a.workers})")
    else:
        import lance

        ds = lance.dataset(a.uri, storage_options=lance_options())
        if a.mode == "seq":
            def run(epoch: int) -> PassOut:
                return consume((_lance_batch(rb) for rb in ds.to_batches(batch_size=BATCH)), id_key="id")
            info["how"] = f"lance.dataset(uri).to_batches(batch_size={BATCH})"
        else:
            def shuffled(epoch: int):
                perm = np.random.default_rng(epoch).permutation(n)
                for s in range(0, n, BATCH):
                    yield _lance_batch(ds.take(np.sort(perm[s:s + BATCH])))

            def run(epoch: int) -> PassOut:
                return consume(shuffled(epoch), id_key="id")
            info["how"] = f"lance.dataset(uri).take(sorted indices of each {BATCH}-row batch of a random permutation)"

    last: list[PassOut] = []

    def counted(epoch: int) -> PassOut:
        last[:] = [run(epoch)]
        return last[0]

    # MDS's StreamingDataset may hand some rows twice and others not at all in an epoch (it pads
    # the workers' partitions): the row count is checked, its distinct ids are reported
    expect = None if a.system == "mds" else "all"
    ph = Phase(None, a.repeat, a.warmup, slow_s=a.slow_s)
    ph.set_budget(a.budget_s)
    try:
        res = ph.measure(counted, expected_rows=n, expect_ids=expect, n=n, k=n, payload=n * data.ROW_NBYTES,
                         before=before)
        res["first_pass_s"] = ph.last_pass_s
    finally:
        before()
    if last and last[0].ids is not None:
        ids = np.concatenate(last[0].ids)
        res["distinct_rows"] = int(len(np.unique(ids)))
        res["rows_delivered"] = int(len(ids))
    res.update(info)
    if a.ctl:
        res["proxy_passes"] = proxy[1:]  # the stats of each pass (the first entry: setup)
        res["proxy_setup"] = proxy[0] if proxy else None
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check")
    w = sub.add_parser("write-mds")
    w.add_argument("--src", required=True)
    w.add_argument("--remote", required=True)
    w = sub.add_parser("write-lance")
    w.add_argument("--src", required=True)
    w.add_argument("--uri", required=True)
    r = sub.add_parser("read")
    r.add_argument("--system", choices=["mds", "lance"], required=True)
    r.add_argument("--mode", choices=["seq", "shuf"], default="seq")
    r.add_argument("--workers", type=int, default=0)
    r.add_argument("--remote", help="MDS: s3:// folder")
    r.add_argument("--uri", help="Lance: s3:// dataset")
    r.add_argument("--work", help="MDS: where its local caches go")
    r.add_argument("--rows", type=int, required=True)
    r.add_argument("--repeat", type=int, default=1)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--ctl", type=int, default=0, help="control port of the latency proxy (0: none)")
    r.add_argument("--slow-s", type=float, default=float("inf"), help="a first pass this long counts as timed")
    r.add_argument("--budget-s", type=float, default=float("inf"), help="no timed pass starts after this")
    a = p.parse_args()
    if a.cmd == "check":
        stub_torchvision()
        import lance
        import streaming
        out = {"streaming": streaming.__version__, "lance": lance.__version__}
    elif a.cmd == "write-mds":
        out = write_mds(a)
    elif a.cmd == "write-lance":
        out = write_lance(a)
    else:
        out = read(a)
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
