"""Petastorm 0.13.1, driven in its own virtualenv (``benchmarks/.petastorm-venv``, created on first use by
``bench_loader.ensure_petastorm_venv``) through ``benchmarks/_petastorm_worker.py`` (``suite-write`` /
``suite-read``; see the end of that file):

* write          Spark local mode (2 cores) inside ``materialize_dataset`` (``Unischema``: ``ScalarCodec``
                 scalars, ``NdarrayCodec`` tensors, rows via ``dict_to_spark_row``) from the suite's .npy
                 sources, 2 files, 8 MB row groups; timed once (Spark start-up reported apart)
* petastorm-reader  ``make_reader`` (thread pool, 2 workers) + ``petastorm.pytorch.DataLoader(batch_size=256)``;
                 shuffled: ``shuffle_row_groups=True`` + ``shuffling_queue_capacity=1000``; filter:
                 ``predicate=in_lambda(["id"], ...)``; projection: ``schema_fields=["label"]``
* petastorm-batch   ``make_batch_reader`` + ``BatchedDataLoader`` over a plain Parquet store of the same rows
                 (tensors as flattened list columns, the layout it supports; written with pyarrow)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "petastorm"
READERS = {"petastorm-reader": "Petastorm make_reader + petastorm.pytorch.DataLoader",
           "petastorm-batch": "Petastorm make_batch_reader + BatchedDataLoader"}


def python(venv: Path) -> Path:
    """The venv's interpreter (created on first use); raises with the reason when that fails."""
    import shutil

    from bench_loader import ensure_petastorm_venv

    if shutil.which("java") is None:
        import os

        if not os.environ.get("JAVA_HOME"):
            raise RuntimeError("no Java runtime (java not on PATH, JAVA_HOME unset): Spark cannot start")
    return ensure_petastorm_venv(venv)


def run(py: Path, cmd: str, task: dict[str, Any], task_path: Path, logfile: Path, timeout: float) -> dict[str, Any]:
    """Run ``_petastorm_worker.py cmd --task task_path`` in the venv; the results (what the worker wrote
    to ``task["out"]``, also when it failed part-way)."""
    from bench_loader import run_petastorm

    task_path.write_text(json.dumps(task))
    error = None
    try:
        run_petastorm(py, [cmd, "--task", str(task_path)], logfile, timeout)
    except Exception as e:  # noqa: BLE001 - reported per measure by the caller
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    out = Path(task["out"])
    results = json.loads(out.read_text()) if out.exists() else {}
    if error:
        results["__error__"] = error
    return results
