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
from pathlib import Path
from typing import Any

from . import peer_venv
from .harness import ROOT

VENV = ROOT / "benchmarks" / ".petastorm-venv"
WORKER = ROOT / "benchmarks" / "_petastorm_worker.py"
DEPS = ["torch==2.13.0", "pyarrow<15", "numpy<2", "pandas<2.2", "pyspark<3.6", "dill", "diskcache",
        "future", "packaging", "psutil", "pyzmq", "six", "fsspec"]
PKG = "petastorm==0.13.1"
ENV_NOTE = ("petastorm 0.13.1, pyarrow<15 (0.13.1 still calls the legacy `ParquetDataset(validate_schema=...)`, "
            "removed in pyarrow 15), numpy<2, pandas<2.2, pyspark<3.6, torch 2.13.0")


def python(venv: Path = VENV) -> Path:
    """The venv's interpreter, the venv created on first use (a few minutes); raises with the
    reason where that fails or Spark cannot start (no Java)."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise RuntimeError("no Java runtime (java not on PATH, JAVA_HOME unset): Spark cannot start")
    return peer_venv.ensure(venv, DEPS, PKG, ["-c", "import petastorm, petastorm.pytorch, pyspark, torch"], "Petastorm")


def run(py: Path, args: list[str], logfile: Path, timeout: float) -> dict[str, Any]:
    """``_petastorm_worker.py *args`` in the venv; the JSON object it prints last."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYSPARK_PYTHON": str(py), "PYSPARK_DRIVER_PYTHON": str(py)}
    env.pop("PYTHONPATH", None)
    return peer_venv.run_worker(py, WORKER, args, logfile, timeout, env, "petastorm worker")


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
