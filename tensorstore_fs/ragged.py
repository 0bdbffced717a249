"""Variable-shape rows of a batch as flat values plus offsets, without an object per row.

``Dataset.to_batches(flat_variable=True)`` hands a variable-shape field over as a
:class:`RaggedRows`: the values of all its rows back to back (a view of the decoded column), one
offset per row boundary and each row's shape. Token pipelines that pack sequences into
fixed-length blocks want exactly this; building a numpy view per row costs more than reading
the rows (see the README's benchmark notes).

>>> batch = next(ds.to_batches(columns=["tokens"], batch_size=256, flat_variable=True))
>>> toks = batch["tokens"]
>>> toks.values[toks.offsets[0]:toks.offsets[-1]]   # every token of the batch, in row order
>>> toks.lengths                                      # values per row
>>> toks[3]                                           # one row, as a view shaped like it
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["RaggedRows"]


class RaggedRows:
    """Rows of one variable-shape field: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``
    reshaped to ``shapes[i]`` (``None`` where ``valid`` is False).

    Parameters
    ----------
    values : numpy.ndarray
        1-D values of the field's dtype. Rows sit back to back in row order; ``offsets[0]``
        need not be 0 (a batch cut from a longer read shares that read's values).
    offsets : numpy.ndarray
        ``(n + 1,)`` int64, non-decreasing, within ``values``.
    shapes : numpy.ndarray
        ``(n, ndim)`` int64 row shapes (zeros for null rows).
    valid : numpy.ndarray, optional
        ``(n,)`` bool; None when every row is present.
    """

    __slots__ = ("values", "offsets", "shapes", "valid")

    def __init__(self, values: np.ndarray, offsets: np.ndarray, shapes: np.ndarray,
                 valid: np.ndarray | None = None) -> None:
        n = len(shapes)
        if values.ndim != 1 or offsets.shape != (n + 1,) or shapes.ndim != 2:
            raise ValueError(f"RaggedRows needs 1-D values, (n + 1,) offsets and (n, ndim) shapes; got "
                             f"{values.shape}, {offsets.shape}, {shapes.shape}")
        if valid is not None and valid.shape != (n,):
            raise ValueError(f"valid must have shape ({n},), got {valid.shape}")
        self.values, self.offsets, self.shapes, self.valid = values, offsets, shapes, valid

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def lengths(self) -> np.ndarray:
        """Values per row (``(n,)`` int64)."""
        return np.diff(self.offsets)

    def __getitem__(self, key: Any) -> Any:
        """``rows[i]``: row ``i`` as a view (None for a null row); ``rows[a:b]``: a RaggedRows view."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("RaggedRows slices take step 1")
            stop = max(start, stop)
            valid = None if self.valid is None else self.valid[start:stop]
            return RaggedRows(self.values, self.offsets[start:stop + 1], self.shapes[start:stop], valid)
        i = int(key)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {key} of {len(self)}")
        if self.valid is not None and not self.valid[i]:
            return None
        return self.values[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])

    @staticmethod
    def concat(parts: Sequence["RaggedRows"]) -> "RaggedRows":
        """The rows of ``parts`` one after the other, in one new values array (one copy)."""
        if not parts:
            raise ValueError("RaggedRows.concat needs at least one part")
        values = np.concatenate([p.values[p.offsets[0]:p.offsets[-1]] for p in parts])
        offsets = np.zeros(sum(len(p) for p in parts) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([p.lengths for p in parts]), out=offsets[1:])
        shapes = np.concatenate([p.shapes for p in parts])
        valid = None
        if any(p.valid is not None for p in parts):
            valid = np.concatenate([np.ones(len(p), bool) if p.valid is None else p.valid for p in parts])
        return RaggedRows(values, offsets, shapes, valid)

    def __iter__(self) -> Iterator[np.ndarray | None]:
        return (self[i] for i in range(len(self)))

    def to_list(self) -> list[np.ndarray | None]:
        """One view per row (None for null rows): what ``to_batches`` yields without ``flat_variable``."""
        return list(self)

    def __repr__(self) -> str:
        return f"RaggedRows({len(self)} rows, {int(self.offsets[-1] - self.offsets[0]) if len(self) else 0} values, {self.dtype})"
