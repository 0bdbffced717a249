"""tensorstore_fs: ``write_dataset``; reads through ``Dataset.to_batches`` (numpy; variable-shape rows
with ``variable="flat"``, flat values plus offsets like the raw reference hands over), ``TorchDataset``
in a ``DataLoader`` (``num_workers`` 0 and 2, ``batch_size=None``, persistent workers for 2; token rows
padded per batch, the adapter's default) and ``make_tf_dataset`` (tf.data; ``tf.RaggedTensor``)."""

from __future__ import annotations

import inspect
import multiprocessing as mp
from pathlib import Path
from typing import Any

from ..consume import PassOut, consume
from ..data import BATCH, Ragged, Spec, columns, tsfs_schema, write_batches
from ..harness import Skip, fresh_each_pass, shutdown_workers

FORMAT = "tsfs"


def prepare(s: Spec, src: dict[str, Any]) -> dict[str, Any]:
    """Untimed: the logical columns (token rows as a list of per-row views)."""
    return columns(s, src)


def write(s: Spec, cols: dict[str, Any], out: Path, ctx: dict[str, Any],
          opts: dict[str, Any] | None = None) -> dict[str, Any]:
    import tensorstore_fs as tsfs

    ds = tsfs.write_dataset(str(out), write_batches(s, cols), schema=tsfs_schema(s), **(opts or {}))
    return {"shards": len(ds.shards), "row_groups": len(ds.row_groups), "rg_rows": [r.rows for r in ds.row_groups],
            "files": ds.files, "nbytes": ds.nbytes}


