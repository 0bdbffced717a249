"""tensorstore_fs in five minutes: write scikit-learn's digits, read them back, train on them.

    python examples/demo.py --out build/demo

Writes the 1,797 8x8 handwritten digits that ship inside scikit-learn (no download) as a sharded
dataset, then reads columns, filters with row-group pruning and a reproducible train/test split,
trains a small PyTorch MLP on that split through
``DataLoader(TorchDataset(...), batch_size=None, num_workers=2, persistent_workers=True)``, and
finally exports the digits to HDF5 and TFRecord and reads each back with plain h5py / tf.data code.
Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

import tensorstore_fs as tsfs
from tensorstore_fs.audit import audit_epoch
from tensorstore_fs.converters import to_hdf5, to_tfrecord
from tensorstore_fs.readers.torch import TorchDataset
from tensorstore_fs.read.scan import ScanStats

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


TRAIN_SEED = 0  # torch.manual_seed and the TorchDataset shuffle seed
EPOCHS = 8
TRAIN_BATCH = 64
TEST_BATCH = 256
MIN_ACCURACY = 0.9


def make_model() -> torch.nn.Module:
    """A small MLP over the 64 pixels (about 5k parameters)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )


def inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A TorchDataset batch -> (images scaled to [0, 1] as float32, int64 labels)."""
    return batch["image"].float() / 16.0, batch["label"].long()


def train_and_evaluate(ds: tsfs.Dataset, train_ids: np.ndarray, test_ids: np.ndarray, check) -> None:
    """Train make_model() on the 80/20 split for EPOCHS epochs; check every epoch reads each row once.

    Both loaders keep their 2 worker processes for all epochs (``persistent_workers=True``): each
    worker's copy of the TorchDataset advances its own epoch, so no ``set_epoch`` call is needed.
    The ``__row_id__`` column (``with_row_ids=True``) is each row's index in the dataset, which
    equals its ``id`` here, so it can be audited against the split of section (c).
    """
    torch.manual_seed(TRAIN_SEED)
    columns = ["image", "label"]
    train_ds = TorchDataset(ds, columns=columns, predicate=tsfs.in_pseudorandom_split([0.8, 0.2], 0, "id"),
                            batch_size=TRAIN_BATCH, shuffle=True, seed=TRAIN_SEED, with_row_ids=True)
    test_ds = TorchDataset(ds, columns=columns, predicate=tsfs.in_pseudorandom_split([0.8, 0.2], 1, "id"),
                           batch_size=TEST_BATCH, remainder="uneven", with_row_ids=True)
    print(f"  loaders: train {len(train_ids)} rows, {len(train_ds)} batches/epoch of {TRAIN_BATCH}, shuffled (seed "
          f"{TRAIN_SEED}); test {len(test_ids)} rows, {len(test_ds)} batches of {TEST_BATCH}, remainder='uneven'")
    # Created inside main() only, never at import: workers started with "spawn" or "forkserver"
    # re-import this module, and the datasets and predicates they receive are plain picklable objects.
    train_loader = DataLoader(train_ds, batch_size=None, num_workers=2, persistent_workers=True)
    test_loader = DataLoader(test_ds, batch_size=None, num_workers=2, persistent_workers=True)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)  # settle by the last epoch
    loss_fn = torch.nn.CrossEntropyLoss()
    train_audits, test_audits, orders, accuracy = [], [], [], 0.0
    t0 = time.perf_counter()
    try:
        for epoch in range(EPOCHS):
            model.train()
            loss_sum, seen = 0.0, []
            for batch in train_loader:
                x, y = inputs(batch)
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                seen.append(batch["__row_id__"].numpy())
            schedule.step()
            order = np.concatenate(seen) if seen else np.zeros(0, np.int64)
            orders.append(order)
            train_audits.append(audit_epoch([order], train_ids))

            model.eval()
            correct, evaluated = 0, []
            with torch.no_grad():
                for batch in test_loader:
                    x, y = inputs(batch)
                    correct += int((model(x).argmax(dim=1) == y).sum())
                    evaluated.append(batch["__row_id__"].numpy())
            evaluated_ids = np.concatenate(evaluated) if evaluated else np.zeros(0, np.int64)
            test_audits.append(audit_epoch([evaluated_ids], test_ids))
            accuracy = correct / max(1, len(evaluated_ids))
            print(f"  epoch {epoch + 1}/{EPOCHS}: train loss {loss_sum / max(1, len(order)):.4f}, "
                  f"train rows {len(order)}, test accuracy {accuracy:.4f}, test rows {len(evaluated_ids)}")
    finally:
        del train_loader, test_loader  # shut the persistent workers down here, not at interpreter exit
    seconds = time.perf_counter() - t0
    print(f"  {EPOCHS} epochs in {seconds:.1f} s")
    bad = [(e + 1, str(a)) for e, a in enumerate(train_audits) if not a.exactly_once]
    check(not bad, f"every epoch read each of the {len(train_ids)} train rows exactly once"
          + (f": {bad}" if bad else ""))
    bad = [(e + 1, str(a)) for e, a in enumerate(test_audits) if not a.exactly_once]
    check(not bad, f"every epoch evaluated each of the {len(test_ids)} test rows exactly once"
          + (f": {bad}" if bad else ""))
    reshuffled = len(orders) < 2 or all(not np.array_equal(a, b) for a, b in zip(orders, orders[1:]))
    check(reshuffled, "each epoch's train order differs from the previous one")
    check(accuracy > MIN_ACCURACY, f"final test accuracy {accuracy:.4f} > {MIN_ACCURACY}")


# The reading side of each export is what a user of that format writes, with no tensorstore_fs
# import: h5py indexing, and a tf.data pipeline in a child process (TensorFlow stays out of this one).
TF_READER = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    spec = json.load(open(sys.argv[1]))
    files, compression = sys.argv[2:], spec["compression"] or ""
    fields = {f["name"]: f for f in spec["features"]}
    parse_spec = {"id": tf.io.FixedLenFeature([], tf.int64), "label": tf.io.FixedLenFeature([], tf.int64),
                  "image": tf.io.FixedLenFeature([], tf.string)}
    def parse(record):
        ex = tf.io.parse_single_example(record, parse_spec)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), fields["image"]["shape"])
        return ex["id"], ex["label"], image
    ids, labels, images = [], [], []
    for i, l, im in tf.data.TFRecordDataset(files, compression_type=compression).map(parse).batch(512):
        ids.append(i.numpy()); labels.append(l.numpy()); images.append(im.numpy())
    ids, labels, images = np.concatenate(ids), np.concatenate(labels), np.concatenate(images)
    print(json.dumps({"rows": len(ids), "id_sum": int(ids.sum()), "label_sum": int(labels.sum()),
                      "image_sum": int(images.astype(np.int64).sum()), "image_shape": list(images.shape[1:])}))
""")


