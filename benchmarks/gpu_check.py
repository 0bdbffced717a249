"""GPU-side check of the PyTorch adapter: pinned-memory batches from DataLoader workers, moved to the
GPU with non_blocking copies, values checked on the device, loader->GPU throughput measured.

Run on a machine with CUDA:  python benchmarks/gpu_check.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tensorstore_fs as tsfs  # noqa: E402
from tensorstore_fs.readers.torch import TorchDataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    dev = torch.device("cuda")
    tmp = Path(tempfile.mkdtemp(prefix="tsfs_gpu_"))
    n = args.rows
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (n, 3, 64, 64), dtype=np.uint8)
    label = (np.arange(n) % 10).astype(np.int32)
    ds = tsfs.write_dataset(str(tmp / "ds"), {"id": np.arange(n), "label": label, "image": image})
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": n,
                     "payload_gb": (image.nbytes + label.nbytes + 8 * n) / 1e9, "runs": []}
    ok = True
    for workers, pin in [(0, False), (0, True), (2, False), (2, True)]:
        tds = TorchDataset(ds, batch_size=256, shuffle=True, seed=1, with_row_ids=True, remainder="uneven")
        loader = DataLoader(tds, batch_size=None, num_workers=workers, pin_memory=pin,
                            persistent_workers=workers > 0)
        for epoch in range(2):  # epoch 0 warms up workers and caches; epoch 1 is timed
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            seen = 0
            pinned = True
            checksum_gpu = torch.zeros((), dtype=torch.int64, device=dev)
            checksum_ref = 0
            for batch in loader:
                pinned &= bool(batch["image"].is_pinned())
                img = batch["image"].to(dev, non_blocking=True)
                rid = batch["__row_id__"]
                checksum_gpu += img.to(torch.int64).sum()
                checksum_ref += int(image[rid.numpy()].astype(np.int64).sum())
                seen += len(rid)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        match = int(checksum_gpu.item()) == checksum_ref and seen == n
        ok &= match and (pinned == pin)
        results["runs"].append({"num_workers": workers, "pin_memory": pin, "rows": seen, "seconds": dt,
                                "rows_per_s": seen / dt, "gb_per_s": results["payload_gb"] / dt,
                                "batches_pinned": pinned, "gpu_checksum_matches": match})
        print(json.dumps(results["runs"][-1]))
    results["ok"] = ok
    shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
