"""The rows a filter leaves: one bit-packed mask per row group, computed once and shipped to workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..predicates import Predicate
from .dataset import Dataset
from .options import ReadOptions
from .prune import all_row_groups
from .scan import Scanner

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    """Eligible rows of every row group after a filter/predicate (every row when there is none).

    ``masks[u]`` is a bit-packed boolean mask of row group ``u``'s rows, or None for all rows.
    Computed once (it reads only the filter's columns) and shipped to workers: about one bit per row.
    """

    counts: np.ndarray
    masks: tuple[bytes | None, ...]
    rows: tuple[int, ...]

    @classmethod
    def compute(cls, ds: Dataset, filter: Any = None, predicate: Predicate | None = None) -> "Selection":
        refs = all_row_groups(ds.manifest)
        rows = tuple(r.rows for r in refs)
        if filter is None and predicate is None:
            return cls(np.asarray(rows, dtype=np.int64), (None,) * len(refs), rows)
        scanner = Scanner(ds.storage, ds.manifest, ReadOptions([ds.schema.names[0]], filter, predicate),
                          storage_schema=ds.storage_schema)
        counts = np.zeros(len(refs), dtype=np.int64)
        masks: list[bytes | None] = [b""] * len(refs)  # pruned: no rows
        index = {(r.shard, r.row_group): i for i, r in enumerate(refs)}
        for ref, hits in scanner.matches():
            u = index[(ref.shard, ref.row_group)]
            if hits is None or len(hits) == ref.rows:
                masks[u], counts[u] = None, ref.rows
            else:
                m = np.zeros(ref.rows, dtype=bool)
                m[hits] = True
                masks[u], counts[u] = np.packbits(m).tobytes(), len(hits)
        return cls(counts, tuple(masks), rows)

    @property
    def everything(self) -> bool:
        return all(m is None for m in self.masks)

    def local_rows(self, unit: int) -> np.ndarray | None:
        """Eligible row indices inside row group ``unit`` (None: all rows)."""
        m = self.masks[unit]
        if m is None:
            return None
        if not m:
            return np.zeros(0, np.int64)
        return np.flatnonzero(np.unpackbits(np.frombuffer(m, np.uint8), count=self.rows[unit]))
