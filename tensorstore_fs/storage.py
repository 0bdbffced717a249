"""Where bytes live: fsspec at the edge, pyarrow's native local filesystem inside where it exists.

A :class:`Storage` is a picklable handle on a dataset root URL. It builds its filesystem lazily (an
s3fs instance created in a parent process does not survive a fork into DataLoader workers), and
offers just what the format needs: read a small file, create one exclusively (the commit point),
stream a shard out while checksumming it, and open a shard for Parquet reads.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._crc import crc32c_extend
from .errors import CommitConflictError, DatasetNotFoundError, InvalidArgumentError

__all__ = ["Storage", "ChecksumWriter", "LocalShardSink"]

logger = logging.getLogger(__name__)


class ChecksumWriter(io.RawIOBase):
    """A shard sink for fsspec filesystems: a file wrapper checksumming bytes as they pass.

    Used where pyarrow has no native filesystem (object stores through fsspec); the network, not
    the Python hop, bounds those writes.
    """

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        self.crc = 0
        self.size = 0

    @property
    def stream(self) -> Any:
        return self

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        mv = memoryview(data).cast("B")
        self._raw.write(mv)
        self.crc = crc32c_extend(self.crc, mv)
        self.size += len(mv)
        return len(mv)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if not self._raw.closed:
            self._raw.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()
            if not self._raw.closed:
                self._raw.close()

    def checkpoint(self) -> None:
        """Nothing to do: bytes are checksummed as they are written."""

    def finish(self) -> tuple[int, int]:
        """Close; return ``(size, crc32c)`` of everything written."""
        self.close()
        return self.size, self.crc


class LocalShardSink:
    """A shard sink for local files: pyarrow writes natively, a thread checksums behind it.

    After each row group (:meth:`checkpoint`) the bytes appended since the last checkpoint are
    checksummed on a background thread straight from the page cache through a read-only map (the
    CRC32C extension releases the GIL), overlapping the encoding of the next row group.
    """

    _CHUNK = 8 << 20

    def __init__(self, path: str) -> None:
        import pyarrow as pa

        self.path = path
        self.stream = pa.OSFile(path, "wb")
        self._fd = os.open(path, os.O_RDONLY)
        self._crc = 0
        self._done = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsfs-crc")
        self._pending: list[Future[None]] = []

    @property
    def size(self) -> int:
        return self.stream.tell() if not self.stream.closed else self._done

    def _checksum_upto(self, end: int) -> None:
        if end <= self._done:
            return
        with mmap.mmap(self._fd, end, access=mmap.ACCESS_READ) as view:
            mv = memoryview(view)
            try:
                pos = self._done
                while pos < end:
                    stop = min(end, pos + self._CHUNK)
                    self._crc = crc32c_extend(self._crc, mv[pos:stop])
                    pos = stop
            finally:
                mv.release()
        self._done = end

    def checkpoint(self) -> None:
        self.stream.flush()
        self._pending.append(self._pool.submit(self._checksum_upto, self.stream.tell()))

    def finish(self) -> tuple[int, int]:
        """Close; wait for the checksum; return ``(size, crc32c)``."""
        if not self.stream.closed:
            self.stream.close()
        size = os.path.getsize(self.path)
        self._pending.append(self._pool.submit(self._checksum_upto, size))
        try:
            for f in self._pending:
                f.result()
        finally:
            self._shutdown()
        return size, self._crc

    def close(self) -> None:
        """Abandon the file (used on abort)."""
        if not self.stream.closed:
            self.stream.close()
        self._shutdown()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Storage:
    """A dataset root on some filesystem.

    Parameters
    ----------
    url : str or os.PathLike
        A local path, ``file://``, ``memory://``, ``s3://``, ``gs://`` or any fsspec URL.
    storage_options : mapping, optional
        Passed to the fsspec filesystem constructor (credentials, endpoint, ...).
    """

    def __init__(self, url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(url, (str, os.PathLike)):
            raise InvalidArgumentError(f"url must be a str or path, got {type(url).__name__}")
        url = os.fspath(url)
        if not url:
            raise InvalidArgumentError("url must not be empty")
        self.url = url.rstrip("/") if len(url) > 1 else url
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._root: str | None = None

    # pickling: never ship a live filesystem object to another process
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def _connect(self) -> None:
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError) as e:
            raise InvalidArgumentError(f"cannot open filesystem for {self.url!r}: {e}") from e
        self._fs, self._root = fs, root.rstrip("/") if root != "/" else root

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (created on first use, in the current process)."""
        if self._fs is None:
            self._connect()
        return self._fs

    @property
    def root(self) -> str:
        if self._root is None:
            self._connect()
        return self._root  # type: ignore[return-value]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` under the root."""
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    # -- small files ------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.url}: {rel} does not exist") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write (or replace) a small file."""
        p = self.path(rel)
        self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        if self.is_local:
            tmp = f"{p}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, p)
        else:
            self.fs.pipe_file(p, data)

    def create_exclusive(self, rel: str, data: bytes) -> None:
        """Create ``rel`` holding ``data`` only if it does not exist yet, atomically.

        Local: the bytes go to a temporary file which is hard-linked to the final name (``link``
        fails if the name exists, and readers never see a partial file). Object stores: a
        conditional put where the filesystem supports it (``mode="create"``), else an existence
        check followed by a single-object put (which object stores make atomic).

        Raises
        ------
        CommitConflictError
            If ``rel`` already exists.
        """
        p = self.path(rel)
        fs = self.fs
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        if self.is_local:
            tmp = f"{p}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, p)
            except FileExistsError:
                raise CommitConflictError(f"{self.url}: {rel} already exists (another writer committed it)") from None
            finally:
                os.unlink(tmp)
            return
        try:
            with fs.open(p, "create") as fh:  # s3fs: conditional write (If-None-Match)
                fh.write(data)
            return
        except FileExistsError:
            raise CommitConflictError(f"{self.url}: {rel} already exists (another writer committed it)") from None
        except (ValueError, NotImplementedError, TypeError, KeyError):
            pass  # the filesystem has no conditional create
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e):
                raise CommitConflictError(f"{self.url}: {rel} already exists (another writer committed it)") from None
            raise
        if fs.exists(p):
            raise CommitConflictError(f"{self.url}: {rel} already exists (another writer committed it)")
        fs.pipe_file(p, data)

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def is_nonempty_dir(self) -> bool:
        """True if the root exists and holds anything (a file at the root counts too)."""
        fs = self.fs
        if not fs.exists(self.root):
            return False
        if not fs.isdir(self.root):
            return True
        return bool(fs.ls(self.root, detail=False))

    # -- shard files -----------------------------------------------------------------------------
    def open_output(self, rel: str) -> "LocalShardSink | ChecksumWriter":
        """Open a new shard file; the sink's ``stream`` goes to Parquet, ``finish()`` gives size and CRC."""
        p = self.path(rel)
        self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        if self.is_local:
            return LocalShardSink(p)
        return ChecksumWriter(self.fs.open(p, "wb"))

    def open_input(self, rel: str) -> Any:
        """Open a shard for Parquet reading: a memory map locally, an fsspec file elsewhere (readers
        open shards through :func:`tensorstore_fs.read.scan.open_shard`, which keeps them open)."""
        p = self.path(rel)
        try:
            if self.is_local:
                import pyarrow as pa

                return pa.memory_map(p, "r")
            return self.fs.open(p, "rb", cache_type="none")
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.url}: shard file {rel} is missing") from None

    def open_stream(self, rel: str) -> Any:
        """Open a file for sequential reading (used to verify checksums)."""
        try:
            return self.fs.open(self.path(rel), "rb")
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.url}: shard file {rel} is missing") from None
