"""tensorstore_fs in five minutes: write scikit-learn's digits, read them back three ways.

    python examples/demo.py --out build/demo

Writes the 1,797 8x8 handwritten digits that ship inside scikit-learn (no download) as a sharded
dataset, then reads columns, filters with row-group pruning and a reproducible train/test split.
Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from sklearn.datasets import load_digits

import tensorstore_fs as tsfs
from tensorstore_fs.scan import ScanStats

SCHEMA = tsfs.Schema([
    tsfs.Field("id", "int64", description="row index in sklearn's load_digits()"),
    tsfs.Field("label", "int32", description="digit class 0..9"),
    tsfs.Field("image", "uint8", (8, 8), description="grey levels 0..16"),
    tsfs.Field("nonzero", "int16", (None,), description="flat indices of the non-zero pixels"),
])


def load_columns() -> dict[str, object]:
    """The digits as a dict of columns matching SCHEMA (``nonzero`` is a list of 1-d arrays)."""
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # float64 0.0..16.0 in sklearn
    return {
        "id": np.arange(len(images), dtype=np.int64),
        "label": digits.target.astype(np.int32),
        "image": images,
        "nonzero": [np.flatnonzero(im).astype(np.int16) for im in images],
    }


def scan(ds: tsfs.Dataset, **kwargs) -> tuple[dict[str, np.ndarray | list], ScanStats, float]:
    """Run one scan; return its columns concatenated, its ScanStats and the seconds it took."""
    t0 = time.perf_counter()
    scanner = ds.scanner(**kwargs)
    parts: dict[str, list] = {}
    for batch in scanner:
        for name, values in batch.items():
            parts.setdefault(name, []).append(values)
    seconds = time.perf_counter() - t0
    cols = {name: ([row for v in vs for row in v] if ds.schema[name].is_variable else np.concatenate(vs))
            for name, vs in parts.items()}
    return cols, scanner.stats, seconds


def rate(rows: int, nbytes: int, seconds: float) -> str:
    """'N rows/s, M MB/s' for a transfer of ``rows`` rows and ``nbytes`` bytes."""
    seconds = max(seconds, 1e-9)
    return f"{rows / seconds:,.0f} rows/s, {nbytes / seconds / 1e6:.1f} MB/s"


def pruning(stats: ScanStats) -> str:
    """One line summarising what a scan touched."""
    return (f"{stats.rows_matched} rows; row groups read {stats.row_groups_read}/{stats.row_groups_total} "
            f"(pruned {stats.row_groups_pruned}), files {stats.files_opened}, {stats.bytes_read:,} bytes read")


def main(argv: list[str] | None = None) -> int:
    """Write, read back, check; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/demo", help="folder to write the dataset into")
    args = parser.parse_args(argv)
    url = str(Path(args.out) / "digits")
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failures.append(what)

    data = load_columns()
    n = len(data["id"])
    t0 = time.perf_counter()
    ds = tsfs.write_dataset(url, data, SCHEMA, mode="overwrite", row_group_bytes=16 << 10, shard_bytes=64 << 10)
    write_s = time.perf_counter() - t0
    print(f"wrote {url} (version {ds.version})")
    print(f"  rows {len(ds)}, shards {len(ds.shards)}, row groups {len(ds.row_groups)}, "
          f"{ds.nbytes:,} bytes on disk (this version)")
    print(f"  write: {rate(n, ds.nbytes, write_s)}")
    for f in ds.schema:
        print(f"  field {f.name:<8} {f.dtype:<6} {str(f.shape):<8} {f.description}")

    ds = tsfs.open_dataset(url)  # what a reader in another process would do
    print("read everything")
    full, stats, read_s = scan(ds)
    print(f"  read: {rate(stats.rows_matched, stats.bytes_read, read_s)}")
    check(len(ds) == n == stats.rows_matched, f"rows {n}")
    check(np.array_equal(full["id"], data["id"]), "ids come back in write order")
    check(np.array_equal(full["image"], data["image"]), "images equal the originals")
    check(np.array_equal(full["label"], data["label"]), "labels equal the originals")
    check(all(np.array_equal(a, b) for a, b in zip(full["nonzero"], data["nonzero"])),
          "variable-shape nonzero equals the originals")

    print("(a) columns=['label']")
    labels, stats, _ = scan(ds, columns=["label"])
    print(f"  {pruning(stats)}")
    check(list(labels) == ["label"] and np.array_equal(labels["label"], data["label"]), "only label is returned")

    print("(b) filters")
    for name, expr, want in [
        ("label in {3, 7}", pc.field("label").isin([3, 7]), np.isin(data["label"], [3, 7])),
        ("id < 300", pc.field("id") < 300, data["id"] < 300),
    ]:
        got, stats, _ = scan(ds, columns=["id", "image"], filter=expr)
        print(f"  {name}: {pruning(stats)}")
        check(np.array_equal(got["id"], data["id"][want]), f"{name} matches exactly {want.sum()} rows")
        check(np.array_equal(got["image"], data["image"][want]), f"{name} images equal the originals")
    print("  (labels are spread over every row group, so only the id range can prune)")

    print("(c) pseudorandom 80/20 split by id")
    ids = []
    for subset, part in enumerate(["train", "test"]):
        got, stats, _ = scan(ds, columns=["id"], predicate=tsfs.in_pseudorandom_split([0.8, 0.2], subset, "id"))
        ids.append(got["id"])
        print(f"  {part}: {len(got['id'])} rows ({len(got['id']) / n:.1%})")
    train, test = ids
    check(len(np.intersect1d(train, test)) == 0, "train and test are disjoint")
    check(len(train) + len(test) == n and np.array_equal(np.union1d(train, test), data["id"]),
          f"train + test = {len(train)} + {len(test)} = {n} rows, every id once")
    sevens = tsfs.in_reduce([tsfs.in_pseudorandom_split([0.8, 0.2], 1, "id"), tsfs.in_set([7], "label")], "all")
    got, _, _ = scan(ds, columns=["id", "label"], predicate=sevens)
    check(np.array_equal(got["id"], test[data["label"][test] == 7]), f"in_reduce: {len(got['id'])} sevens in test")

    print("all checks passed" if not failures else f"{len(failures)} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
