#!/usr/bin/env python
"""One measurement subprocess of the suite: ``python -m benchmarks.suite.phase TASK.json``.

Modes (``task["mode"]``):

``gen``    generate every dataset's source arrays and save them under ``<root>/<kind>/src``
``write``  one system's writes of every dataset (warm-up write kept for the reads, timed writes into a
           scratch folder), then its 1000-shard copy (untimed)
``read``   one reader's measures over every dataset
``loop``   one (dataset, reader, measure) pass over and over for ``seconds`` (what a profiler samples);
           with ``cprofile`` set, under cProfile, and the top functions are written to the result

Results go to ``task["out"]`` (JSON, rewritten after every measure, so a killed phase keeps what it did).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from .. import data  # noqa: E402
from ..harness import Phase, Skip, cprofile, release_memory, time_writes  # noqa: E402


def context(root: Path, kind: str) -> dict[str, Any]:
    """Where every format's copy of ``kind`` lives (and the tsfs facts other systems need)."""
    base = root / kind
    fmts = ("tsfs", "pyarrow", "h5py", "tfrecord", "wds", "hf", "petastorm", "petastorm-plain")
    ctx: dict[str, Any] = {
        "paths": {f: str(base / f) for f in fmts},
        "ttfb_paths": {f: str(base / f"{f}-ttfb") for f in fmts if (base / f"{f}-ttfb").exists()},
    }
    if (base / "tsfs").exists():
        try:
            import tensorstore_fs as tsfs

            ds = tsfs.open_dataset(str(base / "tsfs"))
            ctx.update(tsfs_files=ds.files, tsfs_nbytes=ds.nbytes, tsfs_rg_rows=ds.row_groups[0].rows)
        except Exception:  # noqa: BLE001 - tsfs write failed: the others still run
            pass
    return ctx


def payload_for(s: data.Spec, src: dict[str, Any], measure: str) -> int:
    if measure in ("seq", "shuffle", "write"):
        return data.column_bytes(s, src)
    if measure == "filter":
        return data.column_bytes(s, src, s.names, s.filter_k)
    if measure == "project":
        return data.column_bytes(s, src, ["label"])
    return 0


def expectations(s: data.Spec, measure: str) -> tuple[int | None, str | None]:
    return {"seq": (s.rows, "all"), "shuffle": (s.rows, "all"), "filter": (s.filter_k, "filter"),
            "project": (s.rows, None), "ttfb": (None, None)}[measure]


def run_read(phase: Phase, mod, reader: str, s: data.Spec, src: dict[str, Any], ctx: dict[str, Any],
             measure: str, deadline: float) -> dict[str, Any]:
    fn, meta = mod.reader(reader, s, ctx, measure)
    try:
        expected, expect_ids = expectations(s, measure)
        res = phase.measure(fn, expected_rows=expected, expect_ids=expect_ids, n=s.rows, k=s.filter_k,
                            payload=payload_for(s, src, measure), before=meta.get("before"), deadline=deadline)
        if "after" in meta:
            res.update(meta["after"]())
        res.update({k: v for k, v in meta.items() if not callable(v)})
        return res
    finally:
        if "close" in meta:
            meta["close"]()


def read_kinds(task: dict[str, Any], phase: Phase, mod: Any) -> None:
    """Every measure of reader ``task["reader"]`` (of system module ``mod``) over every dataset."""
    root, reader = Path(task["root"]), task["reader"]
    for kind, rows in task["kinds"].items():
        s = data.spec(kind, rows)
        src = data.load_source(root / kind / "src", mmap=True)
        ctx = context(root, kind)
        phase.set_budget(task.get("budget_s", 1e9))
        measures = list(task["measures"])
        for i, m in enumerate(measures):
            # each measure may use an equal share of what is left of this dataset's budget
            share = time.monotonic() + (phase.deadline - time.monotonic()) / (len(measures) - i)
            phase.guarded(f"{kind}/{reader}/{m}",
                          lambda m=m, share=share, src=src: run_read(phase, mod, reader, s, src, ctx, m, share))
        if task.get("quality") and hasattr(mod, "quality"):
            phase.guarded(f"{kind}/{reader}/quality", lambda: mod.quality(s, ctx))
        if task.get("dtypes") and hasattr(mod, "dtypes"):
            fmt = "torch" if reader.endswith("torch") else "numpy"
            phase.guarded(f"{kind}/{reader}/dtypes", lambda: {"status": "ok", **mod.dtypes(s, ctx, fmt)})
        del src
        release_memory()


