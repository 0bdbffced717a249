"""Helpers for tests that alter copies of the checked-in Petastorm fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

KEY = b"dataset-toolkit.unischema.v1"  # where Petastorm keeps its pickled Unischema


def copy_fixture(src: Path, dst: Path) -> Path:
    """A writable copy of the fixture dataset ``src`` at ``dst``."""
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # the checked-in fixture is read-only
    return dst


def set_unischema(ds_dir: Path, payload: bytes) -> None:
    """Rewrite ``_common_metadata`` with ``payload`` as the Unischema (footer and ARROW:schema copy)."""
    path = ds_dir / "_common_metadata"
    schema = pq.read_schema(path)
    meta = dict(pq.read_metadata(path).metadata)
    meta[KEY] = payload
    meta.pop(b"ARROW:schema", None)
    path.unlink()
    pq.write_metadata(schema.with_metadata(meta), path)
