"""A node-local cache of remote shard files, shared by every process of a machine.

Opt-in: ``open_dataset(url, cache_dir=...)`` or the environment variable ``TSFS_CACHE_DIR``
(shards go to its ``shards/`` folder). Without either, nothing is written locally.

* A shard is downloaded once per machine: the first process to need it takes an exclusive lock on
  the shard's lock file (``flock``), downloads it into a temporary file while computing its CRC32C,
  checks size and checksum against the manifest, and renames it into place (atomic). Processes
  waiting on the lock then find the file and use it; DataLoader workers and ranks on one machine
  share it.
* A cached file is named by its manifest checksum and size, so a file in the cache is always the
  bytes the manifest recorded (it was checked when it was filled) and a changed shard never meets
  a stale copy.
* Least recently used files are deleted when the cache grows past ``max_bytes`` (default 64 GiB or
  ``TSFS_CACHE_BYTES``), but never one used in the last :data:`EVICT_GRACE_S` seconds (every
  :meth:`ShardCache.fetch` marks a file used, at most every :data:`TOUCH_EVERY_S` seconds per
  process, on the file's ``.lock`` companion: the cached file itself never changes, so readers that
  keep it open by identity, inode, size and mtime, keep their map): a DataLoader worker hands the main process the
  *location* of rows in a cached file, and the main process maps it moments later. While every
  file is that recent, the cache stays above its limit (logged). A process that still maps a
  deleted file keeps reading it (POSIX).
* Cached files are read as local files: memory-mapped, at local-disk speed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from ._crc import crc32c_extend
from .errors import CorruptDatasetError

__all__ = ["EVICT_GRACE_S", "ShardCache", "cache_from_env"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 2**30
CHUNK = 8 << 20
EVICT_GRACE_S = 300.0  # a file used this recently is never evicted (its rows may be in flight to another process)
TOUCH_EVERY_S = 10.0  # a process marks a cached file used at most this often
_touched: dict[str, float] = {}  # path -> when this process last marked it used (time.monotonic)


def cache_from_env(cache_dir: str | os.PathLike | None) -> "ShardCache | None":
    """The cache at ``cache_dir``, else at ``$TSFS_CACHE_DIR/shards``, else None (no cache)."""
    if cache_dir is None:
        env = os.environ.get("TSFS_CACHE_DIR")
        if not env:
            return None
        cache_dir = Path(env) / "shards"
    max_bytes = int(os.environ.get("TSFS_CACHE_BYTES", DEFAULT_MAX_BYTES))
    return ShardCache(Path(cache_dir), max_bytes)


class ShardCache:
    """Remote shard files kept on local disk (see the module doc).

    Parameters
    ----------
    root : path
        The cache folder (created on first use).
    max_bytes : int
        Size limit; least recently used files go first.
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    def __repr__(self) -> str:
        return f"ShardCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def path_for(self, url: str, rel: str, size: int, crc32c: int) -> Path:
        """Where shard ``rel`` of the dataset at ``url`` is cached (named by its content)."""
        dataset = hashlib.sha256(url.encode()).hexdigest()[:16]
        return self.root / dataset / f"{crc32c:08x}-{size}-{os.path.basename(rel)}"

    def fetch(self, storage: Any, rel: str, size: int, crc32c: int) -> str:
        """The local path of shard ``rel`` (``size`` bytes, checksum ``crc32c``), downloaded from
        ``storage`` by whichever process needs it first.

        Raises
        ------
        CorruptDatasetError
            The downloaded bytes are not the ones the manifest recorded (nothing is cached).
        """
        final = self.path_for(storage.url, rel, size, crc32c)
        if final.exists():
            _touch(final)
            return str(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        with _locked(_lock_of(final)):
            if not final.exists():  # another process may have filled it while we waited
                self._download(storage, rel, size, crc32c, final)
                self._evict(keep=final)
        _touch(final)
        return str(final)

    def _download(self, storage: Any, rel: str, size: int, crc32c: int, final: Path) -> None:
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        crc, got = 0, 0
        try:
            with storage.open_stream(rel) as src, open(tmp, "wb") as dst:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    dst.write(chunk)
                    crc = crc32c_extend(crc, chunk)
                    got += len(chunk)
            if got != size or crc != crc32c:
                raise CorruptDatasetError(
                    f"{storage.url}/{rel}: downloaded {got} bytes crc32c {crc:08x}, the manifest records "
                    f"{size} bytes crc32c {crc32c:08x}; not cached")
            os.replace(tmp, final)  # atomic: readers see the whole, checked file or none
            logger.info("cache: %s/%s -> %s (%d bytes)", storage.url, rel, final, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _evict(self, keep: Path) -> None:
        """Delete least recently used files until the cache holds at most ``max_bytes``."""
        files = []
        for p in self.root.glob("*/*"):
            if p.name.endswith(".lock") or p.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                files.append((_used(p, st.st_mtime), st.st_size, p))
        total = sum(size for _, size, _ in files)
        recent = time.time() - EVICT_GRACE_S
        for mtime, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            if mtime >= recent:  # this and every later file were used within the grace period
                logger.warning("cache %s: %d bytes, over its limit of %d: every file left was used in the "
                               "last %g s", self.root, total, self.max_bytes, EVICT_GRACE_S)
                break
            if p == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                total -= size
                logger.info("cache: evicted %s", p)

    def size(self) -> int:
        """Bytes of the cached files."""
        return sum(p.stat().st_size for p in self.root.glob("*/*")
                   if not p.name.endswith(".lock") and not p.name.startswith("."))


def _lock_of(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _touch(path: Path) -> None:
    """Mark ``path`` used now: its ``.lock`` companion's modification time orders eviction (the
    cached file's own never changes after the fill)."""
    key, now = str(path), time.monotonic()
    if now - _touched.get(key, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
        return
    _touched[key] = now
    with contextlib.suppress(FileNotFoundError):
        _lock_of(path).touch()


def _used(path: Path, mtime: float) -> float:
    """When ``path`` was last marked used (its fill time if never)."""
    try:
        return max(mtime, _lock_of(path).stat().st_mtime)
    except FileNotFoundError:
        return mtime


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
