"""Hugging Face ``datasets``: ``Dataset.from_dict(arrays, features)`` (``Array3D`` for images, fixed-length
``List`` for embeddings, ``List(int32)`` for token rows, ``Value`` scalars) + ``save_to_disk`` (the
1000-shard copy with ``num_shards=1000``); read back with ``load_from_disk`` (memory-mapped Arrow).

Reads: ``ds.with_format("numpy" | "torch").iter(batch_size=256)``. Shuffled: ``ds.shuffle(seed=epoch,
keep_in_memory=True)`` inside the timed pass (it builds an indices mapping; iterating through it is
the honest cost). Filter: ``ds.filter(lambda ids: ids < k, input_columns="id", batched=True,
keep_in_memory=True)`` (numpy format, so vectorised) + iterating the result, both timed. Projection:
``select_columns(["label"])``. Caching is off and progress bars are disabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..consume import PassOut, consume
from ..data import BATCH, Spec, columns
from ..harness import Skip

FORMAT = "hf"


def _quiet():
    import datasets

    datasets.disable_progress_bars()
    datasets.disable_caching()
    datasets.logging.set_verbosity_error()
    return datasets


def features(s: Spec):
    _quiet()
    from datasets import Array3D, Features, List, Value

    out = {}
    for c in s.cols:
        if c.is_scalar:
            out[c.name] = Value(c.dtype)
        elif c.is_variable:
            out[c.name] = List(Value(c.dtype))
        elif len(c.shape) == 3:
            out[c.name] = Array3D(c.shape, c.dtype)
        else:
            out[c.name] = List(Value(c.dtype), length=c.shape[0])
    return Features(out)


def prepare(s: Spec, src: dict[str, Any]) -> dict[str, Any]:
    return columns(s, src)


def write(s: Spec, cols: dict[str, Any], out: Path, ctx: dict[str, Any], num_shards: int | None = None) -> dict[str, Any]:
    datasets = _quiet()
    ds = datasets.Dataset.from_dict(cols, features=features(s))
    ds.save_to_disk(str(out), num_shards=num_shards)
    return {"arrow_files": len(list(out.glob("*.arrow")))}


def write_ttfb(s: Spec, cols: dict[str, Any], out: Path, shards: int, ctx: dict[str, Any]) -> dict[str, Any]:
    if s.rows < shards:
        raise Skip(f"{s.rows} rows < {shards} shards")
    return write(s, cols, out, ctx, num_shards=shards)


def reader(name: str, s: Spec, ctx: dict[str, Any], measure: str):
    datasets = _quiet()
    fmt = "torch" if name == "hf-torch" else "numpy"
    if fmt == "torch":
        import torch

        torch.set_num_threads(1)
    keys = {c: c for c in (["label"] if measure == "project" else s.names)}
    id_key = None if measure == "project" else "id"
    if measure == "ttfb":
        path = ctx["ttfb_paths"].get("hf")
        if path is None:
            raise Skip("no 1000-shard copy")

        def run(epoch: int) -> PassOut:
            ds = datasets.load_from_disk(path).with_format(fmt)
            return consume(ds.iter(BATCH), keys, id_key, limit=1)
        return run, {}
    ds = datasets.load_from_disk(ctx["paths"]["hf"])
    if measure == "seq":
        f = ds.with_format(fmt)

        def run(epoch: int) -> PassOut:
            return consume(f.iter(BATCH), keys, id_key)
    elif measure == "shuffle":
        f = ds.with_format(fmt)

        def run(epoch: int) -> PassOut:
            return consume(f.shuffle(seed=epoch, keep_in_memory=True).iter(BATCH), keys, id_key)
    elif measure == "filter":
        k = s.filter_k
        dn = ds.with_format("numpy")

        def run(epoch: int) -> PassOut:
            kept = dn.filter(lambda ids: ids < k, input_columns="id", batched=True, keep_in_memory=True)
            return consume(kept.with_format(fmt).iter(BATCH), keys, id_key)
    elif measure == "project":
        f = ds.select_columns(["label"]).with_format(fmt)

        def run(epoch: int) -> PassOut:
            return consume(f.iter(BATCH), keys, id_key)
    else:
        raise ValueError(measure)
    return run, {}


def dtypes(s: Spec, ctx: dict[str, Any], fmt: str) -> dict[str, str]:
    """What the formatted batches hold (HF widens integer columns)."""
    datasets = _quiet()
    ds = datasets.load_from_disk(ctx["paths"]["hf"]).with_format(fmt)
    b = next(iter(ds.iter(2)))
    return {k: str(getattr(v, "dtype", type(v).__name__)) for k, v in b.items()}
