"""What every benchmark's consumer does with a batch: check it, read every page of it, verify ids.

Consumers read one byte of every 4 KiB page of every column (:func:`touch_pages`), not one element
a batch: a reader that hands out views of memory-mapped files has copied nothing and faulted in
nothing until somebody reads the pages, so touching one element a column measured a loader that
had not yet delivered its data. A training step reads every byte of its batch; one byte a page is
the cheapest read that makes every reader pay for its data being there.

The Petastorm virtualenv imports this module: module-level imports are the standard library only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

PAGE_BYTES = 4096


def touch_pages(a: Any) -> int:
    """Read one byte of every 4 KiB of a numpy array's memory and return their sum.

    Object arrays (strings, per-row arrays) touch their first element only (such rows are copies
    in every system here)."""
    import numpy as np

    a = np.asarray(a)
    if a.size == 0:
        return 0
    if a.dtype == object:
        first = a.reshape(-1)[0]
        return touch_pages(first) if hasattr(first, "shape") else 0
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return int(a.reshape(-1).view(np.uint8)[::PAGE_BYTES].sum())


def _module(v: Any) -> str:
    return type(v).__module__.split(".", 1)[0]


def length(v: Any) -> int:
    """Rows of one column of a batch: numpy / torch / tf (dense or ragged) / list / Ragged."""
    mod = _module(v)
    if mod == "tensorflow":
        return int(v.nrows()) if hasattr(v, "nrows") else int(v.shape[0])
    if hasattr(v, "shape") and mod in ("numpy", "torch"):
        return int(v.shape[0])
    return len(v)


def touch(v: Any) -> None:
    """Read a column's memory, one byte every 4 KiB (:func:`touch_pages`): numpy, torch (nested:
    its values), tf (ragged: its flat values; read through ``np.asarray``, which shares the
    tensor's memory, where ``.numpy()`` would copy it), flat ragged rows (their values between
    their first and last offset). Lists of per-row arrays: the first row."""
    mod = _module(v)
    if mod == "numpy":
        touch_pages(v)
    elif mod == "torch":
        touch_pages((v.values() if v.is_nested else v).numpy())
    elif mod == "tensorflow":
        touch_pages(v.flat_values if hasattr(v, "flat_values") else v)
    elif hasattr(v, "offsets"):  # flat values + offsets (tsfs RaggedRows, data.Ragged): the batch's
        # own rows; the values may be a whole read's, which later batches slice too
        if len(v.offsets):
            touch((v.flat if hasattr(v, "flat") else v.values)[int(v.offsets[0]):int(v.offsets[-1])])
    elif isinstance(v, (list, tuple)):
        if len(v) and hasattr(v[0], "shape"):
            touch(v[0])
    else:
        raise TypeError(f"cannot touch a {type(v)!r}")


def ids_of(v: Any) -> Any:
    """A private numpy copy of an id column."""
    import numpy as np

    if _module(v) in ("torch", "tensorflow"):
        v = v.numpy()
    return np.array(v, dtype=np.int64, copy=True).reshape(-1)


@dataclass
class PassOut:
    """One pass: rows, the id column of every batch (if collected), batches, and the seconds from
    the start of the pass to its first batch."""

    rows: int
    ids: list | None
    batches: int
    first_s: float | None = None


def consume(batches: Iterable[Any], keys: dict[str, str] | None = None, id_key: str | None = None,
            limit: int | None = None) -> PassOut:
    """Check and read every batch.

    Parameters
    ----------
    batches
        Dicts of columns (any framework).
    keys
        Logical name -> key in the batch of the columns to read; None: every column of the batch.
    id_key
        Logical name of a column whose values are copied (for :func:`verify`); None: none.
    limit
        Stop after this many batches (time to first batch).
    """
    t0 = time.perf_counter()
    rows = nb = 0
    first_s = None
    ids: list | None = [] if id_key is not None else None
    for b in batches:
        if first_s is None:
            first_s = time.perf_counter() - t0
        cols = list(b.items()) if keys is None else [(k, b[k]) for k in keys.values()]
        id_col = None if id_key is None else b[id_key if keys is None else keys[id_key]]
        n = length(cols[0][1] if id_col is None else id_col)
        for k, v in cols:
            if length(v) != n:
                raise AssertionError(f"column {k!r}: {length(v)} rows in a batch of {n}")
            if n:
                touch(v)
        if ids is not None:
            ids.append(ids_of(id_col))
        rows += n
        nb += 1
        if limit is not None and nb >= limit:
            break
    return PassOut(rows, ids, nb, first_s)


def _ranks(a: Any) -> Any:
    """Ranks 0..n-1 of ``a``, ties given their average rank."""
    import numpy as np

    a = np.asarray(a)
    r = np.empty(len(a), dtype=np.float64)
    r[np.argsort(a, kind="stable")] = np.arange(len(a), dtype=np.float64)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        r = (np.bincount(inv, weights=r) / counts)[inv]
    return r


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (average ranks for ties), numpy only."""
    import numpy as np

    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den else 0.0


def verify(out: PassOut, expected_rows: int | None, expect_ids: str | None, n: int, k: int) -> dict[str, Any]:
    """Row count, and ids when the reader yields them: ``"all"`` (0..n-1 each once) or ``"filter"``
    (exactly ``0..k-1``). Returns statistics of the id order (Spearman against storage order)."""
    import numpy as np

    if expected_rows is None:  # time to first batch: any non-empty batch
        if out.rows <= 0:
            raise AssertionError("no rows in the first batch")
        return {"rows": out.rows, "batches": out.batches}
    if out.rows != expected_rows:
        raise AssertionError(f"read {out.rows} rows, expected {expected_rows}")
    info: dict[str, Any] = {"rows": out.rows, "batches": out.batches}
    if out.ids is None or expect_ids is None:
        return info
    ids = np.concatenate(out.ids) if out.ids else np.zeros(0, np.int64)
    want = n if expect_ids == "all" else k
    if len(ids) != want or (len(ids) and (ids.min() < 0 or ids.max() >= want)) \
            or (len(ids) and not (np.bincount(ids, minlength=want) == 1).all()):
        raise AssertionError(f"ids are not exactly 0..{want - 1} once each ({len(ids)} ids)")
    info["ids_verified"] = True
    if expect_ids == "all" and len(ids) > 1:
        info["spearman"] = spearman(np.arange(len(ids)), ids)
        info["in_order"] = bool((np.diff(ids) > 0).all())
    return info