def export_and_read_back(ds: tsfs.Dataset, data: dict, out: Path, check) -> None:
    import h5py

    h5_path = to_hdf5(ds, out / "digits.h5", compression="gzip", overwrite=True)
    with h5py.File(h5_path, "r") as f:
        image, label = f["image"], f["label"]
        print(f"  HDF5 {h5_path}: image {image.dtype}{image.shape} chunks {image.chunks}, gzip")
        check(np.array_equal(image[:], data["image"]) and np.array_equal(label[:], data["label"]),
              "h5py reads back every image and label")
        nz = f["nonzero"]
        i = 1234
        row = nz["values"][nz["offsets"][i]:nz["offsets"][i + 1]].reshape(nz["shapes"][i])
        check(np.array_equal(row, data["nonzero"][i]), "h5py rebuilds variable-shape row 1234 from offsets/shapes")
    export = to_tfrecord(ds, out / "tfrecord", shards=3, compression="GZIP", overwrite=True)
    print(f"  TFRecord: {len(export.paths)} GZIP shards + {Path(export.spec_path).name}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
    proc = subprocess.run([sys.executable, "-c", TF_READER, export.spec_path, *export.paths],
                          capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        check(False, f"tf.data reads the TFRecord export (exit {proc.returncode}: {proc.stderr[-500:]})")
        return
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = {"rows": len(data["id"]), "id_sum": int(data["id"].sum()), "label_sum": int(data["label"].sum()),
            "image_sum": int(data["image"].astype(np.int64).sum()), "image_shape": [8, 8]}
    check(got == want, f"tf.data.TFRecordDataset(...).map(parse) reads back {got['rows']} rows: ids, labels and "
          f"images match (sums {got['id_sum']}, {got['label_sum']}, {got['image_sum']})")


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

    print(f"(d) train an MLP on the split, {EPOCHS} epochs, DataLoader(TorchDataset(...), num_workers=2, "
          "persistent_workers=True)")
    train_and_evaluate(ds, train, test, check)

    print("(e) export to HDF5 and TFRecord, read back without tensorstore_fs")
    export_and_read_back(ds, data, Path(args.out), check)

    print("all checks passed" if not failures else f"{len(failures)} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
