"""The ``tsfs`` command: info, head, verify, convert (through every converter), exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorstore_fs as tsfs
from tensorstore_fs.cli import detect_format, main

FIXTURE = Path(__file__).parent / "data" / "petastorm" / "hello_world"
N = 300


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "ds")
    rng = np.random.default_rng(0)
    tsfs.write_dataset(path, {
        "id": np.arange(N),
        "image": rng.integers(0, 255, (N, 3, 5, 5), dtype=np.uint8),
        "tokens": [np.arange(i % 7, dtype=np.int32) for i in range(N)],
        "name": [f"n{i}" for i in range(N)],
    }, row_group_bytes=4096, shard_bytes=16384)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_same_rows(a: tsfs.Dataset, b: tsfs.Dataset) -> None:
    assert len(a) == len(b) and a.schema.names == b.schema.names
    x, y = a.to_table().to_pydict(), b.to_table().to_pydict()
    assert x == y


def test_info(capsys, url):
    rc, out, _ = run(capsys, "info", url)
    ds = tsfs.open_dataset(url)
    assert rc == 0
    assert f"rows {N:,}  shards {len(ds.shards)}  row groups {len(ds.row_groups)}  bytes {ds.nbytes:,}" in out
    assert "  image   uint8    (3, 5, 5)\n" in out and "  tokens  int32    (None,)\n" in out
    rc, out, _ = run(capsys, "info", url, "--json")
    info = json.loads(out)
    assert rc == 0 and info["rows"] == N and info["versions"] == [1] and info["shards"] == len(ds.shards)
    assert tsfs.Schema.from_dict(info["schema"]) == ds.schema


def test_head_and_verify(capsys, url):
    rc, out, _ = run(capsys, "head", url, "-n", "3", "--columns", "id,name,tokens")
    assert rc == 0
    assert out.count("-- row ") == 3 and "  name: 'n2'" in out and "  tokens: int32[2] [0, 1]" in out
    assert "image" not in out
    rc, out, _ = run(capsys, "verify", url)
    assert rc == 0 and out.startswith("ok: ")


def test_verify_names_a_corrupt_shard(capsys, tmp_path, url):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(url, copy)
    shard = sorted(p for p in copy.rglob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc, _, err = run(capsys, "verify", str(copy))
    assert rc == 1 and err.startswith("tsfs: error: ") and shard.name in err


@pytest.mark.parametrize("fmt, name", [("hdf5", "out.h5"), ("tfrecord", "tfr")])
def test_convert_round_trip(capsys, tmp_path, url, fmt, name):
    exported, back = str(tmp_path / name), str(tmp_path / "back")
    rc, out, err = run(capsys, "convert", url, exported, "--to", fmt, "--no-progress")
    assert rc == 0, err
    assert detect_format(exported) == fmt
    rc, out, err = run(capsys, "convert", exported, back, "--to", "tsfs", "--no-progress")
    assert rc == 0, err
    assert_same_rows(tsfs.open_dataset(url), tsfs.open_dataset(back))
    # the target exists now: refused without --overwrite, replaced with it
    rc, _, err = run(capsys, "convert", url, exported, "--to", fmt)
    assert rc == 1 and "exist" in err
    rc, _, err = run(capsys, "convert", url, exported, "--to", fmt, "--overwrite", "--columns", "id")
    assert rc == 0, err


def test_convert_petastorm(capsys, tmp_path):
    dest = str(tmp_path / "from_petastorm")
    assert detect_format(str(FIXTURE)) == "petastorm"
    rc, out, err = run(capsys, "convert", str(FIXTURE), dest, "--to", "tsfs", "--columns", "id,image_png")
    assert rc == 0, err
    ds = tsfs.open_dataset(dest)
    assert ds.schema.names == ["id", "image_png"] and len(ds) == 20


def test_bad_input_exit_codes(capsys, tmp_path, url):
    rc, _, err = run(capsys, "info", str(tmp_path / "missing"))
    assert rc == 1 and err.startswith("tsfs: error: ") and "missing" in err
    rc, _, err = run(capsys, "convert", str(tmp_path / "x.h5"), str(tmp_path / "y"), "--to", "tfrecord")
    assert rc == 1 and "two steps" in err
    rc, _, err = run(capsys, "convert", url, str(tmp_path / "z"), "--to", "tsfs")
    assert rc == 1 and "nothing to convert" in err
    rc, _, err = run(capsys, "convert", str(tmp_path / "missing.h5"), str(tmp_path / "w"), "--to", "tsfs")
    assert rc == 1 and "missing.h5" in err
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit) as e:
        main(["convert", url, str(tmp_path / "v"), "--to", "parquet"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["head", url, "-n", "0"])
    assert e.value.code == 2


def test_console_script(url):
    exe = Path(sys.executable).with_name("tsfs")
    if not exe.exists():
        pytest.skip("the tsfs console script is not installed in this environment")
    ok = subprocess.run([str(exe), "info", url], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and f"rows {N:,}" in ok.stdout
    bad = subprocess.run([str(exe), "head", url + "-nope"], capture_output=True, text=True, timeout=60,
                         env={**os.environ})
    assert bad.returncode == 1 and bad.stderr.startswith("tsfs: error: ")
