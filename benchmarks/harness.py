"""The measurement harness every benchmark uses: repetitions, peak memory, rates, reports.

* timing      :func:`repetitions` (warm-up, then timed repetitions, optionally sized to a minimum
              duration and a time budget), :func:`alternate` (rounds over several systems, so all
              of them see the same machine load), :class:`Phase` (the suite's measure protocol:
              budget, verification, results written as they come), :func:`time_writes`
* memory      :class:`PeakRSS`: the kernel's RSS high-water mark reset before a measure, read
              after it for this process and every live descendant (DataLoader workers); PSS
* rates       :func:`summary` (median, rows/s, GB/s), :func:`pool` (several runs as one),
              :func:`speed` and :func:`ratio` (against a reference measured in the same run)
* processes   :func:`in_fresh_process`, :func:`workdir`, :func:`fresh_each_pass` (a loader made
              afresh every pass), :func:`shutdown_workers`, :func:`cprofile`
* output      :func:`md_table`, :class:`RunInfo` and :func:`header` (command, environment),
              :func:`write_report`

The Petastorm virtualenv (numpy 1.x, no tensorstore_fs) imports this module: module-level imports
are the standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import glob
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .consume import PassOut, verify

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = ("numpy", "pyarrow", "torch", "tensorflow-cpu", "h5py", "webdataset", "datasets")


class Skip(Exception):
    """A system cannot do this measure (reported as "skipped: <reason>")."""


# ------------------------------------------------------------------------------------------------
# memory (/proc; psutil is not installed)
# ------------------------------------------------------------------------------------------------

def _proc_kib(path: str, key: str) -> int | None:
    """The ``key:`` line of a ``/proc`` file in KiB; None if unreadable."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def status_kib(key: str, pid: int | str = "self") -> int | None:
    """The ``key`` line (``VmHWM``, ``VmRSS``) of ``/proc/<pid>/status`` in KiB."""
    return _proc_kib(f"/proc/{pid}/status", key)


def reset_hwm() -> bool:
    """Reset this process's RSS high-water mark (``/proc/self/clear_refs`` = 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    hwm, rss = status_kib("VmHWM"), status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below ``pid`` (default: this one), from ``/proc/<pid>/task/*/children``."""
    todo, seen = [os.getpid() if pid is None else pid], []
    while todo:
        for path in glob.glob(f"/proc/{todo.pop()}/task/*/children"):
            try:
                with open(path) as fh:
                    kids = [int(x) for x in fh.read().split()]
            except OSError:
                continue
            new = [k for k in kids if k not in seen]
            seen += new
            todo += new
    return sorted(seen)


def release_memory() -> None:
    """Give back what can be given back before a measure starts (gc, Arrow's pool, malloc_trim)."""
    gc.collect()
    pa = sys.modules.get("pyarrow")
    with contextlib.suppress(Exception):
        if pa is not None:
            pa.default_memory_pool().release_unused()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def tree_rss() -> dict[str, float]:
    """RSS and PSS (MiB) of this process and its descendants, now (PSS reads ``smaps_rollup``:
    never while timing, it stalls readers that map memory)."""
    pids = [os.getpid(), *descendants()]
    rss = [(status_kib("VmRSS", p) or 0) / 1024 for p in pids]
    pss = [(_proc_kib(f"/proc/{p}/smaps_rollup", "Pss") or 0) / 1024 for p in pids]
    return {"main_rss": rss[0], "workers_rss": sum(rss[1:]), "total_rss": sum(rss), "total_pss": sum(pss),
            "processes": len(pids)}


NOT_MEASURED: set[int] = set()  # helper processes of a measure that are not the reader (e.g. a paired reference)


class PeakRSS:
    """Peak RSS of a measure: made after setup (memory released, RSS noted, high-water mark reset);
    :meth:`read` = own ``VmHWM`` + ``VmHWM`` of every live descendant (forked workers count shared
    pages again: an upper bound), except the processes in :data:`NOT_MEASURED` and theirs."""

    def __init__(self) -> None:
        release_memory()
        self.before = (status_kib("VmRSS") or 0) / 1024
        self.method = "VmHWM reset before the measure" if reset_hwm() else "VmHWM (whole process)"

    def read(self) -> dict[str, Any]:
        skip = set(NOT_MEASURED).union(*(descendants(p) for p in NOT_MEASURED))
        kids = [k for k in descendants() if k not in skip]
        peak = ((status_kib("VmHWM") or 0) + sum(status_kib("VmHWM", k) or 0 for k in kids)) / 1024
        return {"peak_rss_mib": peak, "rss_before_mib": self.before, "rss_delta_mib": peak - self.before,
                "rss_method": self.method, "child_processes": len(kids)}