def write_loop(mod: Any, s: data.Spec, root: Path, ctx: dict[str, Any]):
    """A write as a repeatable pass (for the profiler): into a scratch folder removed untimed before."""
    import shutil

    src = data.load_source(root / s.kind / "src")
    inputs = mod.prepare(s, src) if hasattr(mod, "prepare") else src
    out = root / s.kind / f"{mod.FORMAT}-profile"

    def run(epoch: int) -> None:
        mod.write(s, inputs, out, ctx)

    def clear() -> None:
        shutil.rmtree(out, ignore_errors=True)

    return run, {"before": clear, "close": clear}


def new_phase(task: dict[str, Any]) -> Phase:
    return Phase(task["out"], task.get("repeat", 3), task.get("warmup", 1), task.get("min_rep_s", 0.25),
                 task.get("max_inner", 20), task.get("slow_s", 2.0))


def main(task_path: str) -> int:
    task = json.loads(Path(task_path).read_text())
    root = Path(task["root"])
    mode = task["mode"]
    phase = new_phase(task)
    kinds: dict[str, int] = task["kinds"]

    if mode == "gen":
        for kind, rows in kinds.items():
            s = data.spec(kind, rows)
            src = data.generate(s, seed=task.get("seed", 0))
            data.save_source(src, root / kind / "src")
            info = {"status": "ok", "rows": rows, "payload_bytes": data.column_bytes(s, src)}
            if kind == "tokens":
                info["mean_len"] = float(src["tokens_offsets"][-1] / rows)
            phase.record(f"{kind}/src", info)
        return 0

    mod = importlib.import_module(f"benchmarks.suite.{task['system']}")

    if mode == "write":
        for kind, rows in kinds.items():
            s = data.spec(kind, rows)
            src = data.load_source(root / kind / "src")
            ctx = context(root, kind)
            phase.set_budget(task.get("budget_s", 1e9))
            fmt = mod.FORMAT
            key = f"{kind}/{fmt}/write"
            inputs: dict[str, Any] = {}

            def do_write() -> dict[str, Any]:
                inputs["v"] = mod.prepare(s, src) if hasattr(mod, "prepare") else src
                return time_writes(phase, lambda out: mod.write(s, inputs["v"], out, ctx), root / kind / fmt,
                                   root / kind / f"{fmt}-scratch", data.column_bytes(s, src), rows)

            phase.guarded(key, do_write)
            shards = task.get("ttfb_shards", 0)
            if shards and hasattr(mod, "write_ttfb") and phase.results[key].get("status") == "ok":
                def do_ttfb() -> dict[str, Any]:
                    import shutil

                    out = root / kind / f"{fmt}-ttfb"
                    shutil.rmtree(out, ignore_errors=True)
                    t0 = time.perf_counter()
                    info = mod.write_ttfb(s, inputs["v"], out, shards, context(root, kind))
                    return {"status": "ok", "seconds": time.perf_counter() - t0, **info}
                phase.guarded(f"{kind}/{fmt}/ttfb-prep", do_ttfb)
            inputs.clear()
            del src
            release_memory()
        return 0

    reader = task["reader"]
    if mode == "read":
        read_kinds(task, phase, mod)
        return 0

    if mode == "loop":
        (kind, rows), = kinds.items()
        s = data.spec(kind, rows)
        ctx = context(root, kind)
        if task["measure"] == "write":
            fn, meta = write_loop(mod, s, root, ctx)
        else:
            fn, meta = mod.reader(reader, s, ctx, task["measure"])
        if meta.get("before"):
            meta["before"]()
        fn(0)  # warm-up: imports, first opens
        spy = None
        seconds = task.get("seconds", 5)
        if task.get("pyspy"):
            # py-spy attaches to this process (and its DataLoader workers) after the warm-up: the
            # samples are the passes only, not the interpreter start and the imports
            import math
            import subprocess

            cmd = [task["pyspy"], "record", "--pid", str(os.getpid()), "--duration", str(math.ceil(seconds)),
                   "--format", "raw", "-o", task["pyspy_out"], "-r", "250", "--nonblocking"]
            if reader.endswith("torch2"):
                cmd.append("--subprocesses")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res: dict[str, Any] = {"status": "ok", "passes": 0}

        def loop() -> None:
            t_end = time.monotonic() + seconds + (2 if spy else 0)
            while time.monotonic() < t_end and (spy is None or spy.poll() is None):
                if meta.get("before"):
                    meta["before"]()
                res["passes"] += 1
                fn(res["passes"])

        if task.get("cprofile") and spy is None:
            res["cprofile"] = cprofile(loop, (("tottime", 15),))
        else:
            loop()
        if spy is not None:
            try:
                res["pyspy_rc"] = spy.wait(timeout=30)
            except Exception:  # noqa: BLE001
                spy.kill()
                res["pyspy_rc"] = None
        if meta.get("close"):
            meta["close"]()
        phase.record("loop", res)
        return 0

    raise ValueError(mode)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Skip as e:  # pragma: no cover
        print(f"skipped: {e}", file=sys.stderr)
        sys.exit(3)
