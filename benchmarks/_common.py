"""Pieces shared by ``bench_core.py``, ``bench_loader.py`` and ``_petastorm_worker.py``.

The benchmark dataset (constants, generator, tsfs schema), the page-touching read every consumer
does, the reference Arrow -> numpy decode, the Spearman rank correlation and the ``/proc`` readers
behind the peak-RSS numbers.

``_petastorm_worker.py`` imports this module inside the Petastorm virtualenv (Python 3.11, numpy<2,
pyarrow<15): keep module-level imports to the standard library, and import numpy, pyarrow and
tensorstore_fs inside the functions that need them.
"""

from __future__ import annotations

import glob
import os
from typing import Any

IMAGE_SHAPE = (3, 64, 64)
EMB_DIM = 256
ROW_NBYTES = 8 + 4 + 3 * 64 * 64 + 4 * EMB_DIM  # 13,324 payload bytes per row
WRITE_BATCH_ROWS = 2048
TENSORS = {"image": ("uint8", IMAGE_SHAPE), "embedding": ("float32", (EMB_DIM,))}


PAGE_BYTES = 4096


def touch_pages(a: Any) -> int:
    """Read one byte of every 4 KiB of a numpy array's memory and return their sum.

    Consumers read their batches through this, not one element a batch: a reader that hands out
    views of memory-mapped files has copied nothing and faulted in nothing until somebody reads
    the pages, so touching one element a column measured a loader that had not yet delivered its
    data (on tmpfs, faulting in the core benchmark's 266 MB costs ~18 ms; an untouched epoch of
    views took 11 ms). A training step reads every byte of its batch; one byte a page is the
    cheapest read that makes every reader pay for its data being there. Object arrays (strings,
    per-row arrays) touch their first element only (such rows are copies in every system here).
    """
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


# ------------------------------------------------------------------------------------------------
# /proc helpers (psutil is not installed)
# ------------------------------------------------------------------------------------------------

def status_kib(key: str, pid: int | str = "self") -> int | None:
    """The ``key`` line (e.g. ``VmHWM``, ``VmRSS``) of ``/proc/<pid>/status`` in KiB; None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_hwm() -> bool:
    """Reset this process's RSS high-water mark (``/proc/self/clear_refs`` = 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def hwm_reset_ok() -> bool:
    """Reset the high-water mark and check that it took (VmHWM now within 1 MiB of VmRSS)."""
    if not reset_hwm():
        return False
    hwm, rss = status_kib("VmHWM"), status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def children(pid: int | None = None) -> list[int]:
    """Live child processes of ``pid`` (default: this process), from /proc/<pid>/task/*/children."""
    pid = os.getpid() if pid is None else pid
    out: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as fh:
                out += [int(x) for x in fh.read().split()]
        except OSError:
            pass
    return sorted(set(out))


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    todo, seen = children(pid), []
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.append(c)
            todo += children(c)
    return seen


# ------------------------------------------------------------------------------------------------
# data, decoding, statistics
# ------------------------------------------------------------------------------------------------

def make_data(n: int, seed: int = 0) -> dict[str, Any]:
    """The benchmark columns for ``n`` rows: sorted ids, random labels, images and embeddings."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "id": np.arange(n, dtype=np.int64),
        "label": rng.integers(0, 10, n, dtype=np.int32),
        "image": rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
        "embedding": rng.standard_normal((n, EMB_DIM), dtype=np.float32),
    }


def tsfs_schema():
    """The tensorstore_fs schema of :func:`make_data`'s columns."""
    import tensorstore_fs as tsfs

    return tsfs.Schema([
        tsfs.Field("id", "int64"),
        tsfs.Field("label", "int32"),
        tsfs.Field("image", "uint8", IMAGE_SHAPE),
        tsfs.Field("embedding", "float32", (EMB_DIM,)),
    ])


def np_fixed(arr, dtype: str, shape: tuple[int, ...]):
    """fixed_size_binary Arrow array -> zero-copy (n, *shape) numpy view (honours arr.offset)."""
    import numpy as np

    n = len(arr)
    rb = arr.type.byte_width
    flat = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=n * rb, offset=arr.offset * rb)
    return flat.view(dtype).reshape((n, *shape))


def arrow_table_to_numpy(t) -> dict[str, Any]:
    """The reference decode: one chunk per column, frombuffer for tensors, to_numpy for scalars."""
    out = {}
    for name in t.column_names:
        col = t.column(name)
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        if name in TENSORS:
            dtype, shape = TENSORS[name]
            out[name] = np_fixed(arr, dtype, shape)
        else:
            out[name] = arr.to_numpy()
    return out


def _ranks(a):
    """Ranks 0..n-1 of ``a``, ties given their average rank."""
    import numpy as np

    a = np.asarray(a)
    r = np.empty(len(a), dtype=np.float64)
    r[np.argsort(a, kind="stable")] = np.arange(len(a), dtype=np.float64)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        r = (np.bincount(inv, weights=r) / counts)[inv]
    return r


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties), numpy only."""
    import numpy as np

    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den else 0.0


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: header row, separator, one line per row of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in rows]
    return "\n".join(lines)


def describe_row_groups(rows: list[int]) -> str:
    """"39 row groups of 512 rows (the last 544)": the writer's size and the write's remainder."""
    if not rows:
        return "no row groups"
    text = f"{len(rows)} row group{'s' if len(rows) != 1 else ''} of {rows[0]:,} rows"
    others = sorted(set(rows[1:-1]) - {rows[0]})
    if others:
        text += f" (also {', '.join(f'{r:,}' for r in others)})"
    if len(rows) > 1 and rows[-1] != rows[0]:
        text += f" (the last {rows[-1]:,})"
    return text
