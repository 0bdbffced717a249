#!/usr/bin/env python
"""Benchmark suite: tensorstore_fs against every path a user would compare, side by side, in one run.

Datasets (generated once, every system writes the very same numpy arrays; see ``suite/data.py``):
``image`` (id int64, label int32, image uint8 3x64x64, embedding float32 256: 13,324 B/row),
``tabular`` (id, label, 16 float32 scalars: 76 B/row), ``tokens`` (id, label, int32 sequences of
16..512 tokens: ~1 KiB/row).

Systems (one module each under ``suite/``):

* tensorstore_fs   ``write_dataset``; ``Dataset.to_batches`` (numpy), ``TorchDataset`` in a torch
                   ``DataLoader`` (num_workers 0 and 2), ``make_tf_dataset`` (tf.data)
* raw pyarrow      the reference: ``pq.write_table``; ``ParquetFile(memory_map=True)`` + ``np.frombuffer``
                   over tsfs's own shard files; ``pyarrow.dataset`` for the filter and 1000 files
* h5py             chunked, uncompressed; batch slices
* TFRecord         ``tensorstore_fs.converters.to_tfrecord``; tf.data batched ``parse_example`` + ``decode_raw``
* WebDataset       ``ShardWriter`` tar shards (.npy per tensor); ``WebDataset(...).decode().batched()``,
                   in the main process and in a torch ``DataLoader`` (2 workers)
* HF datasets      ``from_dict`` + ``save_to_disk``; ``with_format("numpy" | "torch").iter()``
* Petastorm 0.13.1 Spark ``materialize_dataset``; ``make_reader`` and ``make_batch_reader`` (own virtualenv)

Measures: write; sequential read; shuffled read (each system's own shuffle); 1 % filter
``id < n/100``; projection (``label`` only); time to first batch on a 1000-shard copy; peak RSS of
each (every system in a fresh subprocess, ``VmHWM`` reset before each measure); tsfs shuffle quality.
Each figure: median of ``--repeat`` repetitions after a warm-up, rows/s, GB/s, and the ratio to raw
pyarrow's figure from this run (for the shuffled read: pyarrow's sequential read). Where a target is
missed, tsfs is profiled (py-spy, cProfile as fallback) and the top 15 functions are reported.

Every read consumes every batch (each column's length checked, one byte of every page read) and verifies the
rows (the ids: each row exactly once; for the filter exactly ``id < k``). A system that fails or is
missing is reported as skipped/failed with the reason; the suite goes on.

Usage::

    python benchmarks/bench_suite.py            # full run: results/suite.{md,json}, results/suite_*.png
    python benchmarks/bench_suite.py --quick    # tiny sizes (1-2 minutes), written to /tmp/tsfs_suite_quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from suite import report  # noqa: E402
from suite.data import BATCH, SHUFFLE_BUFFER, TOKEN_LEN, spec  # noqa: E402

log = logging.getLogger("bench_suite")

PHASE = HERE / "suite" / "phase.py"
RESULTS = HERE / "results"
QUICK_OUT = Path(tempfile.gettempdir()) / "tsfs_suite_quick"
MEASURES = ("ttfb", "seq", "shuffle", "filter", "project")  # cheap one first: never cut by the budget
WRITERS = ("sys_tsfs", "sys_pyarrow", "sys_h5py", "sys_tfrecord", "sys_wds", "sys_hf")  # tsfs first: others use it
READERS = (("sys_pyarrow", "pyarrow"), ("sys_pyarrow", "pyarrow-rg"), ("sys_tsfs", "tsfs-numpy"), ("sys_tsfs", "tsfs-torch0"), ("sys_tsfs", "tsfs-torch0-flat"),
           ("sys_tsfs", "tsfs-torch2"), ("sys_tsfs", "tsfs-tf"), ("sys_h5py", "h5py"), ("sys_tfrecord", "tfrecord"),
           ("sys_wds", "wds"), ("sys_wds", "wds-torch2"), ("sys_hf", "hf-numpy"), ("sys_hf", "hf-torch"))
PETASTORM_READERS = ("petastorm-reader", "petastorm-batch")
FULL = {"rows_image": 10_000, "rows_tabular": 50_000, "rows_tokens": 20_000, "budget_s": 20.0, "min_rep_s": 0.25,
        "slow_s": 2.0, "ttfb_shards": 1000, "profile_s": 5.0, "profiles": 12}
QUICK = {"rows_image": 300, "rows_tabular": 3000, "rows_tokens": 600, "budget_s": 1.5, "min_rep_s": 0.02,
         "slow_s": 0.3, "ttfb_shards": 100, "profile_s": 1.5, "profiles": 1}


# ------------------------------------------------------------------------------------------------
# running phases
# ------------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.proc: subprocess.Popen | None = None

    def task(self, mode: str, kinds: dict[str, int], **kw: Any) -> dict[str, Any]:
        a = self.args
        return {"mode": mode, "root": str(self.work / "data"), "kinds": kinds, "repeat": a.repeat, "warmup": a.warmup,
                "min_rep_s": a.min_rep_s, "slow_s": a.slow_s, "budget_s": a.budget_s, "max_inner": 200, **kw}

    def run(self, name: str, task: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one phase subprocess; its results (partial if it died) plus ``__error__`` when it failed."""
        self.n += 1
        tag = f"{self.n:02d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        task = {**task, "out": str(self.logs / f"{tag}.json")}
        tpath = self.logs / f"{tag}.task.json"
        tpath.write_text(json.dumps(task))
        logf = self.logs / f"{tag}.log"
        cmd = [sys.executable, str(PHASE), str(tpath)]
        t0 = time.perf_counter()
        err = None
        with open(logf, "w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True)
            try:
                rc = self.proc.wait(timeout=timeout)
                if rc:
                    err = f"phase exited with status {rc}"
            except subprocess.TimeoutExpired:
                self.kill()
                err = f"phase killed after its {timeout:.0f} s timeout"
            finally:
                self.proc = None
        out = Path(task["out"])
        res = json.loads(out.read_text()) if out.exists() else {}
        if err:
            res["__error__"] = err + tail(logf)
        log.info("%-28s %6.1f s%s", name, time.perf_counter() - t0, f"  ({err})" if err else "")
        return res

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the phase and its DataLoader workers (its own session)
            except ProcessLookupError:
                pass
            self.proc.wait()


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return (": " + " | ".join(text[-lines:]))[:400] if text else ""


# ------------------------------------------------------------------------------------------------
# collecting results
# ------------------------------------------------------------------------------------------------

def merge(R: dict[str, Any], res: dict[str, Any], expect: list[tuple[str, str, str]]) -> None:
    """File a phase's entries under R; entries it should have made and did not become failures."""
    err = res.pop("__error__", None)
    for key, e in res.items():
        kind, system, what = key.split("/")
        ex = R["extras"].setdefault(kind, {})
        if what == "quality":
            ex["quality"] = e
        elif what == "dtypes":
            ex.setdefault("hf_dtypes", {})[system] = {k: v for k, v in e.items() if k != "status"}
        elif what.endswith("prep"):
            ex.setdefault("prep", {})[f"{system}/{what}"] = e
        else:
            R["results"].setdefault(kind, {}).setdefault(what, {})[system] = e
    for kind, system, what in expect:
        slot = R["results"].setdefault(kind, {}).setdefault(what, {})
        if system not in slot:
            slot[system] = {"status": "failed", "reason": err or "no result"}


def combine_reference(first: dict[str, Any] | None, second: dict[str, Any] | None) -> dict[str, Any] | None:
    """Raw pyarrow was run first and last: one entry from both runs' repetitions (drift shows in ``runs_s``)."""
    import statistics

    if not report.ok(first) or not report.ok(second):
        return first if report.ok(first) else second
    times = first["times_s"] + second["times_s"]
    med = statistics.median(times)
    out = {**first, "times_s": times, "median_s": med, "reps": len(times), "rows_s": first["rows"] / med,
           "gb_s": first["payload_bytes"] / med / 1e9 if first.get("payload_bytes") else None,
           "runs_s": [first["median_s"], second["median_s"]],
           "peak_rss_mib": max(first["peak_rss_mib"], second["peak_rss_mib"])}
    return out


# ------------------------------------------------------------------------------------------------
# profiles
# ------------------------------------------------------------------------------------------------

def _frame(f: str) -> str:
    m = re.match(r"(.*) \((.*?):\d+\)$", f.strip())
    if not m:
        return f.strip()
    fn, path = m.groups()
    parts = Path(path).parts
    return f"{fn} ({'/'.join(parts[-2:])})"


def pyspy_top(raw: str, n: int = 15) -> str:
    self_c: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += c
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    if not total:
        return ""
    out = [f"{total} samples; top {n} by own time (self %, inclusive %):"]
    for f, c in self_c.most_common(n):
        out.append(f"{100 * c / total:5.1f}%  {100 * incl[f] / total:5.1f}%  {f}")
    return "\n".join(out)


def profile(runner: Runner, kind: str, rows: int, system: str, reader: str, measure: str,
            seconds: float) -> dict[str, Any] | None:
    task = runner.task("loop", {kind: rows}, system=system, reader=reader, measure=measure, seconds=seconds)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if Path(pyspy).exists():
        raw = runner.logs / f"pyspy-{kind}-{reader}-{measure}-{runner.n}.txt"
        runner.run(f"py-spy {kind}/{reader}/{measure}", {**task, "pyspy": pyspy, "pyspy_out": str(raw)},
                   timeout=seconds * 4 + 120)
        if raw.exists():
            text = pyspy_top(raw.read_text())
            if text:
                return {"tool": f"py-spy record --pid (after a warm-up pass), {seconds:g} s of repeated passes",
                        "text": text}
    res = runner.run(f"cProfile {kind}/{reader}/{measure}", {**task, "cprofile": True}, timeout=seconds * 4 + 120)
    loop = res.get("loop", {})
    if loop.get("cprofile"):
        return {"tool": f"cProfile, {seconds:g} s of repeated passes, sorted by own time", "text": loop["cprofile"]}
    return None


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for pkg in ("numpy", "pyarrow", "torch", "tensorflow-cpu", "h5py", "webdataset", "datasets"):
        try:
            out.append(f"{pkg.replace('-cpu', '')} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    import tensorstore_fs

    out.append(f"tensorstore_fs {tensorstore_fs.__version__}")
    return ", ".join(out) + f"; {os.cpu_count()} CPUs, {platform.machine()}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="tiny sizes and budgets (1-2 minutes, a smoke test); results go to "
                   f"{QUICK_OUT} unless --out-dir")
    p.add_argument("--rows-image", type=int, help=f"image rows (default {FULL['rows_image']:,}; quick {QUICK['rows_image']})")
    p.add_argument("--rows-tabular", type=int, help=f"tabular rows (default {FULL['rows_tabular']:,}; quick "
                   f"{QUICK['rows_tabular']:,})")
    p.add_argument("--rows-tokens", type=int, help=f"token-sequence rows (default {FULL['rows_tokens']:,}; quick "
                   f"{QUICK['rows_tokens']})")
    p.add_argument("--datasets", nargs="+", choices=["image", "tabular", "tokens"], default=["image", "tabular", "tokens"])
    p.add_argument("--systems", nargs="+", default=None,
                   help="subset of: tsfs pyarrow h5py tfrecord wds hf petastorm (raw pyarrow and tsfs always run)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions per measure (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up passes per measure (default 1)")
    p.add_argument("--min-rep-s", type=float, help="a repetition runs whole passes for at least this long "
                   f"(default {FULL['min_rep_s']}; quick {QUICK['min_rep_s']})")
    p.add_argument("--slow-s", type=float, help="first passes this long count as a repetition (default "
                   f"{FULL['slow_s']})")
    p.add_argument("--budget-s", type=float, help="time budget of one system on one dataset (its measures share it; "
                   f"default {FULL['budget_s']:g} s)")
    p.add_argument("--ttfb-shards", type=int, help=f"shards of the time-to-first-batch copies (default "
                   f"{FULL['ttfb_shards']}; quick {QUICK['ttfb_shards']})")
    p.add_argument("--profiles", type=int, help="tsfs profiles for missed targets, at most (default 12: every miss)")
    p.add_argument("--profile-s", type=float, help="seconds of repeated passes per profile (default 5)")
    p.add_argument("--dir", type=Path, default=Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None,
                   help="where the datasets go (default /dev/shm: tmpfs); a temporary folder inside, removed at the end")
    p.add_argument("--keep", action="store_true", help="keep the datasets and logs")
    p.add_argument("--out-dir", type=Path, default=None,
                   help=f"suite.md, suite.json, suite_<dataset>.png (default {RESULTS.relative_to(ROOT)}/; --quick: {QUICK_OUT})")
    p.add_argument("--skip-petastorm", action="store_true", help="do not build or run Petastorm")
    p.add_argument("--petastorm-venv", type=Path, default=HERE / ".petastorm-venv")
    p.add_argument("--render", type=Path, default=None, metavar="SUITE_JSON",
                   help="measure nothing: re-render suite.md and the charts from an earlier run's suite.json")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.out_dir is None:
        args.out_dir = QUICK_OUT if args.quick else RESULTS
    if args.repeat < 1 or args.warmup < 1:
        p.error("--repeat and --warmup must be >= 1")
    if min(args.rows_image, args.rows_tabular, args.rows_tokens) < BATCH:
        p.error(f"every dataset needs at least {BATCH} rows")
    return args


def write_outputs(R: dict[str, Any], out_dir: Path) -> str:
    """suite.md, suite.json and suite_<dataset>.png under ``out_dir``; the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {}
    for kind in R["results"]:
        png = out_dir / f"suite_{kind}.png"
        try:
            if report.chart(R, kind, png):
                charts[kind] = png.name
        except Exception as e:  # noqa: BLE001 - the tables still get written
            log.warning("chart %s failed: %s", kind, e)
    md = report.markdown(R, charts)
    (out_dir / "suite.md").write_text(md)
    (out_dir / "suite.json").write_text(json.dumps(R, indent=1, default=str))
    return md


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.render is not None:
        R = json.loads(args.render.read_text())
        R["targets"] = report.evaluate_targets(R)
        R["behind"] = report.behind(R)
        write_outputs(R, args.out_dir)
        log.info("re-rendered %s from %s", args.out_dir / "suite.md", args.render)
        return 0
    want = set(args.systems or ["tsfs", "pyarrow", "h5py", "tfrecord", "wds", "hf", "petastorm"]) | {"tsfs", "pyarrow"}
    kinds = {k: getattr(args, f"rows_{k}") for k in args.datasets}
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tsfs_suite_", dir=str(args.dir) if args.dir else None))
    runner = Runner(work, args)
    R: dict[str, Any] = {"results": {}, "extras": {}, "datasets": {}, "profiles": {}}
    per_phase = args.budget_s * len(kinds) * 3 + 240
    log.info("datasets %s in %s", kinds, work)
    try:
        gen = runner.run("generate", runner.task("gen", kinds), timeout=900)
        if "__error__" in gen:
            raise RuntimeError(f"data generation failed {gen['__error__']}")
        for kind, rows in kinds.items():
            s = spec(kind, rows)
            d = gen[f"{kind}/src"]
            R["datasets"][kind] = {"rows": rows, "payload_bytes": d["payload_bytes"], "row_nbytes": d["payload_bytes"] / rows,
                                   "filter_k": s.filter_k, **({"mean_len": d["mean_len"]} if "mean_len" in d else {})}
        # ---- writes ------------------------------------------------------------------------------
        for mod in WRITERS:
            fmt = mod.split("_", 1)[1]
            if fmt not in want:
                continue
            res = runner.run(f"write {fmt}", runner.task("write", kinds, system=mod, ttfb_shards=args.ttfb_shards),
                             timeout=per_phase)
            merge(R, res, [(k, fmt, "write") for k in kinds])
        for kind in kinds:  # facts the report quotes
            try:
                import tensorstore_fs as tsfs

                ds = tsfs.open_dataset(str(work / "data" / kind / "tsfs"))
                R["extras"].setdefault(kind, {}).update(tsfs_rg_rows=ds.row_groups[0].rows, tsfs_shards=len(ds.shards),
                                                         tsfs_row_groups=len(ds.row_groups))
            except Exception as e:  # noqa: BLE001
                log.warning("tsfs dataset of %s unreadable: %s", kind, e)
        pet_py = None
        pet_error = None
        if "petastorm" in want and not args.skip_petastorm:
            from suite import sys_petastorm

            try:
                pet_py = sys_petastorm.python(args.petastorm_venv.resolve())
            except Exception as e:  # noqa: BLE001 - reported as skipped
                pet_error = f"Petastorm virtualenv unavailable: {str(e).strip().splitlines()[0][:200]}"
            if pet_py is not None:
                spark_tmp = work / "spark-tmp"
                spark_tmp.mkdir(exist_ok=True)
                t0 = time.perf_counter()
                res = sys_petastorm.run(pet_py, "suite-write", {**runner.task("pwrite", kinds), "spark_tmp": str(spark_tmp),
                                        "ttfb_shards": args.ttfb_shards, "out": str(runner.logs / "petastorm-write.json")},
                                        runner.logs / "petastorm-write.task.json", runner.logs / "petastorm.log",
                                        timeout=900 + 60 * len(kinds))
                log.info("%-28s %6.1f s", "write petastorm (Spark)", time.perf_counter() - t0)
                merge(R, res, [(k, "petastorm", "write") for k in kinds])
        elif "petastorm" in want:
            pet_error = "--skip-petastorm"
        # ---- reads -------------------------------------------------------------------------------
        ref_first: dict[str, Any] = {}
        for mod, reader in READERS:
            fmt = mod.split("_", 1)[1]
            if fmt not in want:
                continue
            extra = {"quality": reader == "tsfs-torch2", "dtypes": reader.startswith("hf-")}
            res = runner.run(f"read {reader}", runner.task("read", kinds, system=mod, reader=reader,
                                                           measures=list(MEASURES), **extra), timeout=per_phase)
            merge(R, res, [(k, reader, m) for k in kinds for m in MEASURES])
            if reader == "pyarrow":
                ref_first = {k: dict(R["results"].get(k, {})) for k in kinds}
                ref_first = {k: {m: v.get("pyarrow") for m, v in ref_first[k].items()} for k in kinds}
        if pet_py is not None:
            from suite import sys_petastorm

            for reader in PETASTORM_READERS:
                t0 = time.perf_counter()
                res = sys_petastorm.run(pet_py, "suite-read", {**runner.task("read", kinds, reader=reader,
                                        measures=list(MEASURES)), "out": str(runner.logs / f"{reader}.json")},
                                        runner.logs / f"{reader}.task.json", runner.logs / "petastorm.log", timeout=per_phase)
                log.info("%-28s %6.1f s", f"read {reader}", time.perf_counter() - t0)
                merge(R, res, [(k, reader, m) for k in kinds for m in MEASURES])
        elif pet_error:
            for kind in kinds:
                for m in ("write", *MEASURES):
                    for sysname in (("petastorm",) if m == "write" else PETASTORM_READERS):
                        R["results"].setdefault(kind, {}).setdefault(m, {})[sysname] = {"status": "skipped",
                                                                                        "reason": pet_error}
        # raw pyarrow again at the end: the reference spans the run (machine load drifts)
        res = runner.run("read pyarrow (again)", runner.task("read", kinds, system="sys_pyarrow", reader="pyarrow",
                                                             measures=list(MEASURES)), timeout=per_phase)
        res.pop("__error__", None)
        for key, e in res.items():
            kind, _, m = key.split("/")
            first = ref_first.get(kind, {}).get(m)
            R["results"][kind][m]["pyarrow"] = combine_reference(first, e)
        # ---- targets, profiles, report -----------------------------------------------------------
        R["targets"] = report.evaluate_targets(R)
        missed = sorted((t for t in R["targets"] if t["met"] is False and t["tsfs"]), key=lambda t: t["ratio"])
        done = set()
        for t in missed:
            key = (t["dataset"], t["tsfs"], t["measure"])
            if key in done or len(done) >= args.profiles:
                continue
            done.add(key)
            try:
                p = profile(runner, t["dataset"], kinds[t["dataset"]], "sys_tsfs", t["tsfs"], t["measure"],
                            args.profile_s)
            except Exception as e:  # noqa: BLE001 - the report goes on without it
                log.warning("profiling %s failed: %s", key, e)
                p = None
            if p:
                R["profiles"][f"{t['dataset']} / {t['tsfs']} / {t['measure']} (ratio {t['ratio']:.2f})"] = p
    except KeyboardInterrupt:
        runner.kill()
        raise
    finally:
        runner.kill()
        if args.keep:
            log.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    R.setdefault("targets", report.evaluate_targets(R))
    R["behind"] = report.behind(R)
    elapsed = time.perf_counter() - t_start
    cmd = "python benchmarks/bench_suite.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    R["meta"] = {"command": cmd, "elapsed_s": elapsed, "env": versions() + f"; 1-min load {load0:.1f} at start, "
                 f"{os.getloadavg()[0]:.1f} at end", "repeat": args.repeat, "args": {k: str(v) for k, v in vars(args).items()},
                 "notes": notes(args, R)}
    md = write_outputs(R, args.out_dir)
    print(md)
    log.info("wrote %s (%.0f s)", args.out_dir / "suite.md", elapsed)
    return 0


def notes(args: argparse.Namespace, R: dict[str, Any]) -> list[str]:
    ex = R.get("extras", {})
    rg = ", ".join(f"{k}: {v.get('tsfs_shards', '?')} shard(s), {v.get('tsfs_row_groups', '?')} row groups of "
                   f"{v.get('tsfs_rg_rows', '?'):,} rows" for k, v in ex.items() if "tsfs_rg_rows" in v)
    prep = []
    for kind, v in ex.items():
        for key, e in v.get("prep", {}).items():
            if e.get("status") == "ok" and "ttfb" in key and e.get("seconds") is not None:
                prep.append(f"{kind} {key.split('/')[0]} {e['seconds']:.1f} s")
    return [
        f"Timing: every (system, dataset) runs in a fresh subprocess; per measure {args.warmup} untimed warm-up pass(es), "
        f"then {args.repeat} timed repetitions, the median reported; a repetition runs whole passes for at least "
        f"{args.min_rep_s:g} s (the ×N note: fast systems on small data timed over several passes). A system's measures "
        f"share a budget of {args.budget_s:g} s per dataset: a first pass of {args.slow_s:g} s or more counts as a "
        f"repetition (†), fewer repetitions run where the budget is short (n=…), and measures left when it is used up "
        f"are skipped with that reason (--budget-s raises it).",
        "Ratio vs pyarrow: this system's rows/s over raw pyarrow's for the same measure in this run (its sequential "
        "read for shuffled reads, which it has no analogue of; 1 / time for the time to first batch). Raw pyarrow "
        "ran first and again last; its figure is the median of both runs' repetitions (per-run medians in suite.json, "
        "`runs_s`).",
        f"Reads: batches of {BATCH} rows (raw pyarrow: whole row groups cut into {BATCH}-row views; pyarrow-rg, "
        "shown only: whole row groups); every batch consumed (each column's length "
        "checked, one byte of every 4 KiB of each read — list-of-rows columns: the first row —, ids copied) and verified after the timer (each row exactly once; the "
        "filter exactly id < n/100). Shuffle buffers: WebDataset `.shuffle(1000)` + shardshuffle, TFRecord "
        f"`.shuffle({SHUFFLE_BUFFER})` + file order, Petastorm `shuffle_row_groups=True` + `shuffling_queue_capacity="
        f"{SHUFFLE_BUFFER}`, HF `.shuffle(seed)` (full permutation via an indices mapping), h5py a full permutation "
        "cut into sorted batches, tsfs its default window. Spearman = rank correlation of output order with storage "
        "order (1 = sequential, 0 = well mixed).",
        "Peak RSS: VmHWM of the phase process, reset (/proc/self/clear_refs) right before the measure, plus the VmHWM "
        "of live child processes (DataLoader workers, Spark's JVM: forked workers count shared pages again, an upper "
        "bound); (+Δ) = peak minus RSS before the measure (interpreter and imports excluded). Memory-mapped readers "
        "(tsfs, raw pyarrow, HF) count the mapped file pages they touch.",
        f"tsfs layout (library defaults): {rg}. Time-to-first-batch copies: {args.ttfb_shards} shards/files each "
        f"(tsfs: small shard_bytes, one row group per shard; WebDataset maxcount; TFRecord to_tfrecord(shards=…); HF "
        f"save_to_disk(num_shards=…); Petastorm: the Spark-written rows re-cut into {args.ttfb_shards} files with "
        f"pyarrow plus the _common_metadata materialize_dataset writes — a Spark write of 1000 files takes ~0.3 s a "
        f"file here; h5py: one file, not applicable). Preparing them took: {', '.join(prep) or '—'}.",
        "Writes: each system writes from the same numpy arrays (token rows as per-row views, prepared untimed; h5py "
        "and WebDataset get the 16 tabular features stacked into one (n, 16) array, untimed); the first write lands "
        "where the reads find it, the timed ones go to a scratch folder deleted (untimed) before each. TFRecord's "
        "figure is tsfs's `to_tfrecord` conversion (it reads the tsfs dataset). Petastorm's is one Spark job (n=1), "
        "Spark start-up apart.",
        "Layouts: tsfs tensors are `fixed_size_binary` / `large_binary` + shape column, scalars snappy; h5py chunks of "
        "~1 MiB of whole rows; WebDataset 8 shards; TFRecord 8 files; HF Arrow (Array3D, fixed-length List, "
        f"List(int32)); Petastorm 2 files, 8 MB row groups, NdarrayCodec (np.save bytes), Snappy; make_batch_reader "
        f"reads a plain Parquet copy (tensors as flattened list columns: images come back as (n, 12288)); TFRecord "
        f"token rows decoded batch-wise with decode_raw(fixed_length={TOKEN_LEN[1]}*4) + RaggedTensor.from_tensor.",
    ]


if __name__ == "__main__":
    sys.exit(main())
