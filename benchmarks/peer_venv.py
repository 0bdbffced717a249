"""A peer library's own virtualenv, created on first use: the dependencies (under the project's
constraints), then the package itself with ``--no-deps``, then a check command; a stamp records
what was installed so a changed list makes it again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import ROOT, log

STAMP = ".bench-ready"


def ensure(venv: Path, deps: list[str], pkg: str, check: list[str], label: str) -> Path:
    """The interpreter of ``venv`` with ``deps`` and ``pkg`` installed and ``check`` (run with the
    interpreter prepended, from the repository root) passing."""
    py = venv / "bin" / "python"
    stamp = venv / STAMP
    want = json.dumps({"deps": deps, "pkg": pkg})
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    log.info("creating %s's virtualenv %s (first use; a few minutes) ...", label, venv)
    t0 = time.perf_counter()
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = ROOT / "requirements" / "constraints-dev.txt"
    cflags = ["-c", str(constraints)] if constraints.exists() else []
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for cmd in (pip + cflags + deps, pip + ["--no-deps", pkg]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            err = "\n".join(line for line in (r.stdout + r.stderr).splitlines() if "is ignored" not in line)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    subprocess.run([str(py), *check], check=True, cwd=str(ROOT))
    stamp.write_text(want)
    log.info("%s's virtualenv ready in %.0f s", label, time.perf_counter() - t0)
    return py


def run_worker(py: Path, worker: Path, args: list[str], logfile: Path, timeout: float, env: dict[str, str],
               label: str) -> dict[str, Any]:
    """``worker *args`` run by the venv's interpreter ``py`` with ``env`` (stderr appended to
    ``logfile``); the JSON object it prints last, plus ``wall_s``."""
    t0 = time.perf_counter()
    with open(logfile, "a") as err:
        err.write(f"\n$ {py} {worker} {' '.join(args)}\n")
        err.flush()
        r = subprocess.run([str(py), str(worker), *args], stdout=subprocess.PIPE, stderr=err, text=True,
                           env=env, timeout=timeout, cwd=str(ROOT))
    if r.returncode:
        raise RuntimeError(f"{label} {args[0]} exited {r.returncode}; log tail:\n{logfile.read_text()[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res
