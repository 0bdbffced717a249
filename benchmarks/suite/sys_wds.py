"""WebDataset 1.0: tar shards written with ``wds.ShardWriter`` (8 shards; the 1000-shard copy with
``maxcount = ceil(n / 1000)``), one sample per row: ``id.cls`` and ``label.cls`` (integers as text),
one ``.npy`` per tensor (``tabular``'s 16 features as one ``x.npy``, as a WebDataset user packs them).

Reads: ``wds.WebDataset(urls, shardshuffle=False).decode().batched(256)`` in the main process, and the
same pipeline in ``wds.WebLoader`` (a torch ``DataLoader``, ``batch_size=None``, 2 persistent workers,
shards split between workers) for numpy -> torch tensors. Default collation (stacking) except token
rows (a list). Shuffled: ``shardshuffle=100`` + ``.shuffle(1000)`` before decoding. Filter: every
sample is read; ``.select(int(sample["id.cls"]) < k)`` before decoding. Projection:
``select_files`` keeps only ``*.label.cls`` members (the tar stream is still read through).
"""

from __future__ import annotations

import glob
import math
import multiprocessing as mp
from pathlib import Path
from typing import Any

from ..consume import PassOut, consume
from ..data import BATCH, SHUFFLE_BUFFER, TAB_FEATURES, Spec, columns
from ..harness import Skip, fresh_each_pass, shutdown_workers

FORMAT = "wds"
SHARDS = 8


def prepare(s: Spec, src: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    cols = columns(s, src)
    if s.kind == "tabular":
        cols = {"id": cols["id"], "label": cols["label"], "x": np.stack([cols[f] for f in TAB_FEATURES], axis=1)}
    return cols


def _samples(cols: dict[str, Any], n: int):
    ids, labels = cols["id"], cols["label"]
    tensors = [(k, v) for k, v in cols.items() if k not in ("id", "label")]
    for i in range(n):
        smp = {"__key__": f"{i:09d}", "id.cls": int(ids[i]), "label.cls": int(labels[i])}
        for k, v in tensors:
            smp[f"{k}.npy"] = v[i]
        yield smp


def _write(cols: dict[str, Any], n: int, out: Path, maxcount: int) -> dict[str, Any]:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=maxcount, maxsize=1 << 40, verbose=0) as w:
        for smp in _samples(cols, n):
            w.write(smp)
    return {"shards": len(glob.glob(str(out / "*.tar")))}


def write(s: Spec, cols: dict[str, Any], out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    return _write(cols, s.rows, out, math.ceil(s.rows / SHARDS))


def write_ttfb(s: Spec, cols: dict[str, Any], out: Path, shards: int, ctx: dict[str, Any]) -> dict[str, Any]:
    info = _write(cols, s.rows, out, max(1, s.rows // shards))
    if info["shards"] < shards:
        raise Skip(f"only {info['shards']} shards for {s.rows} rows")
    return info


def _collate_ragged(samples):
    import numpy as np

    out = {}
    for k in samples[0]:
        vals = [smp[k] for smp in samples]
        if isinstance(vals[0], np.ndarray) and len({v.shape for v in vals}) == 1:
            out[k] = np.stack(vals)
        elif isinstance(vals[0], (int, float)):
            out[k] = np.array(vals)
        else:
            out[k] = vals
    return out


def _pipeline(s: Spec, urls: list[str], measure: str):
    import webdataset as wds
    from webdataset.filters import default_collation_fn

    shuffle = measure == "shuffle"
    kw: dict[str, Any] = {}
    if measure == "project":
        kw["select_files"] = lambda fname: fname.endswith(".label.cls")
    ds = wds.WebDataset(urls, shardshuffle=100 if shuffle else False, empty_check=False, seed=0, **kw)
    if shuffle:
        ds = ds.shuffle(SHUFFLE_BUFFER)
    if measure == "filter":
        k = s.filter_k
        ds = ds.select(lambda smp: int(smp["id.cls"]) < k)
    collate = _collate_ragged if s.kind == "tokens" else default_collation_fn
    return ds.decode().batched(BATCH, collation_fn=collate)


def _keys(s: Spec, measure: str) -> dict[str, str]:
    if measure == "project":
        return {"label": "label.cls"}
    keys = {"id": "id.cls", "label": "label.cls"}
    tensors = ["x"] if s.kind == "tabular" else [c.name for c in s.tensors]
    keys.update({t: f"{t}.npy" for t in tensors})
    return keys


def reader(name: str, s: Spec, ctx: dict[str, Any], measure: str):
    folder = ctx["paths"]["wds"]
    if measure == "ttfb":
        folder = ctx["ttfb_paths"].get("wds")
        if folder is None:
            raise Skip("no 1000-shard WebDataset copy")
    urls = sorted(glob.glob(str(Path(folder) / "*.tar")))
    keys = _keys(s, measure)
    id_key = None if measure == "project" else "id"
    limit = 1 if measure == "ttfb" else None
    if name == "wds":
        ds = _pipeline(s, urls, measure)

        def run(epoch: int) -> PassOut:
            return consume(ds if limit is None else _pipeline(s, urls, measure), keys, id_key, limit=limit)
        return run, {"shuffle_buffer": SHUFFLE_BUFFER} if measure == "shuffle" else {}

    import torch
    import webdataset as wds

    torch.set_num_threads(1)

    def loader():
        return wds.WebLoader(_pipeline(s, urls, measure), batch_size=None, num_workers=2, persistent_workers=True,
                             multiprocessing_context=mp.get_context("fork"))

    if measure == "ttfb":
        return fresh_each_pass(lambda epoch: loader(), lambda dl: consume(dl, keys, id_key, limit=1))
    dl = loader()

    def run(epoch: int) -> PassOut:
        return consume(dl, keys, id_key)
    return run, {"close": lambda: shutdown_workers(dl)}
