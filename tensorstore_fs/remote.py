"""What the library knows about each kind of filesystem: how it creates a file only if it does not
exist yet (the commit point), the timeouts and retries an object store is given by default, and
which exceptions are failures of the storage (mapped to :class:`~tensorstore_fs.StorageError`).

Conditional create, by filesystem:

* local files: a hard link of a fully written temporary file (``link`` fails if the name exists);
* S3 (s3fs): ``open(path, "xb")``, a PUT with ``If-None-Match: *``; the store answers 412 to the
  second writer (s3fs raises ``OSError`` "At least one of the pre-conditions you specified did not
  hold"). s3fs's ``"create"`` mode is not supported and must not be used;
* ``memory://``: one process's dictionary, so check-then-put cannot interleave with another writer;
* anything else: no conditional create is known; commits are refused
  (:class:`~tensorstore_fs.UnsafeCommitError`) unless the caller says only one writer commits at a
  time (``unsafe_commits=True`` or ``TSFS_UNSAFE_COMMITS=1``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

__all__ = ["CONNECT_TIMEOUT_S", "READ_TIMEOUT_S", "ATTEMPTS", "conditional_create", "configure",
           "is_local_path", "is_storage_failure", "precondition_failed", "unsafe_commits_allowed", "with_defaults"]

CONNECT_TIMEOUT_S = 10  # an object store that does not accept a connection within this fails the call
READ_TIMEOUT_S = 20  # ... or does not answer a request within this (a stalled server never hangs a reader)
ATTEMPTS = 3  # tries of a request that failed transiently, with exponential backoff (botocore "standard")
# s3fs retries some errors itself around botocore's tries, and a ranged read nests two such loops
# (its default, 5, made a stalled server take minutes to fail a read): botocore's tries do the retrying
S3FS_RETRIES = 1

S3_PROTOCOLS = ("s3", "s3a")
_FAILURE_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "gcsfs", "s3fs",
                    "adlfs", "azure")


def protocol_of(url: str) -> str:
    """The filesystem protocol of ``url`` (``"file"`` for a plain path; the outer one of a chain)."""
    head = url.split("::", 1)[0]
    return head.split("://", 1)[0] if "://" in head else "file"


def is_local_path(url: str) -> bool:
    """Whether ``url`` names a local path: no ``scheme://`` and no leading ``protocol::`` chain
    with a protocol fsspec knows. ``/data/run::b`` is the local folder ``run::b``;
    ``simplecache::s3://bucket/x``, ``simplecache::/data/x`` and ``file:///data/x`` go to fsspec
    (which reads ``::`` as a chain of URLs)."""
    if "://" in url:
        return False
    head, sep, _ = url.partition("::")
    if not sep:
        return True
    import fsspec

    return head not in fsspec.available_protocols()


def with_defaults(url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` plus finite timeouts and retries for object stores (the caller's values win)."""
    out = dict(options)
    out.pop("s3fs_retries", None)  # ours (see configure), not the filesystem's
    if protocol_of(url) in S3_PROTOCOLS:
        config = dict(out.get("config_kwargs") or {})
        config.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        config.setdefault("read_timeout", READ_TIMEOUT_S)
        config.setdefault("retries", {"max_attempts": ATTEMPTS, "mode": "standard"})
        out["config_kwargs"] = config
    return out


def configure(fs: Any, options: Mapping[str, Any]) -> Any:
    """Bound what the filesystem ``fs`` retries by itself (s3fs wraps botocore's tries in its own,
    5 by default: with the default timeouts a stalled server took minutes to fail a read). A
    ``"s3fs_retries"`` key in ``options`` sets it instead; the longest a ranged read can then take
    is about ``s3fs_retries**2 x max_attempts x (connect + read timeout)`` (s3fs nests two retry
    loops around a ranged read), 3 x 30 s with the defaults."""
    if any(p in S3_PROTOCOLS for p in _protocols(fs)) and hasattr(fs, "retries"):
        fs.retries = int(options.get("s3fs_retries", S3FS_RETRIES))
    return fs


def _protocols(fs: Any) -> tuple[str, ...]:
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)


def conditional_create(fs: Any) -> str:
    """How ``fs`` creates a file only if it is absent: ``"xb"`` (an atomic conditional write),
    ``"process"`` (the filesystem lives in this process) or ``""`` (no way known)."""
    protocols = _protocols(fs)
    if any(p in S3_PROTOCOLS for p in protocols):
        return "xb"
    if "memory" in protocols:
        return "process"
    return ""


def precondition_failed(error: BaseException) -> bool:
    """Whether ``error`` is an object store refusing a conditional write because the object exists."""
    text = str(error).lower()
    return "pre-condition" in text or "precondition" in text or "412" in text


def is_storage_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the storage (I/O, network, timeout, a refused request)
    rather than a bug: such errors become :class:`~tensorstore_fs.StorageError`."""
    if isinstance(error, (OSError, TimeoutError, ConnectionError)):
        return True
    return type(error).__module__.split(".", 1)[0] in _FAILURE_MODULES


def unsafe_commits_allowed(flag: bool | None) -> bool:
    """The caller's ``unsafe_commits=``, else the environment variable ``TSFS_UNSAFE_COMMITS``."""
    if flag is not None:
        return bool(flag)
    return os.environ.get("TSFS_UNSAFE_COMMITS", "").strip().lower() in ("1", "true", "yes", "on")
