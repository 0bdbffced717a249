"""`make demo` runs examples/demo.py: it must succeed, report what it did, and re-run over its output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"

pytest.importorskip("sklearn")


def run_demo(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(DEMO), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"demo exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def check_output(stdout: str, version: int) -> None:
    assert f"(version {version})" in stdout
    assert re.search(r"^  rows 1797, shards (\d+), row groups (\d+), ", stdout, re.M), stdout
    shards, groups = map(int, re.search(r"shards (\d+), row groups (\d+)", stdout).groups())
    assert shards > 1 and groups > shards, "small row_group_bytes/shard_bytes should give several of each"
    assert "[FAIL]" not in stdout
    assert stdout.rstrip().endswith("all checks passed")
    assert "[ok] rows 1797" in stdout
    assert "[ok] images equal the originals" in stdout

    train = int(re.search(r"^  train: (\d+) rows", stdout, re.M).group(1))
    test = int(re.search(r"^  test: (\d+) rows", stdout, re.M).group(1))
    assert train + test == 1797
    assert 0.7 < train / 1797 < 0.9

    pruned = re.search(r"id < 300: 300 rows; row groups read (\d+)/(\d+) \(pruned (\d+)\)", stdout)
    assert pruned, stdout
    read, total, skipped = map(int, pruned.groups())
    assert skipped > 0 and read + skipped == total == groups


def test_demo_runs_and_reruns(tmp_path: Path) -> None:
    first = run_demo(tmp_path)
    check_output(first, version=1)
    second = run_demo(tmp_path)  # mode="overwrite": a re-run commits a new version over the old one
    check_output(second, version=2)
    # the split depends only on ids, so it is identical across runs
    split_lines = re.compile(r"^  (?:train|test): \d+ rows", re.M)
    assert split_lines.findall(first) == split_lines.findall(second)
