"""Cutting planned reads into batches and joining the pieces of a batch that spans two reads."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .._pool import aligned_empty
from ..encoding import decode_column
from ..ragged import RaggedRows
from ..schema import Field

__all__ = ["decode_writable", "group_batches", "join_pieces", "merge_pieces"]


def merge_pieces(pieces: list[int], max_rows: int) -> list[list[int]]:
    """Group consecutive batch pieces into reads of at most ``max_rows`` rows (a piece is never
    split), so Parquet decodes fewer, larger batches that are then sliced without copying."""
    reads: list[list[int]] = []
    for p in pieces:
        if reads and sum(reads[-1]) + p <= max_rows:
            reads[-1].append(p)
        else:
            reads.append([p])
    return reads


def group_batches(batches: list[tuple[np.ndarray, np.ndarray]], chunk_rows: int, first_alone: bool = False
                   ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Consecutive batches of equal size grouped up to ``chunk_rows`` rows (each group at least
    one batch), so a group reshapes to ``(batches, batch size, ...)``; ``first_alone``: the first
    batch is a group of its own (a pass's first batch is not held back by the ones after it)."""
    if chunk_rows <= 0:
        return [[b] for b in batches]
    groups: list[list[tuple[np.ndarray, np.ndarray]]] = []
    rows = 0
    for b in batches:
        if groups and rows + len(b[0]) <= chunk_rows and len(b[0]) == len(groups[-1][0][0]) and not (
                first_alone and len(groups) == 1):
            groups[-1].append(b)
            rows += len(b[0])
        else:
            groups.append([b])
            rows = len(b[0])
    return groups


def decode_writable(rb: pa.RecordBatch, fields: Sequence[Field], flat: bool = False) -> dict[str, Any]:
    """Fields of one value per row decoded from a whole read, as writable arrays (read-only
    decodes, such as Arrow's zero-copy scalar columns, are copied once here rather than once per
    batch by the framework adapters); ``flat``: variable-shape fields as :class:`RaggedRows`."""
    out: dict[str, Any] = {}
    for f in fields:
        for k, v in decode_column(rb, f, flat=flat).items():
            if isinstance(v, np.ma.MaskedArray):
                if not v.data.flags.writeable:
                    v = np.ma.MaskedArray(v.data.copy(), mask=np.ma.getmaskarray(v))
            elif isinstance(v, np.ndarray) and v.dtype != object and not v.flags.writeable:
                v = v.copy()
            out[k] = v
    return out


def join_pieces(pieces: list[tuple[pa.RecordBatch | None, dict[str, Any]]]) -> tuple[pa.Table | None, dict[str, Any]]:
    """One batch from the pieces of it that came from successive reads."""
    batches = [rb for rb, _ in pieces]
    table = None if batches[0] is None else pa.Table.from_batches(batches)
    decoded: dict[str, Any] = {}
    for k, first in pieces[0][1].items():
        parts = [d[k] for _, d in pieces]
        if isinstance(first, RaggedRows):
            decoded[k] = RaggedRows.concat(parts)
        elif isinstance(first, np.ma.MaskedArray):
            decoded[k] = np.ma.concatenate(parts)
        elif first.dtype == object:
            decoded[k] = np.concatenate(parts)
        else:  # 64-byte aligned, as decoded Arrow buffers are (tf.data takes such memory as it is)
            _, decoded[k] = aligned_empty((sum(len(p) for p in parts), *first.shape[1:]), first.dtype)
            np.concatenate(parts, out=decoded[k])
    return table, decoded
