"""Petastorm 0.13.1 in its own virtualenv (``benchmarks/.petastorm-venv``, created on first use),
driven through ``benchmarks/_petastorm_worker.py`` by the loader benchmark and the suite.

petastorm 0.13.1 uses pyarrow's legacy ``ParquetDataset(validate_schema=...)``, removed in pyarrow
15, and pins setuptools<70 (only for distutils, which Python 3.11 still ships) while torch 2.13
needs setuptools>=77: so petastorm goes in with ``--no-deps`` after its dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import ROOT, log

VENV = ROOT / "benchmarks" / ".petastorm-venv"
WORKER = ROOT / "benchmarks" / "_petastorm_worker.py"
DEPS = ["torch==2.13.0", "pyarrow<15", "numpy<2", "pandas<2.2", "pyspark<3.6", "dill", "diskcache",
        "future", "packaging", "psutil", "pyzmq", "six", "fsspec"]
PKG = "petastorm==0.13.1"
STAMP = ".bench-ready"
ENV_NOTE = ("petastorm 0.13.1, pyarrow<15 (0.13.1 still calls the legacy `ParquetDataset(validate_schema=...)`, "
            "removed in pyarrow 15), numpy<2, pandas<2.2, pyspark<3.6, torch 2.13.0")


def python(venv: Path = VENV) -> Path:
    """The venv's interpreter, the venv created on first use (a few minutes); raises with the
    reason where that fails or Spark cannot start (no Java)."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise RuntimeError("no Java runtime (java not on PATH, JAVA_HOME unset): Spark cannot start")
    py = venv / "bin" / "python"
    stamp = venv / STAMP
    want = json.dumps({"deps": DEPS, "pkg": PKG})
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    log.info("creating the Petastorm virtualenv %s (first use; a few minutes) ...", venv)
    t0 = time.perf_counter()
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = ROOT / "requirements" / "constraints-dev.txt"
    cflags = ["-c", str(constraints)] if constraints.exists() else []
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for cmd in (pip + cflags + DEPS, pip + ["--no-deps", PKG]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            err = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if "is ignored" not in line)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    subprocess.run([str(py), "-c", "import petastorm, petastorm.pytorch, pyspark, torch"], check=True)
    stamp.write_text(want)
    log.info("Petastorm virtualenv ready in %.0f s", time.perf_counter() - t0)
    return py


def run(py: Path, args: list[str], logfile: Path, timeout: float) -> dict[str, Any]:
    """``_petastorm_worker.py *args`` in the venv; the JSON object it prints last."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYSPARK_PYTHON": str(py), "PYSPARK_DRIVER_PYTHON": str(py)}
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    with open(logfile, "a") as err:
        err.write(f"\n$ {py} {WORKER} {' '.join(args)}\n")
        err.flush()
        r = subprocess.run([str(py), str(WORKER), *args], stdout=subprocess.PIPE, stderr=err, text=True,
                           env=env, timeout=timeout, cwd=str(ROOT))
    if r.returncode:
        raise RuntimeError(f"petastorm worker {args[0]} exited {r.returncode}; log tail:\n{logfile.read_text()[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def run_task(py: Path, cmd: str, task: dict[str, Any], task_path: Path, logfile: Path,
             timeout: float) -> dict[str, Any]:
    """``_petastorm_worker.py cmd --task task_path`` (the suite's ``suite-write`` / ``suite-read``);
    the results it wrote to ``task["out"]``, also when it failed part-way (``__error__`` says why)."""
    task_path.write_text(json.dumps(task))
    error = None
    try:
        run(py, [cmd, "--task", str(task_path)], logfile, timeout)
    except Exception as e:  # noqa: BLE001 - reported per measure by the caller
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    out = Path(task["out"])
    results = json.loads(out.read_text()) if out.exists() else {}
    if error:
        results["__error__"] = error
    return results
