"""TFRecord: written by ``tensorstore_fs.converters.to_tfrecord`` (8 files; the 1000-file copy with
``shards=1000``) from the tsfs dataset, read with tf.data's fast batched pattern::

    TFRecordDataset(files, num_parallel_reads=4).batch(256)
        .map(parse_example + decode_raw, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

Token rows are decoded batch-wise too: ``decode_raw(fixed_length=512 * 4)`` pads every row, the
``tokens.shape`` feature gives the lengths, ``RaggedTensor.from_tensor(lengths=...)`` cuts them.
Shuffled: files in a shuffled order, interleaved 4 at a time, ``.shuffle(1000)`` before ``.batch``.
Filter: every record is read and parsed, a ``boolean_mask`` keeps ``id < k`` (in the graph).
Projection: ``parse_example`` with only the ``label`` feature (every record is still read).
The write figure is the conversion's: reading the tsfs dataset + encoding + writing the records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..consume import PassOut, consume
from ..data import BATCH, SHUFFLE_BUFFER, TOKEN_LEN, Spec
from ..harness import Skip

FORMAT = "tfrecord"
SHARDS = 8


def write(s: Spec, _inputs: Any, out: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    from tensorstore_fs.converters import to_tfrecord

    e = to_tfrecord(ctx["paths"]["tsfs"], str(out), shards=SHARDS)
    return {"files": len(e.paths)}


def write_ttfb(s: Spec, _inputs: Any, out: Path, shards: int, ctx: dict[str, Any]) -> dict[str, Any]:
    from tensorstore_fs.converters import to_tfrecord

    e = to_tfrecord(ctx["paths"]["tsfs"], str(out), shards=shards)
    return {"files": len(e.paths)}


def _files(folder: str) -> tuple[list[str], list[dict[str, Any]]]:
    spec = json.loads((Path(folder) / "part.features.json").read_text())
    return [os.path.join(folder, f) for f in spec["files"]], spec["features"]


def _parser(tf, features: list[dict[str, Any]], names: list[str], keep_k: int | None):
    feats = [f for f in features if f["name"] in names]
    pspec = {}
    for f in feats:
        if f["kind"] == "int64_list":
            pspec[f["key"]] = tf.io.FixedLenFeature([], tf.int64)
        elif f["kind"] == "float_list":
            pspec[f["key"]] = tf.io.FixedLenFeature([], tf.float32)
        else:
            pspec[f["key"]] = tf.io.FixedLenFeature([], tf.string)
        if f.get("shape_key"):
            pspec[f["shape_key"]] = tf.io.FixedLenFeature([len(f["shape"])], tf.int64)

    def parse(records):
        ex = tf.io.parse_example(records, pspec)
        out = {}
        for f in feats:
            v = ex[f["key"]]
            dtype = tf.as_dtype(f["dtype"])
            if f["kind"] == "bytes_list" and f.get("shape_key"):
                width = TOKEN_LEN[1] * dtype.size
                dense = tf.io.decode_raw(v, dtype, fixed_length=width)
                v = tf.RaggedTensor.from_tensor(dense, lengths=ex[f["shape_key"]][:, 0])
            elif f["kind"] == "bytes_list":
                v = tf.reshape(tf.io.decode_raw(v, dtype), (-1, *f["shape"]))
            elif v.dtype != dtype:
                v = tf.cast(v, dtype)
            out[f["name"]] = v
        if keep_k is not None:
            m = out["id"] < keep_k
            out = {k: (tf.ragged.boolean_mask(v, m) if isinstance(v, tf.RaggedTensor) else tf.boolean_mask(v, m))
                   for k, v in out.items()}
        return out

    return parse


def pipeline(tf, files: list[str], features, names: list[str], shuffle: bool = False, keep_k: int | None = None):
    parse = _parser(tf, features, names, keep_k)
    if shuffle:
        ds = (tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=0)
              .interleave(tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=4)
              .shuffle(SHUFFLE_BUFFER, seed=0))
    else:
        ds = tf.data.TFRecordDataset(files, num_parallel_reads=4)
    ds = ds.batch(BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if keep_k is not None:
        ds = ds.filter(lambda b: tf.size(b["id"]) > 0)
    return ds.prefetch(tf.data.AUTOTUNE)


def reader(name: str, s: Spec, ctx: dict[str, Any], measure: str):
    import tensorflow as tf

    folder = ctx["paths"]["tfrecord"]
    if measure == "ttfb":
        folder = ctx["ttfb_paths"].get("tfrecord")
        if folder is None:
            raise Skip("no 1000-file TFRecord copy")
        keys = {c: c for c in s.names}

        def run(epoch: int) -> PassOut:
            files, feats = _files(folder)
            return consume(pipeline(tf, files, feats, s.names), keys, "id", limit=1)
        return run, {}
    files, feats = _files(folder)
    names = ["label"] if measure == "project" else s.names
    keys = {c: c for c in names}
    ds = pipeline(tf, files, feats, names, shuffle=measure == "shuffle",
                  keep_k=s.filter_k if measure == "filter" else None)
    id_key = None if measure == "project" else "id"

    def run(epoch: int) -> PassOut:
        return consume(ds, keys, id_key)
    return run, {"shuffle_buffer": SHUFFLE_BUFFER} if measure == "shuffle" else {}
