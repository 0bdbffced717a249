"""The loader benchmark's ceiling: what ``DataLoader(num_workers=2)`` costs with no reading at all.

Its own module because it imports torch at module level (DataLoader workers started by spawn or
forkserver find the class by reference); the loader's other phases do not import torch.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .data import BATCH, EMB_DIM, IMAGE_SHAPE


class TransferDataset(IterableDataset):
    """Ready 256-row batches of the image schema. ``"private"``: a fresh private copy per batch (what a
    reader yields; torch then copies each tensor into a new shared-memory segment when it pickles the
    batch); ``"shared"``: a fresh single shared-memory segment per batch that the batch is written into
    (nothing left to copy when pickling)."""

    def __init__(self, mode: str, rows: int) -> None:
        self.mode, self.rows = mode, rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        src = {"id": torch.arange(BATCH), "label": torch.zeros(BATCH, dtype=torch.int32),
               "image": torch.zeros((BATCH, *IMAGE_SHAPE), dtype=torch.uint8),
               "embedding": torch.zeros((BATCH, EMB_DIM), dtype=torch.float32)}
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        nbytes = [v.numel() * v.element_size() for v in src.values()]
        for start in range(w * BATCH, self.rows, nw * BATCH):
            m = min(BATCH, self.rows - start)
            if self.mode == "private":
                yield {k: v[:m].clone() for k, v in src.items()}
                continue
            buf = torch.empty(sum(nbytes), dtype=torch.uint8).share_memory_()
            out, off = {}, 0
            for (k, v), nb in zip(src.items(), nbytes):
                t = buf[off:off + nb].view(v.dtype).view(v.shape)
                t.copy_(v)
                out[k] = t[:m]
                off += nb
            yield out
