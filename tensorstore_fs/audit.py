"""Prove an epoch was read exactly once: duplicates and misses across ranks and workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["AuditReport", "audit_epoch"]


@dataclass(frozen=True)
class AuditReport:
    """What the ranks of one epoch read, against what they should have read."""

    expected_rows: int
    rows_seen: int
    per_rank: tuple[int, ...]
    duplicates: np.ndarray
    missing: np.ndarray
    unexpected: np.ndarray
    padded: int

    @property
    def exactly_once(self) -> bool:
        """Every expected row read once, nothing else (padding excluded)."""
        return not (len(self.duplicates) or len(self.missing) or len(self.unexpected))

    @property
    def balanced(self) -> bool:
        """Every rank read the same number of rows (padding included)."""
        return len(set(self.per_rank)) <= 1

    def __str__(self) -> str:
        return (f"AuditReport(expected={self.expected_rows}, seen={self.rows_seen}, per_rank={list(self.per_rank)}, "
                f"duplicates={len(self.duplicates)}, missing={len(self.missing)}, "
                f"unexpected={len(self.unexpected)}, padded={self.padded})")


def audit_epoch(row_ids_per_rank: Sequence[np.ndarray], expected: int | np.ndarray,
                pad_per_rank: Sequence[np.ndarray] | None = None) -> AuditReport:
    """Check the row ids each rank read in one epoch.

    Parameters
    ----------
    row_ids_per_rank : list of int arrays
        ``__row_id__`` values each rank saw (e.g. gathered with ``torch.distributed.all_gather_object``).
    expected : int or int array
        The rows that should be read: ``range(expected)`` or an explicit array (after a filter).
    pad_per_rank : list of bool arrays, optional
        The ``__pad__`` column of each rank; padded rows are counted apart, not as duplicates.

    Returns
    -------
    AuditReport
        ``.exactly_once`` and ``.balanced`` answer the two questions; ``.duplicates``,
        ``.missing`` and ``.unexpected`` hold the offending row ids.
    """
    exp = np.arange(int(expected), dtype=np.int64) if np.ndim(expected) == 0 else np.asarray(expected, dtype=np.int64)
    per_rank = tuple(int(len(r)) for r in row_ids_per_rank)
    real, padded = [], 0
    for i, ids in enumerate(row_ids_per_rank):
        ids = np.asarray(ids, dtype=np.int64)
        if pad_per_rank is not None:
            pad = np.asarray(pad_per_rank[i], dtype=bool)
            padded += int(pad.sum())
            ids = ids[~pad]
        real.append(ids)
    seen = np.concatenate(real) if real else np.zeros(0, np.int64)
    values, counts = np.unique(seen, return_counts=True)
    return AuditReport(
        expected_rows=len(exp),
        rows_seen=int(len(seen)),
        per_rank=per_rank,
        duplicates=values[counts > 1],
        missing=np.setdiff1d(exp, values),
        unexpected=np.setdiff1d(values, exp),
        padded=padded,
    )
