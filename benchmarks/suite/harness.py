"""Timing, peak RSS, consuming and verifying batches: the protocol every system goes through.

One *measure* (a write, a sequential read, ...) of one system on one dataset:

1. free what earlier measures left (``gc``, Arrow's pool, ``malloc_trim``), note RSS, reset the
   kernel's RSS high-water mark (``/proc/self/clear_refs`` = 5);
2. ``warmup`` untimed passes; the first one also sizes a repetition: ``k`` passes such that a
   repetition lasts at least ``min_rep_s`` (timeit-style: fast systems on small data are timed over
   several passes, slow ones over one), ``k <= max_inner``;
3. ``repeat`` timed repetitions; the figure is the median time of one pass;
4. peak RSS = own ``VmHWM`` + ``VmHWM`` of every live descendant (DataLoader workers: forked,
   shared pages counted in each, so an upper bound); ``rss_delta`` = peak - RSS before the measure.

Slow systems and the time budget: a first pass of ``slow_s`` seconds or more is counted as the first
repetition (warm-up effects are small next to it), and a measure runs only as many repetitions as fit
its share of the phase's budget (at least one timed pass); results carry ``reps`` and
``warmup_counted`` so the report can say so.

Every pass's row count is checked; the last pass of each repetition is verified in full after the
timer stops: where the reader yields ids, they must be exactly the expected ones (each row once;
for the filter, exactly ``id < k``).

Standard library at module level (numpy imported where used): the Petastorm virtualenv imports it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ (for _common)
from _common import descendants, reset_hwm, spearman, status_kib, touch_pages  # noqa: E402


class Skip(Exception):
    """A system cannot do this measure (reported as "skipped: <reason>")."""


# ------------------------------------------------------------------------------------------------
# consuming batches of any framework
# ------------------------------------------------------------------------------------------------

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
    """Read a column's memory, one byte every 4 KiB (``_common.touch_pages``), so data that a reader
    produced lazily (views of memory-mapped files) is really there: numpy, torch (nested: its
    values), tf (ragged: its flat values; read through ``np.asarray``, which shares the tensor's
    memory, where ``.numpy()`` would copy it), flat ragged rows (their values between their first
    and last offset). Lists of per-row arrays: the first row."""
    mod = _module(v)
    if mod == "numpy":
        touch_pages(v)
    elif mod == "torch":
        if v.is_nested:
            v = v.values()
        touch_pages(v.numpy())
    elif mod == "tensorflow":
        if hasattr(v, "flat_values"):
            v = v.flat_values
        touch_pages(v)  # np.asarray inside: the tensor's own memory
    elif hasattr(v, "offsets"):  # flat values + offsets (tsfs RaggedRows, the suite's Ragged): the
        # batch's own rows; the values may be a whole read's, which later batches slice too
        if len(v.offsets):
            touch((v.flat if hasattr(v, "flat") else v.values)[int(v.offsets[0]):int(v.offsets[-1])])
    elif isinstance(v, (list, tuple)):
        if len(v) and hasattr(v[0], "shape"):
            touch(v[0])
    else:
        raise TypeError(f"cannot touch a {type(v)!r}")


def ids_of(v: Any):
    """A private numpy copy of an id column."""
    import numpy as np

    mod = _module(v)
    if mod in ("torch", "tensorflow"):
        v = v.numpy()
    return np.array(v, dtype=np.int64, copy=True).reshape(-1)


class PassOut:
    __slots__ = ("rows", "ids", "batches")

    def __init__(self, rows: int, ids: list | None, batches: int) -> None:
        self.rows, self.ids, self.batches = rows, ids, batches


def consume(batches: Iterable[Any], keys: dict[str, str], id_key: str | None = "id",
            limit: int | None = None) -> PassOut:
    """Touch every column named in ``keys`` (logical name -> key in the batch) of every batch:
    each one's length must equal the batch's, every page of each is read (:func:`touch`); the id
    column is copied.
    Stops after ``limit`` batches (time to first batch)."""
    rows = nb = 0
    ids: list | None = [] if id_key is not None else None
    first_key = keys[id_key] if id_key is not None else next(iter(keys.values()))
    for b in batches:
        n = length(b[first_key])
        for k in keys.values():
            v = b[k]
            if length(v) != n:
                raise AssertionError(f"column {k!r}: {length(v)} rows in a batch of {n}")
            if n:
                touch(v)
        if ids is not None:
            ids.append(ids_of(b[keys[id_key]]))
        rows += n
        nb += 1
        if limit is not None and nb >= limit:
            break
    return PassOut(rows, ids, nb)


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------

def release_memory() -> None:
    """Give back what can be given back before a measure starts."""
    gc.collect()
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        try:
            pa.default_memory_pool().release_unused()
        except Exception:
            pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def rss_mib() -> float:
    return (status_kib("VmRSS") or 0) / 1024


def peak_mib() -> tuple[float, int]:
    """Own VmHWM + VmHWM of live descendants (MiB), and how many descendants there were."""
    own = status_kib("VmHWM") or 0
    kids = descendants(os.getpid())
    return (own + sum(status_kib("VmHWM", k) or 0 for k in kids)) / 1024, len(kids)


# ------------------------------------------------------------------------------------------------
# verification
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# one measurement process
# ------------------------------------------------------------------------------------------------

class Phase:
    """Runs measures and writes their results (incrementally) to a JSON file."""

    def __init__(self, out_path: str | Path, repeat: int, warmup: int, min_rep_s: float, max_inner: int,
                 slow_s: float = 2.0) -> None:
        self.out_path = Path(out_path)
        self.repeat, self.warmup, self.min_rep_s, self.max_inner = repeat, max(1, warmup), min_rep_s, max_inner
        self.slow_s = slow_s
        self.results: dict[str, Any] = {}
        self.deadline = math.inf
        self.last_pass_s: float | None = None

    def set_budget(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.last_pass_s = None

    def record(self, key: str, res: dict[str, Any]) -> None:
        self.results[key] = res
        tmp = self.out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, default=str))
        os.replace(tmp, self.out_path)

    def skip(self, key: str, reason: str) -> None:
        self.record(key, {"status": "skipped", "reason": reason})

    def fail(self, key: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        self.record(key, {"status": "failed", "reason": msg, "traceback": traceback.format_exc()[-4000:]})

    def guarded(self, key: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        """Run ``fn`` (which records its own result); Skip / errors become skipped / failed entries."""
        if time.monotonic() > self.deadline:
            last = f" (its last measure's first pass took {self.last_pass_s:.1f} s)" if self.last_pass_s else ""
            self.skip(key, f"time budget of this system on this dataset used up{last}; raise --budget-s")
            return
        try:
            res = fn()
            if res is not None:
                self.record(key, res)
        except Skip as e:
            self.skip(key, str(e))
        except ImportError as e:  # the system is not installed here
            self.skip(key, f"not installed: {e}")
        except Exception as e:  # noqa: BLE001 - a failing system never stops the suite
            self.fail(key, e)

    def measure(self, make_pass: Callable[[int], PassOut], *, expected_rows: int | None, expect_ids: str | None,
                n: int, k: int, payload: int, before: Callable[[], None] | None = None,
                deadline: float | None = None) -> dict[str, Any]:
        """Time ``make_pass(epoch)`` (see the module docstring); ``before`` runs untimed before each pass.
        ``deadline`` (monotonic) is this measure's share of the phase budget."""
        before = before or (lambda: None)
        deadline = self.deadline if deadline is None else deadline
        release_memory()
        rss0 = rss_mib()
        hwm_ok = reset_hwm()
        state = {"epoch": 0, "info": {}, "out": None}

        def one(inner: int) -> float:
            elapsed = 0.0
            for _ in range(inner):
                before()
                t0 = time.perf_counter()
                out = make_pass(state["epoch"])
                elapsed += time.perf_counter() - t0
                state["epoch"] += 1
                if expected_rows is not None and out.rows != expected_rows:
                    raise AssertionError(f"read {out.rows} rows, expected {expected_rows}")
            state["out"] = out
            state["info"] = verify(out, expected_rows, expect_ids, n, k)
            return elapsed / inner

        times, inner, counted = self._run(one, deadline)
        peak, kids = peak_mib()
        med = statistics.median(times)
        out = state["out"]
        rows = out.rows if expected_rows is None else expected_rows
        return {"status": "ok", "times_s": times, "median_s": med, "inner": inner, "reps": len(times),
                "warmup_counted": counted, "payload_bytes": payload,
                "rows_s": rows / med if med > 0 else None, **state["info"], "rows": rows,
                "gb_s": payload / med / 1e9 if med > 0 else None,
                "peak_rss_mib": peak, "rss_before_mib": rss0, "rss_delta_mib": peak - rss0,
                "rss_method": "VmHWM reset before the measure" if hwm_ok else "VmHWM (whole process)",
                "child_processes": kids}

    def _run(self, one: Callable[[int], float], deadline: float, calibrate: bool = True) -> tuple[list[float], int, bool]:
        """Warm-up, sizing and repetitions (module docstring). A first pass of ``slow_s`` or more is
        counted as the first repetition (its warm-up effects are small next to it), and repetitions
        stop where this measure's share of the budget ends (at least one timed pass)."""
        t_first = one(1)
        self.last_pass_s = t_first
        for _ in range(self.warmup - 1):
            one(1)
        if t_first >= self.slow_s:
            times = [t_first]
            fit = int(max(0.0, deadline - time.monotonic()) // max(t_first, 1e-9))
            for _ in range(min(self.repeat - 1, fit)):
                times.append(one(1))
            return times, 1, True
        inner = max(1, min(self.max_inner, math.ceil(self.min_rep_s / max(t_first, 1e-9)))) if calibrate else 1
        left = max(0.0, deadline - time.monotonic())
        reps = self.repeat
        if t_first * inner * reps > left:
            inner = max(1, min(inner, int(left // max(t_first * reps, 1e-9))))
            reps = max(1, min(reps, int(left // max(t_first * inner, 1e-9))))
        return [one(inner) for _ in range(reps)], inner, False


def time_writes(phase: Phase, write: Callable[[Path], dict[str, Any]], final: Path, scratch: Path,
                payload: int, rows: int, deadline: float | None = None) -> dict[str, Any]:
    """Write throughput: the first write lands in ``final`` (kept for the reads), the next ones in
    ``scratch`` (deleted, untimed, before each); timed as :meth:`Phase._run` times passes."""
    import shutil

    def clear(p: Path) -> None:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()

    state: dict[str, Any] = {"n": 0, "info": {}}

    def one(inner: int) -> float:
        target = final if state["n"] == 0 else scratch
        clear(target)
        t0 = time.perf_counter()
        info = write(target) or {}
        dt = time.perf_counter() - t0
        if state["n"] == 0:
            state["info"] = info
        state["n"] += 1
        return dt

    clear(final)
    release_memory()
    rss0 = rss_mib()
    hwm_ok = reset_hwm()
    times, _, counted = phase._run(one, phase.deadline if deadline is None else deadline, calibrate=False)
    clear(scratch)
    peak, kids = peak_mib()
    med = statistics.median(times)
    return {"status": "ok", "times_s": times, "median_s": med, "inner": 1, "reps": len(times),
            "warmup_counted": counted, "rows": rows, "payload_bytes": payload, "rows_s": rows / med,
            "gb_s": payload / med / 1e9, "peak_rss_mib": peak, "rss_before_mib": rss0,
            "rss_delta_mib": peak - rss0, "child_processes": kids,
            "rss_method": "VmHWM reset before the measure" if hwm_ok else "VmHWM (whole process)",
            "info": state["info"], "disk_bytes": dir_bytes(final)}


def dir_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
