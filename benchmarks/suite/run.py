"""Suite: tensorstore_fs against every path a user would compare, side by side, in one run.

Datasets (``data.py``; generated once, every system writes the very same numpy arrays): ``image``
(13,324 B/row), ``tabular`` (id, label, 16 float32 scalars: 76 B/row), ``tokens`` (int32 sequences
of 16..512 tokens: ~1 KiB/row). Systems, one module each (``suite/sys_*.py``): tensorstore_fs
(numpy, torch with 0 and 2 workers, tf.data), raw pyarrow (the reference), h5py, TFRecord,
WebDataset, Hugging Face ``datasets`` and Petastorm 0.13.1 (own virtualenv).

Measures: write; sequential read; shuffled read (each system's own shuffle); 1 % filter
``id < n/100``; projection (``label`` only); time to first batch on a 1000-shard copy; peak RSS of
each (every system in a fresh subprocess: ``suite/phase.py``); tsfs shuffle quality. Each figure:
median of ``--repeat`` repetitions after a warm-up (``harness.Phase``), rows/s, GB/s, and the ratio
to raw pyarrow's figure from this run. Where a target is missed, tsfs is profiled (py-spy, cProfile
as fallback). Every read consumes every batch and verifies the rows; a system that fails or is
missing is reported as skipped/failed with the reason. Results: ``suite.md``, ``suite.json``,
``suite_<dataset>.png`` (``suite/report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .. import petastorm_venv
from ..data import BATCH, KINDS, SHUFFLE_BUFFER, TOKEN_LEN, spec
from ..harness import ROOT, RunInfo, log, ok, pool, workdir, write_report
from . import report

MEASURES = ("ttfb", "seq", "shuffle", "filter", "project")  # cheap one first: never cut by the budget
WRITERS = ("sys_tsfs", "sys_pyarrow", "sys_h5py", "sys_tfrecord", "sys_wds", "sys_hf")  # tsfs first: others use it
READERS = (("sys_pyarrow", "pyarrow"), ("sys_pyarrow", "pyarrow-rg"), ("sys_tsfs", "tsfs-numpy"),
           ("sys_tsfs", "tsfs-torch0"), ("sys_tsfs", "tsfs-torch0-flat"), ("sys_tsfs", "tsfs-torch2"),
           ("sys_tsfs", "tsfs-tf"), ("sys_h5py", "h5py"), ("sys_tfrecord", "tfrecord"), ("sys_wds", "wds"),
           ("sys_wds", "wds-torch2"), ("sys_hf", "hf-numpy"), ("sys_hf", "hf-torch"))
PETASTORM_READERS = ("petastorm-reader", "petastorm-batch")
SYSTEMS = ("tsfs", "pyarrow", "h5py", "tfrecord", "wds", "hf", "petastorm")
FULL = {"rows_image": 10_000, "rows_tabular": 50_000, "rows_tokens": 20_000, "repeat": 3, "warmup": 1,
        "budget_s": 20.0, "min_rep_s": 0.25, "slow_s": 2.0, "ttfb_shards": 1000, "profile_s": 5.0, "profiles": 12}
QUICK = {"rows_image": 300, "rows_tabular": 3000, "rows_tokens": 600, "repeat": 2, "warmup": 1, "budget_s": 1.5,
         "min_rep_s": 0.02, "slow_s": 0.3, "ttfb_shards": 100, "profile_s": 1.5, "profiles": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    for kind in KINDS:
        p.add_argument(f"--rows-{kind}", type=int, help=f"{kind} rows (default {FULL['rows_' + kind]:,}; quick "
                       f"{QUICK['rows_' + kind]:,})")
    p.add_argument("--datasets", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=None,
                   help="a subset of the systems (raw pyarrow and tsfs always run)")
    p.add_argument("--min-rep-s", type=float, help="a repetition runs whole passes for at least this long "
                   f"(default {FULL['min_rep_s']}; quick {QUICK['min_rep_s']})")
    p.add_argument("--slow-s", type=float, help=f"first passes this long count as a repetition (default {FULL['slow_s']})")
    p.add_argument("--budget-s", type=float, help="time budget of one system on one dataset (its measures share it; "
                   f"default {FULL['budget_s']:g} s)")
    p.add_argument("--ttfb-shards", type=int, help=f"shards of the time-to-first-batch copies (default "
                   f"{FULL['ttfb_shards']}; quick {QUICK['ttfb_shards']})")
    p.add_argument("--profiles", type=int, help="tsfs profiles for missed targets, at most (default 12: every miss)")
    p.add_argument("--profile-s", type=float, help="seconds of repeated passes per profile (default 5)")
    p.add_argument("--render", type=Path, default=None, metavar="SUITE_JSON",
                   help="measure nothing: re-render suite.md and the charts from an earlier run's suite.json")


def check(args: argparse.Namespace) -> str | None:
    if args.warmup < 1:
        return "--warmup must be >= 1"
    if min(args.rows_image, args.rows_tabular, args.rows_tokens) < BATCH:
        return f"every dataset needs at least {BATCH} rows"
    return None


class Runner:
    """Runs the suite's phases, each a subprocess (``python -m benchmarks.suite.phase TASK.json``) in its
    own session, with a timeout; their task, result and log files go to ``<work>/logs``."""

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

    def _stem(self, name: str) -> str:
        """``logs/NN-name``: the stem of one phase's task, result and log files."""
        self.n += 1
        return str(self.logs / (f"{self.n:02d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)))

    def run(self, name: str, task: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one phase subprocess; its results (partial if it died) plus ``__error__`` when it failed."""
        stem = self._stem(name)
        task = {**task, "out": f"{stem}.json"}
        tpath, logf = Path(f"{stem}.task.json"), Path(f"{stem}.log")
        tpath.write_text(json.dumps(task))
        cmd = [sys.executable, "-m", "benchmarks.suite.phase", str(tpath)]
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

    def petastorm(self, py: Path, cmd: str, name: str, task: dict[str, Any], timeout: float) -> dict[str, Any]:
        """A Petastorm phase (``_petastorm_worker.py cmd``, in its virtualenv); like :meth:`run`."""
        stem = self._stem(name)
        t0 = time.perf_counter()
        res = petastorm_venv.run_task(py, cmd, {**task, "out": f"{stem}.json"}, Path(f"{stem}.task.json"),
                                      self.logs / "petastorm.log", timeout)
        log.info("%-28s %6.1f s", name, time.perf_counter() - t0)
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
    if not ok(first) or not ok(second):
        return first if ok(first) else second
    return pool([first, second])


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


def write_outputs(R: dict[str, Any], out_dir: Path) -> None:
    """suite.md, suite.json and suite_<dataset>.png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {}
    for kind in R["results"]:
        png = out_dir / f"suite_{kind}.png"
        try:
            if report.chart(R, kind, png):
                charts[kind] = png.name
        except Exception as e:  # noqa: BLE001 - the tables still get written
            log.warning("chart %s failed: %s", kind, e)
    write_report(out_dir, "suite", [report.markdown(R, charts)], R)


def main(args: argparse.Namespace) -> int:
    if args.render is not None:
        R = json.loads(args.render.read_text())
        R["targets"] = report.evaluate_targets(R)
        R["behind"] = report.behind(R)
        write_outputs(R, args.out)
        log.info("re-rendered %s from %s", args.out / "suite.md", args.render)
        return 0
    want = set(args.systems or SYSTEMS) | {"tsfs", "pyarrow"}
    kinds = {k: getattr(args, f"rows_{k}") for k in args.datasets}
    run = RunInfo()
    R: dict[str, Any] = {"results": {}, "extras": {}, "datasets": {}, "profiles": {}}
    with workdir(args.work, "tsfs_suite_", args.keep) as work:
        measure(args, want, kinds, work, R)
    R.setdefault("targets", report.evaluate_targets(R))
    R["behind"] = report.behind(R)
    R["meta"] = {"command": run.command, "elapsed_s": run.elapsed, "env": run.env(), "repeat": args.repeat,
                 "args": {k: str(v) for k, v in vars(args).items()}, "notes": notes(args, R)}
    write_outputs(R, args.out)
    return 0


def measure(args: argparse.Namespace, want: set[str], kinds: dict[str, int], work: Path, R: dict[str, Any]) -> None:
    """Every phase of the run, results filed under ``R``."""
    runner = Runner(work, args)
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
        pet_py, pet_error = petastorm_write(args, want, kinds, runner, R)
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
            for reader in PETASTORM_READERS:
                res = runner.petastorm(pet_py, "suite-read", f"read {reader}", runner.task(
                    "read", kinds, reader=reader, measures=list(MEASURES)), timeout=per_phase)
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
    finally:
        runner.kill()


def petastorm_write(args: argparse.Namespace, want: set[str], kinds: dict[str, int], runner: Runner,
                    R: dict[str, Any]) -> tuple[Path | None, str | None]:
    """Petastorm's writes (Spark) where it runs: its interpreter, or why it does not run."""
    if "petastorm" not in want:
        return None, None
    if args.skip_petastorm:
        return None, "--skip-petastorm"
    try:
        py = petastorm_venv.python(args.petastorm_venv.resolve())
    except Exception as e:  # noqa: BLE001 - reported as skipped
        return None, f"Petastorm virtualenv unavailable: {str(e).strip().splitlines()[0][:200]}"
    spark_tmp = runner.work / "spark-tmp"
    spark_tmp.mkdir(exist_ok=True)
    task = {**runner.task("pwrite", kinds), "spark_tmp": str(spark_tmp), "ttfb_shards": args.ttfb_shards}
    res = runner.petastorm(py, "suite-write", "write petastorm (Spark)", task, timeout=900 + 60 * len(kinds))
    merge(R, res, [(k, "petastorm", "write") for k in kinds])
    return py, None


def notes(args: argparse.Namespace, R: dict[str, Any]) -> list[str]:
    """The Notes section: how everything was measured."""
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