def write_ttfb(s: Spec, cols: dict[str, Any], out: Path, shards: int, ctx: dict[str, Any]) -> dict[str, Any]:
    """The same rows in >= ``shards`` shard files (one row group each): small ``shard_bytes``."""
    import shutil

    nbytes = ctx["tsfs_nbytes"]
    target = max(1, nbytes // (shards + shards // 10 + 1))
    for _ in range(6):
        shutil.rmtree(out, ignore_errors=True)
        info = write(s, cols, out, ctx, {"shard_bytes": target, "row_group_bytes": target})
        if info["shards"] >= shards:
            info.pop("files")
            info.pop("rg_rows")
            return info
        target = max(1, target * info["shards"] // (shards + shards // 5 + 1))
    raise Skip(f"could not get {shards} shards (got {info['shards']})")


def flat_rows(method: Any) -> dict[str, Any]:
    """The keyword of ``Dataset.scanner`` / ``to_batches`` that hands variable-shape rows over as
    flat values + offsets: ``variable="flat"``, or ``flat_variable=True`` where the library
    predates that keyword."""
    if "variable" in inspect.signature(method).parameters:
        return {"variable": "flat"}
    return {"flat_variable": True}


def _loader(url: str, nw: int, **kw):
    from torch.utils.data import DataLoader

    from tensorstore_fs.readers.torch import TorchDataset

    tds = TorchDataset(url, batch_size=BATCH, seed=0, **kw)
    ctx = mp.get_context("fork") if nw else None
    return tds, DataLoader(tds, batch_size=None, num_workers=nw, persistent_workers=nw > 0, multiprocessing_context=ctx)


def reader(name: str, s: Spec, ctx: dict[str, Any], measure: str):
    """(pass function, metadata) of reader ``name`` for ``measure``."""
    import pyarrow.compute as pc

    import tensorstore_fs as tsfs

    url = ctx["paths"]["tsfs"]
    flt = pc.field("id") < s.filter_k
    cols = ["label"] if measure == "project" else None
    keys = {c: c for c in (cols or s.names)}
    id_key = None if measure == "project" else "id"
    kw: dict[str, Any] = {}
    if measure == "filter":
        kw["filter"] = flt
    variable = [c.name for c in s.cols if c.is_variable]
    if cols:
        kw["columns"] = cols
    limit = 1 if measure == "ttfb" else None
    if measure == "ttfb":
        url = ctx["ttfb_paths"].get("tsfs")
        if url is None:
            raise Skip("no 1000-shard tsfs dataset")

    if name == "tsfs-numpy":
        if measure == "shuffle":
            raise Skip("to_batches reads in storage order; shuffling lives in the torch / tf.data adapters")
        if measure == "ttfb":
            def run(epoch: int) -> PassOut:
                ds = tsfs.open_dataset(url)
                flat = flat_rows(ds.to_batches) if variable else {}
                return consume(ds.to_batches(batch_size=BATCH, **flat), keys, id_key, limit=1)
            return run, {}
        ds = tsfs.open_dataset(url)
        flat = flat_rows(ds.scanner) if variable else {}
        meta: dict[str, Any] = {}
        last: list[Any] = []

        def run(epoch: int) -> PassOut:
            sc = ds.scanner(batch_size=BATCH, **kw, **flat)
            last[:] = [sc]
            return consume(sc, keys, id_key)

        def stats() -> dict[str, Any]:
            st = last[0].stats if last else None
            if st is None or measure != "filter":
                return {}
            return {"bytes_read": st.bytes_read, "bytes_fraction": st.bytes_read / ds.nbytes,
                    "row_groups_read": st.row_groups_read, "row_groups_total": st.row_groups_total,
                    "files_opened": st.files_opened}
        meta["after"] = stats
        return run, meta

    if name == "tsfs-torch0-flat":
        if not variable:
            raise Skip("no variable-shape field: the same reader as tsfs-torch0")
        if measure == "project":
            raise Skip("label has a fixed shape: the same reader as tsfs-torch0")
        kw["variable"] = "flat"
    if name in ("tsfs-torch0", "tsfs-torch2", "tsfs-torch0-flat"):
        import torch

        torch.set_num_threads(1)
        nw = 2 if name == "tsfs-torch2" else 0
        shuffle = measure == "shuffle"
        eat = _flat_consumer(variable) if kw.get("variable") == "flat" else consume
        if measure in ("ttfb", "filter"):
            # from scratch every pass (the filter too: evaluating it is part of the cost, as for every
            # other system); the previous pass's workers are stopped untimed before the next pass
            return fresh_each_pass(lambda epoch: _loader(url, nw, num_epochs=1, **kw)[1],
                                   lambda dl: eat(dl, keys, id_key, limit=limit))
        tds, dl = _loader(url, nw, shuffle=shuffle, num_epochs=1, **kw)
        meta = {"window_rows": tds.spec.window_rows} if shuffle else {}

        def run(epoch: int) -> PassOut:
            return eat(dl, keys, id_key)

        meta["close"] = lambda: shutdown_workers(dl)
        return run, meta

    if name == "tsfs-tf":
        from tensorstore_fs.readers.tf import make_tf_dataset

        shuffle = measure == "shuffle"
        if measure in ("ttfb", "filter"):  # from scratch every pass, as above
            def run(epoch: int) -> PassOut:
                return consume(make_tf_dataset(url, batch_size=BATCH, **kw), keys, id_key, limit=limit)
            return run, {}
        tfds = make_tf_dataset(url, batch_size=BATCH, shuffle=shuffle, **kw)

        def run(epoch: int) -> PassOut:
            return consume(tfds, keys, id_key)
        return run, {}

    raise ValueError(name)


def _flat_consumer(variable: list[str]):
    """``consume`` over batches whose variable-shape fields are flat values plus ``__offsets``:
    each field is handed to it as rows over those values (``Ragged``), the consumer's view of a
    ragged batch, so its per-row checks read the rows themselves."""
    def as_rows(batches):
        for b in batches:
            b = dict(b)
            for name in variable:
                b[name] = Ragged(b[name], b.pop(name + "__offsets").numpy())
            yield b

    def run(batches, keys, id_key="id", limit=None):
        return consume(as_rows(batches), keys, id_key, limit=limit)
    return run


def quality(s: Spec, ctx: dict[str, Any]) -> dict[str, Any]:
    """``tensorstore_fs.quality.shuffle_quality`` of one shuffled epoch (2 persistent workers)."""
    import numpy as np

    import tensorstore_fs as tsfs
    from tensorstore_fs.quality import shuffle_quality

    url = ctx["paths"]["tsfs"]
    tds, dl = _loader(url, 2, shuffle=True, num_epochs=1, with_row_ids=True)
    ids = [b["__row_id__"].numpy().copy() for b in dl]
    shutdown_workers(dl)
    ds = tsfs.open_dataset(url)
    q = shuffle_quality(ids, ds)
    return {"status": "ok", "spearman": q.spearman, "shards_per_batch": q.shards_per_batch,
            "row_groups_per_batch": q.row_groups_per_batch, "batches": q.batches, "rows": q.rows,
            "distinct_rows": int(len(np.unique(np.concatenate(ids)))),
            "window_rows": tds.spec.window_rows, "row_groups": len(ds.row_groups), "shards": len(ds.shards)}
