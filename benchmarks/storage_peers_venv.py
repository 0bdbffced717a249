"""The storage benchmark's peers, MosaicML Streaming and Lance, in their own virtualenv
(``benchmarks/.storage-peers-venv``, created on first use), driven through
``benchmarks/_storage_peers_worker.py``.

mosaicml-streaming 0.13.0 requires numpy<2.2 (the project's venv has numpy 2.4) and torchvision
(whose PyPI wheels do not load with the CPU torch pinned here): it goes in with ``--no-deps`` after
the dependencies its S3 path imports, torchvision left out; the worker gives it an empty stand-in
module for its unused top-level ``torchvision`` import (``streaming.vision``). pylance 14 goes in
with them (it would also fit the main venv; one peer venv keeps the two peers' runs alike).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import peer_venv
from .harness import ROOT

VENV = ROOT / "benchmarks" / ".storage-peers-venv"
WORKER = ROOT / "benchmarks" / "_storage_peers_worker.py"
DEPS = ["torch==2.13.0", "numpy<2.2", "pyarrow>=15", "pylance==14.0.3", "boto3", "Brotli", "python-snappy", "xxhash",
        "zstd", "tqdm", "transformers<5", "catalogue", "pillow", "filelock"]
PKG = "mosaicml-streaming==0.13.0"
ENV_NOTE = ("mosaicml-streaming 0.13.0 (installed --no-deps: its numpy<2.2 pin and torchvision dependency do not fit the "
            "project venv; `torchvision` replaced by an empty stand-in module, never called) and pylance 14.0.3, with "
            "numpy<2.2, torch 2.13.0 CPU, boto3, in benchmarks/.storage-peers-venv")


def python(venv: Path = VENV) -> Path:
    """The venv's interpreter, the venv created on first use (a minute or two)."""
    return peer_venv.ensure(venv, DEPS, PKG, [str(WORKER), "check"], "the storage peers")


def run(py: Path, args: list[str], logfile: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``_storage_peers_worker.py *args`` in the venv; the JSON object it prints last."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("PYTHONPATH", None)
    return peer_venv.run_worker(py, WORKER, args, logfile, timeout, full_env, "peer worker")