# ------------------------------------------------------------------------------------------------
# timing and rates
# ------------------------------------------------------------------------------------------------

def repetitions(one: Callable[[int], float], repeat: int, warmup: int = 1, *, min_rep_s: float = 0.0,
                max_inner: int = 1, slow_s: float = math.inf, deadline: float = math.inf,
                on_first: Callable[[float], None] | None = None) -> tuple[list[float], int, bool]:
    """Warm-up passes, then ``repeat`` timed repetitions.

    Parameters
    ----------
    one
        Runs ``inner`` passes and returns their mean seconds.
    repeat, warmup
        Timed repetitions; untimed passes before them (the first one is timed to size the rest).
    min_rep_s, max_inner
        A repetition runs ``inner`` passes, enough to last ``min_rep_s`` (timeit-style), at most
        ``max_inner``.
    slow_s
        A first pass this long or longer counts as the first repetition.
    deadline
        ``time.monotonic()`` after which no repetition starts (at least one timed pass runs).
    on_first
        Called with the first pass's seconds.

    Returns
    -------
    tuple
        Seconds per pass of every repetition, ``inner``, whether the warm-up pass was counted.
    """
    t_first = one(1)
    if on_first is not None:
        on_first(t_first)
    for _ in range(warmup - 1):
        one(1)
    if t_first >= slow_s:
        fit = int(max(0.0, deadline - time.monotonic()) // max(t_first, 1e-9))
        return [t_first] + [one(1) for _ in range(min(repeat - 1, fit))], 1, True
    inner = max(1, min(max_inner, math.ceil(min_rep_s / max(t_first, 1e-9))))
    left = max(0.0, deadline - time.monotonic())
    reps = repeat
    if t_first * inner * reps > left:
        inner = max(1, min(inner, int(left // max(t_first * reps, 1e-9))))
        reps = max(1, min(reps, int(left // max(t_first * inner, 1e-9))))
    return [one(inner) for _ in range(reps)], inner, False


def alternate(passes: Mapping[str, Callable[[], Any]], repeat: int,
              warmup: int = 1) -> dict[str, list[tuple[float, Any]]]:
    """Rounds over several passes, so all of them see the same machine load.

    Parameters
    ----------
    passes
        Name -> one pass (its result is kept).
    repeat, warmup
        Timed rounds, after untimed ones; a round runs every pass once, in order.

    Returns
    -------
    dict
        Name -> (seconds, result) of every timed round.
    """
    out: dict[str, list[tuple[float, Any]]] = {k: [] for k in passes}
    for r in range(warmup + repeat):
        for name, fn in passes.items():
            t0 = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                out[name].append((dt, res))
    return out


def summary(times: list[float], rows: int, payload: int, **extra: Any) -> dict[str, Any]:
    """A result: the median time of one pass, rows/s and GB/s (1e9 B of payload a second)."""
    med = statistics.median(times)
    return {"status": "ok", "times_s": list(times), "median_s": med, "reps": len(times), "rows": rows,
            "payload_bytes": payload, "rows_s": rows / med if med > 0 else None,
            "gb_s": payload / med / 1e9 if med > 0 and payload else None, **extra}


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one measure as one result: their repetitions pooled (per-run medians in
    ``runs_s``), the highest peak RSS; other fields from the last run."""
    times = [t for r in results for t in r["times_s"]]
    last = results[-1]
    return {**last, **summary(times, last["rows"], last.get("payload_bytes") or 0),
            "runs_s": [r["median_s"] for r in results],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results)}


def ok(e: dict[str, Any] | None) -> bool:
    """A result with a time."""
    return bool(e) and e.get("status", "ok") == "ok" and e.get("median_s") is not None


def speed(e: dict[str, Any], measure: str = "") -> float:
    """rows/s, or first batches a second for the time to first batch (``measure == "ttfb"``)."""
    return 1.0 / e["median_s"] if measure == "ttfb" else e["rows"] / e["median_s"]


def ratio(e: dict[str, Any] | None, ref: dict[str, Any] | None, measure: str = "") -> float | None:
    """Speed over the reference's (> 1: faster); None where either has no time."""
    if not ok(e) or not ok(ref):
        return None
    return speed(e, measure) / speed(ref, measure)  # type: ignore[arg-type]


def cells(e: dict[str, Any]) -> list[str]:
    """rows/s, GB/s and peak RSS MiB of a result, as table cells."""
    peak = e.get("peak_rss_mib")
    return [f"{e['rows_s']:,.0f}", f"{e['gb_s']:.2f}", "—" if peak is None else f"{peak:,.0f}"]


# ------------------------------------------------------------------------------------------------
# the suite's measure protocol
# ------------------------------------------------------------------------------------------------

class Phase:
    """Runs measures and keeps their results (written, incrementally, to ``out_path`` if given).

    One measure: memory released and the RSS high-water mark reset (:class:`PeakRSS`), then
    :func:`repetitions` of passes; every pass's row count is checked, and the last pass of each
    repetition verified in full after the timer stops (:func:`consume.verify`). A measure may use
    its share of the phase's budget (:meth:`set_budget`)."""

    def __init__(self, out_path: str | Path | None, repeat: int, warmup: int, min_rep_s: float = 0.0,
                 max_inner: int = 1, slow_s: float = math.inf) -> None:
        self.out_path = None if out_path is None else Path(out_path)
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
        if self.out_path is not None:
            tmp = self.out_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, default=str))
            os.replace(tmp, self.out_path)

    def skip(self, key: str, reason: str) -> None:
        self.record(key, {"status": "skipped", "reason": reason})

    def guarded(self, key: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        """Run ``fn`` and record its result; Skip / errors become skipped / failed entries."""
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
            msg = str(e).strip()
            reason = f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}"[:300]
            self.record(key, {"status": "failed", "reason": reason, "traceback": traceback.format_exc()[-4000:]})

    def run(self, one: Callable[[int], float], deadline: float | None = None,
            calibrate: bool = True) -> tuple[list[float], int, bool]:
        """:func:`repetitions` with this phase's settings."""
        def first(t: float) -> None:
            self.last_pass_s = t
        return repetitions(one, self.repeat, self.warmup, min_rep_s=self.min_rep_s if calibrate else 0.0,
                           max_inner=self.max_inner, slow_s=self.slow_s,
                           deadline=self.deadline if deadline is None else deadline, on_first=first)

    def measure(self, make_pass: Callable[[int], PassOut], *, expected_rows: int | None, expect_ids: str | None,
                n: int, k: int, payload: int, before: Callable[[], None] | None = None,
                deadline: float | None = None) -> dict[str, Any]:
        """Time a pass (class docstring).

        Parameters
        ----------
        make_pass
            One pass over the data; its argument counts the passes (a shuffle's seed).
        expected_rows, expect_ids, n, k
            What :func:`consume.verify` checks (``expected_rows`` None: time to first batch).
        payload
            Bytes a pass delivers (GB/s).
        before
            Runs untimed before each pass.
        deadline
            ``time.monotonic()`` at which this measure's share of the budget ends.

        Returns
        -------
        dict
            :func:`summary` of the passes, with the verification's facts and :meth:`PeakRSS.read`.
        """
        before = before or (lambda: None)
        mem = PeakRSS()
        state: dict[str, Any] = {"epoch": 0}

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

        times, inner, counted = self.run(one, deadline)
        info = state["info"]
        rows = info.pop("rows")  # the last pass's: the expected count, or the first batch's (ttfb)
        return summary(times, rows, payload, inner=inner, warmup_counted=counted, **info, **mem.read())


def dir_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _clear(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def time_writes(phase: Phase, write: Callable[[Path], dict[str, Any] | None], final: Path, scratch: Path,
                payload: int, rows: int, deadline: float | None = None) -> dict[str, Any]:
    """Write throughput: the first (warm-up) write lands in ``final`` (kept for the reads), the
    next ones in ``scratch`` (deleted, untimed, before each); timed as :meth:`Phase.run` times
    passes, without sizing (one write a repetition)."""
    state: dict[str, Any] = {"n": 0, "info": {}}

    def one(inner: int) -> float:
        target = final if state["n"] == 0 else scratch
        _clear(target)
        t0 = time.perf_counter()
        info = write(target) or {}
        dt = time.perf_counter() - t0
        if state["n"] == 0:
            state["info"] = info
        state["n"] += 1
        return dt

    _clear(final)
    mem = PeakRSS()
    times, _, counted = phase.run(one, deadline, calibrate=False)
    _clear(scratch)
    return summary(times, rows, payload, inner=1, warmup_counted=counted, info=state["info"],
                   disk_bytes=dir_bytes(final), **mem.read())


# ------------------------------------------------------------------------------------------------
# processes, folders, profiles
# ------------------------------------------------------------------------------------------------

def in_fresh_process(fn: Callable[[dict[str, Any]], dict[str, Any]], task: dict[str, Any],
                     label: str) -> dict[str, Any]:
    """``fn(task)`` in a fresh *spawned* process (per-phase peak RSS, no state carried over);
    earlier phases' dirty pages are written back first, untimed."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if hasattr(os, "sync"):
        os.sync()
    log.info("phase %s ...", label)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        res = ex.submit(fn, task).result()
    if isinstance(res.get("median_s"), float):
        log.info("phase %s: median %.3f s over %s (%.1f s incl. process start + warm-up)", label, res["median_s"],
                 ", ".join(f"{t:.3f}" for t in res["times_s"]), time.perf_counter() - t0)
    else:
        log.info("phase %s: done in %.1f s", label, time.perf_counter() - t0)
    return res


def shutdown_workers(dl: Any) -> None:
    """Stop a torch ``DataLoader``'s (or a WebDataset ``WebLoader``'s) persistent workers now."""
    inner = dl.pipeline[0] if hasattr(dl, "pipeline") else dl
    it = getattr(inner, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    inner._iterator = None


def fresh_each_pass(make: Callable[[int], Any], eat: Callable[[Any], PassOut],
                    stop: Callable[[Any], None] = shutdown_workers) -> tuple[Callable[[int], PassOut], dict[str, Any]]:
    """A pass function (and its ``before`` / ``close``) over a loader made afresh every pass by
    ``make(epoch)`` and read by ``eat``; the previous pass's loader is stopped untimed."""
    made: list[Any] = []

    def drop() -> None:
        while made:
            stop(made.pop())

    def run(epoch: int) -> PassOut:
        made.append(make(epoch))
        return eat(made[-1])

    return run, {"before": drop, "close": drop}


def default_work() -> Path | None:
    """tmpfs where there is one: disk writeback noise swamps write comparisons; reads are
    page-cache-hot either way."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


@contextlib.contextmanager
def workdir(parent: Path | None, prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh folder under ``parent`` (default: :func:`default_work`), removed at the end unless ``keep``."""
    parent = default_work() if parent is None else parent
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=None if parent is None else str(parent)))
    try:
        yield path
    finally:
        if keep:
            log.info("kept %s", path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def cprofile(fn: Callable[[], Any], sorts: tuple[tuple[str, int], ...] = (("cumulative", 25), ("tottime", 15))) -> str:
    """``fn()`` under cProfile: the top functions by each (sort key, count)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    parts = []
    for key, count in sorts:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(count)
        parts.append(buf.getvalue())
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------------

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


class RunInfo:
    """What every results file's header says: the command, versions, machine, load, duration."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.load0 = os.getloadavg()[0]
        self.command = "python -m benchmarks " + " ".join(sys.argv[1:])

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def env(self) -> str:
        """Versions of the installed packages benchmarked, CPUs, load at start and end, duration."""
        from importlib import metadata

        import tensorstore_fs as tsfs

        out = [f"Python {platform.python_version()}"]
        for pkg in PACKAGES:
            with contextlib.suppress(metadata.PackageNotFoundError):
                out.append(f"{pkg.replace('-cpu', '')} {metadata.version(pkg)}")
        out.append(f"tensorstore_fs {tsfs.__version__}")
        return (", ".join(out) + f"; {os.cpu_count()} CPUs, {platform.machine()}; 1-min load {self.load0:.1f} at "
                f"start, {os.getloadavg()[0]:.1f} at end; whole run {self.elapsed:.0f} s")


def header(title: str, command: str, env: str) -> str:
    """The top of every results file."""
    return f"# {title}\n\nCommand: `{command}` — {env}."


def profiles(results: dict[str, Any]) -> list[str]:
    """A report section per result that carries a ``profile``."""
    return [f"## cProfile: {k}\n\n```\n{v['profile']}\n```" for k, v in results.items()
            if isinstance(v, dict) and v.get("profile")]


def write_report(out: Path, name: str, sections: list[str], record: Any = None) -> None:
    """``<out>/<name>.md`` of ``sections`` (and ``<name>.json`` of ``record`` unless None); the
    Markdown is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    md = "\n\n".join(x.strip("\n") for x in sections) + "\n"
    (out / f"{name}.md").write_text(md)
    print(md)
    if record is not None:
        (out / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    log.info("wrote %s", out / f"{name}.md")
