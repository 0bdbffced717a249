"""Where bytes live: fsspec at the edge, pyarrow's native local filesystem inside where it exists.

A :class:`Storage` is a picklable handle on a dataset root URL. It builds its filesystem lazily (an
s3fs instance created in a parent process does not survive a fork into DataLoader workers), and
offers just what the format needs: read a small file, create one exclusively (the commit point),
stream a shard out while checksumming it, and open a shard for Parquet reads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._crc import crc32c_extend
from .cache import ShardCache, cache_from_env
from . import remote
from .errors import (CommitConflictError, CorruptDatasetError, DatasetNotFoundError, InvalidArgumentError, StorageError, TensorstoreError,
                     UnsafeCommitError)

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
        """Close; flush the file to the disk (fsync) while the checksum completes; return
        ``(size, crc32c)``. The writer commits only files that reached the disk."""
        if not self.stream.closed:
            self.stream.close()
        size = os.path.getsize(self.path)
        self._pending.append(self._pool.submit(self._checksum_upto, size))
        try:
            os.fsync(self._fd)  # the file's data and size; a read-only descriptor suffices on Linux
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
        A local path, ``file://``, ``memory://``, ``s3://``, ``gs://`` or any fsspec URL. A path
        without ``scheme://`` is local even if it contains ``::`` (``/runs/a::b``); a chain of
        filesystems needs an explicit protocol (``simplecache::s3://...``; :func:`remote.is_local_path`).
    storage_options : mapping, optional
        Passed to the fsspec filesystem constructor (credentials, endpoint, ...). Object stores get
        finite timeouts and retries by default (:mod:`tensorstore_fs.remote`); values given here win.
    unsafe_commits : bool, optional
        Allow commits on a filesystem with no conditional create (safe only while one writer
        commits at a time); default ``TSFS_UNSAFE_COMMITS`` from the environment, else False.
    cache_dir : path, optional
        Keep remote shard files in this node-local cache (:mod:`tensorstore_fs.cache`); default
        ``$TSFS_CACHE_DIR/shards`` when that variable is set, else no cache.

    Every failure of the filesystem (network, timeout, refused request) is raised as a
    :class:`~tensorstore_fs.StorageError` naming the URL and the operation.
    """

    def __init__(self, url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None, *,
                 unsafe_commits: bool | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        if not isinstance(url, (str, os.PathLike)):
            raise InvalidArgumentError(f"url must be a str or path, got {type(url).__name__}")
        url = os.fspath(url)
        if not url:
            raise InvalidArgumentError("url must not be empty")
        self.url = url.rstrip("/") if len(url) > 1 else url
        self.storage_options = dict(storage_options or {})
        self.unsafe_commits = unsafe_commits
        self.cache_dir = cache_dir
        self._cache: ShardCache | None | bool = False  # resolved on first use
        self._fs: Any = None
        self._root: str | None = None
        self._pid = os.getpid()
        self._real_root: str | None = None  # the root with every link resolved (local only)
        self._checked: dict[str, str] = {}  # shard paths found to lie inside the root (local only)

    # pickling: never ship a live filesystem object to another process
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "unsafe_commits": self.unsafe_commits,
                "cache_dir": self.cache_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"],  # type: ignore[misc]
                      unsafe_commits=state.get("unsafe_commits"), cache_dir=state.get("cache_dir"))

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def _connect(self) -> None:
        if remote.is_local_path(self.url):
            # a plain path is a local path, "::" and all (fsspec would read "/a/run::b" as a chain
            # of two URLs and open "/a/run"); chains need an explicit protocol (remote.is_local_path)
            fs: Any = LocalFileSystem()
            root = fs._strip_protocol(self.url)
        else:
            try:
                fs, root = fsspec.core.url_to_fs(self.url, **remote.with_defaults(self.url, self.storage_options))
            except (ImportError, ValueError) as e:
                raise InvalidArgumentError(f"cannot open filesystem for {self.url!r}: {e}") from e
        self._fs, self._root, self._pid = remote.configure(fs, self.storage_options), root.rstrip("/") if root != "/" else root, os.getpid()
        self._real_root = None
        self._checked = {}

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, created on first use in the current process: a forked child (a
        DataLoader worker) makes its own, since async filesystems such as s3fs are not fork-safe
        (fsspec clears its instance cache in the child)."""
        if self._fs is None or self._pid != os.getpid():
            self._connect()
        return self._fs

    @property
    def root(self) -> str:
        if self._root is None:
            self._connect()
        return self._root  # type: ignore[return-value]

    @contextlib.contextmanager
    def _op(self, what: str, rel: str = "") -> Iterator[None]:
        """Raise a failure of the filesystem during ``what`` as a :class:`StorageError`."""
        try:
            yield
        except TensorstoreError:
            raise
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below; anything else propagates as it is
            if not remote.is_storage_failure(e):
                raise
            where = f"{self.url}/{rel}" if rel else self.url
            raise StorageError(f"{where}: {what} failed: {type(e).__name__}: {e}") from e

    @property
    def cache(self) -> "ShardCache | None":
        """The node-local shard cache of a remote dataset (None for local ones, or when off)."""
        if self._cache is False:
            self._cache = None if self.is_local else cache_from_env(self.cache_dir)
        return self._cache  # type: ignore[return-value]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` under the root."""
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def shard_path(self, rel: str) -> str:
        """Filesystem path of the shard file ``rel``, for reading. On a local filesystem the path
        must lead to a file inside the dataset's root once every symbolic link is resolved.

        Raises
        ------
        CorruptDatasetError
            ``rel`` (or a folder on its way) is a link to somewhere outside the dataset.
        """
        p = self.path(rel)
        if not self.is_local or rel in self._checked:
            return p
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        real = os.path.realpath(p)
        if os.path.commonpath([real, self._real_root]) != self._real_root:
            link = next((q for q in _prefixes(p, self.root) if os.path.islink(q)), p)
            raise CorruptDatasetError(
                f"{self.url}/{rel}: {link} is a symbolic link to {os.readlink(link) if os.path.islink(link) else real} "
                f"(resolving to {real}), outside the dataset {self._real_root}: refusing to read it")
        self._checked[rel] = p
        return p

    # -- small files ------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        with self._op("checking existence", rel):
            return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self._op("reading", rel):
                return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.url}: {rel} does not exist") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write (or replace) a small file."""
        p = self.path(rel)
        with self._op("writing", rel):
            self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
            if self.is_local:
                tmp = f"{p}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, p)
            else:
                self.fs.pipe_file(p, data)

    def create_exclusive(self, rel: str, data: bytes) -> None:
        """Create ``rel`` holding ``data`` only if it does not exist yet, atomically (the commit
        point; how, per filesystem: :mod:`tensorstore_fs.remote`).

        Raises
        ------
        CommitConflictError
            If ``rel`` already exists (another writer created it first).
        UnsafeCommitError
            The filesystem has no conditional create and unsafe commits were not allowed.
        """
        p = self.path(rel)
        conflict = f"{self.url}: {rel} already exists (another writer committed it)"
        with self._op("creating", rel):
            fs = self.fs
            if self.is_local:
                fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
                self._link_exclusive(p, data, conflict)
                return
            how = self.check_commit_safe(rel)
            fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
            if how == "xb":
                try:
                    with fs.open(p, "xb") as fh:  # If-None-Match: * (the store answers 412 if it exists)
                        fh.write(data)
                except FileExistsError:
                    raise CommitConflictError(conflict) from None
                except OSError as e:
                    if remote.precondition_failed(e):
                        raise CommitConflictError(conflict) from None
                    raise
                return
            if fs.exists(p):  # "process" (memory://), or allowed to be unsafe
                raise CommitConflictError(conflict)
            fs.pipe_file(p, data)

    def check_commit_safe(self, rel: str = "its manifest") -> str:
        """How this filesystem creates ``rel`` exclusively (:func:`tensorstore_fs.remote.conditional_create`;
        ``"link"`` locally). Writers call it before writing anything.

        Raises
        ------
        UnsafeCommitError
            No conditional create is known for the filesystem and unsafe commits were not allowed.
        """
        if self.is_local:
            return "link"
        fs = self.fs
        how = remote.conditional_create(fs)
        if not how and not remote.unsafe_commits_allowed(self.unsafe_commits):
            protocol = fs.protocol if isinstance(fs.protocol, str) else "/".join(fs.protocol)
            raise UnsafeCommitError(
                f"{self.url}: refusing to commit: {type(fs).__name__} ({protocol}://) cannot create {rel} only if "
                "it does not exist, so two writers committing at once could overwrite each other's version. "
                "If only one writer commits at a time, pass unsafe_commits=True (or set TSFS_UNSAFE_COMMITS=1)")
        return how

    def _link_exclusive(self, p: str, data: bytes, conflict: str) -> None:
        """Local: the bytes go to a temporary file which is hard-linked to the final name (``link``
        fails if the name exists, and readers never see a partial file)."""
        tmp = f"{p}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, p)
        except FileExistsError:
            raise CommitConflictError(conflict) from None
        finally:
            os.unlink(tmp)

    def delete(self, rel: str) -> None:
        try:
            with self._op("deleting", rel):
                self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def list_names(self, rel: str) -> list[str]:
        """Names of the entries of folder ``rel`` (empty if it does not exist)."""
        try:
            with self._op("listing", rel):
                return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False)]
        except FileNotFoundError:
            return []

    def is_nonempty_dir(self) -> bool:
        """True if the root exists and holds anything (a file at the root counts too)."""
        with self._op("listing"):
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
        with self._op("creating", rel):
            self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
            if self.is_local:
                return LocalShardSink(p)
            return ChecksumWriter(_GuardedFile(self.fs.open(p, "wb"), self, rel))

    def open_input(self, rel: str) -> Any:
        """Open a shard for Parquet reading: a memory map locally, an fsspec file elsewhere whose
        failures are :class:`StorageError` (readers open shards through
        :func:`tensorstore_fs.read.scan.open_shard`, which keeps local ones open)."""
        p = self.shard_path(rel)
        try:
            if self.is_local:
                import pyarrow as pa

                return pa.memory_map(p, "r")
            with self._op("opening", rel):
                return _GuardedFile(self.fs.open(p, "rb", cache_type="none"), self, rel)
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.url}: shard file {rel} is missing") from None

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of file ``rel``: one ranged request on an object store."""
        for attempt in range(2):
            try:
                with self._op(f"reading bytes {start}-{end}", rel):
                    return self.fs.cat_file(self.path(rel), start=start, end=end)
            except FileNotFoundError:
                raise DatasetNotFoundError(f"{self.url}: shard file {rel} is missing") from None
            except StorageError as e:
                # the client retried the request; a body cut short is tried once more (a timeout
                # is not: the client's tries already waited for it)
                if attempt or "timeout" in type(e.__cause__).__name__.lower():
                    raise
                logger.debug("%s: retrying: %s", rel, e)
        raise AssertionError("unreachable")

    def open_stream(self, rel: str) -> Any:
        """Open a file for sequential reading (used to verify checksums)."""
        try:
            with self._op("opening", rel):
                fh = self.fs.open(self.shard_path(rel), "rb")
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{self.url}: shard file {rel} is missing") from None
        return fh if self.is_local else _GuardedFile(fh, self, rel)


def _prefixes(path: str, root: str) -> list[str]:
    """``path`` and its parent folders below ``root``, outermost first."""
    out, q = [], path
    while len(q) > len(root):
        out.append(q)
        q = os.path.dirname(q)
    return out[::-1]


class _GuardedFile:
    """A remote file whose failures (network, timeout) are :class:`StorageError` naming it, also
    when pyarrow reads or writes it (pyarrow hands a Python file's exceptions on as they are)."""

    def __init__(self, raw: Any, storage: Storage, rel: str) -> None:
        self._raw, self._storage, self._rel = raw, storage, rel

    def read(self, n: int = -1) -> bytes:
        with self._storage._op("reading", self._rel):
            return self._raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        with self._storage._op("seeking", self._rel):
            return self._raw.seek(offset, whence)

    def write(self, data: Any) -> int:
        with self._storage._op("writing", self._rel):
            return self._raw.write(data)

    def flush(self) -> None:
        with self._storage._op("writing", self._rel):
            self._raw.flush()

    def close(self) -> None:
        with self._storage._op("finishing", self._rel):  # an upload completes here
            self._raw.close()

    def __getattr__(self, name: str) -> Any:  # tell, size, closed, readable, seekable, ...
        return getattr(self._raw, name)

    def __enter__(self) -> "_GuardedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
