"""How well shuffled a stream is: measured on the row ids a reader produced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .read.dataset import Dataset
from .read.prune import all_row_groups

__all__ = ["ShuffleQuality", "shuffle_quality"]


@dataclass(frozen=True)
class ShuffleQuality:
    """``spearman``: rank correlation of output position against storage position (1 = storage
    order, about 0 = well mixed). ``shards_per_batch`` / ``row_groups_per_batch``: mean number of
    distinct shard files / row groups contributing to one batch (higher = better mixed)."""

    spearman: float
    shards_per_batch: float
    row_groups_per_batch: float
    batches: int
    rows: int


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    return r


def shuffle_quality(row_id_batches: Sequence[np.ndarray], ds: Dataset) -> ShuffleQuality:
    """Measure a stream from its ``__row_id__`` batches (``with_row_ids=True``) over ``ds``."""
    batches = [np.asarray(b, dtype=np.int64) for b in row_id_batches if len(b)]
    ids = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    if len(ids) > 1:
        a, b = _ranks(np.arange(len(ids))), _ranks(ids)
        a -= a.mean()
        b -= b.mean()
        denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
        rho = float((a * b).sum() / denom) if denom else 1.0
    else:
        rho = 1.0
    refs = all_row_groups(ds.manifest)
    rg_first = np.array([r.first_row for r in refs], dtype=np.int64)
    rg_shard = np.array([r.shard for r in refs], dtype=np.int64)
    shards, groups = [], []
    for b in batches:
        g = np.searchsorted(rg_first, b, side="right") - 1
        groups.append(len(np.unique(g)))
        shards.append(len(np.unique(rg_shard[g])))
    return ShuffleQuality(
        spearman=rho,
        shards_per_batch=float(np.mean(shards)) if shards else 0.0,
        row_groups_per_batch=float(np.mean(groups)) if groups else 0.0,
        batches=len(batches),
        rows=int(len(ids)),
    )
