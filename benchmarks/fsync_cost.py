"""What the writer's fsyncs cost on a local disk (docs/guarantees.md, "Durability").

Writes ~800 MB of image-like rows (uint8 3x224x224, ~150 KB a row, incompressible) to a local
dataset, with the library's fsyncs (shard files, directories) and with ``os.fsync`` replaced by a
no-op, alternating, 3 runs each; ``sync`` before every run so no run pays for the previous one's
dirty pages (after one untimed warm-up run). A third mode, no fsync but one ``sync`` timed at the end, shows what the disk needs to
hold the data at all (the unavoidable part of the cost). Prints MB/s per run and the medians.

    python benchmarks/fsync_cost.py [--dir /path/on/the/disk] [--mb 800] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

import tensorstore_fs as tsfs

ROW_SHAPE = (3, 224, 224)
SCHEMA = tsfs.Schema([tsfs.Field("id", "int64"), tsfs.Field("label", "int16"),
                      tsfs.Field("image", "uint8", ROW_SHAPE)])


def one_run(url: str, image: np.ndarray, batches: int, fsync: bool, sync_at_end: bool = False) -> float:
    real = os.fsync
    if not fsync:
        os.fsync = lambda fd: None  # type: ignore[assignment]
    try:
        os.sync()
        t0 = time.perf_counter()
        with tsfs.DatasetWriter(url, SCHEMA, mode="overwrite") as w:
            n = len(image)
            for b in range(batches):
                ids = np.arange(b * n, (b + 1) * n)
                w.write({"id": ids, "label": (ids % 1000).astype(np.int16), "image": image})
        if sync_at_end:
            os.sync()
        return time.perf_counter() - t0
    finally:
        os.fsync = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--mb", type=int, default=800)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(256, *ROW_SHAPE), dtype=np.uint8)  # 38.5 MB a batch
    batches = max(1, round(args.mb * 2**20 / image.nbytes))
    mb = batches * image.nbytes / 2**20
    base = tempfile.mkdtemp(dir=args.dir, prefix="tsfs-fsync-")
    modes = ["fsync on", "fsync off", "off + sync"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    try:
        one_run(os.path.join(base, "warmup"), image, batches, fsync=False)  # untimed: first-run effects
        shutil.rmtree(os.path.join(base, "warmup"))
        for r in range(args.runs):
            for mode in modes[r % 3:] + modes[:r % 3]:  # rotate the order: no mode always runs first
                url = os.path.join(base, "ds")
                shutil.rmtree(url, ignore_errors=True)
                t = one_run(url, image, batches, fsync=mode == "fsync on", sync_at_end=mode == "off + sync")
                times[mode].append(t)
                print(f"run {r + 1} {mode:<10}: {mb:.0f} MB in {t:.2f} s = {mb / t:.0f} MB/s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {m: statistics.median(ts) for m, ts in times.items()}
    print("median: " + ", ".join(f"{m} {mb / t:.0f} MB/s ({t:.2f} s)" for m, t in med.items()))
    off = med["fsync off"]
    print(f"fsync costs {100 * (med['fsync on'] - off) / off:+.1f}% of the write time against writing into the page "
          f"cache only ({100 * (med['off + sync'] - off) / off:+.1f}% for the disk to hold the data at all)")


if __name__ == "__main__":
    main()
