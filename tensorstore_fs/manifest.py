"""The manifest: the list of committed shards of one dataset version, and the commit point.

Layout under the dataset root (see docs/format.md)::

    _tsfs/manifest-0000000001.json   # one immutable file per version, created exclusively
    _tsfs/_latest                    # a hint: the newest version number (plain text)
    data/part-<writer>-<seq>.parquet # shard files, never rewritten

Opening a dataset reads ``_latest`` and the manifest it names, then checks that the next version
does not exist (the hint is written after the commit and may lag). No listing, no footer scans.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._crc import crc32c
from .errors import CorruptDatasetError, DatasetNotFoundError, InvalidArgumentError, UnsupportedFormatError
from .schema import Schema
from .storage import Storage

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "RowGroupInfo",
    "ShardInfo",
    "Manifest",
    "manifest_path",
    "load_manifest",
    "latest_version",
]

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "tensorstore_fs.manifest"
MANIFEST_FORMAT_VERSION = 1
META_DIR = "_tsfs"
SHARD_DIR = "data"  # every shard file a manifest names lies under <root>/data/
LATEST = f"{META_DIR}/_latest"


def manifest_path(version: int) -> str:
    return f"{META_DIR}/manifest-{version:010d}.json"


@dataclass(frozen=True)
class RowGroupInfo:
    """Rows of one Parquet row group and min/max/null-count of its filterable columns.

    ``stats`` maps column -> ``{"min": v, "max": v, "nulls": k}``; ``min``/``max`` are absent when
    unknown (all null, NaN present, or a type without order).
    """

    rows: int
    stats: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "stats": {k: dict(v) for k, v in self.stats.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RowGroupInfo":
        return cls(rows=int(d["rows"]), stats=d.get("stats") or {})


@dataclass(frozen=True)
class ShardInfo:
    """One committed shard file."""

    path: str
    rows: int
    bytes: int
    crc32c: int
    row_groups: tuple[RowGroupInfo, ...]
    version_added: int = 0

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if len(parts) < 2 or parts[0] != SHARD_DIR or any(p in ("", ".", "..") for p in parts) or "\\" in self.path:
            # a manifest names files inside its dataset's data/ folder, nothing else: a crafted one
            # must not make a reader open (or verify, or export) files elsewhere
            raise CorruptDatasetError(f"shard path {self.path!r}: not a relative path inside {SHARD_DIR}/")
        if sum(rg.rows for rg in self.row_groups) != self.rows:
            raise CorruptDatasetError(
                f"shard {self.path}: row groups hold {sum(rg.rows for rg in self.row_groups)} rows, "
                f"manifest says {self.rows}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "crc32c": f"{self.crc32c:08x}",
            "version_added": self.version_added,
            "row_groups": [rg.to_dict() for rg in self.row_groups],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShardInfo":
        return cls(
            path=str(d["path"]),
            rows=int(d["rows"]),
            bytes=int(d["bytes"]),
            crc32c=int(d["crc32c"], 16),
            row_groups=tuple(RowGroupInfo.from_dict(r) for r in d["row_groups"]),
            version_added=int(d.get("version_added", 0)),
        )


@dataclass(frozen=True)
class Manifest:
    """One committed version of a dataset."""

    version: int
    parent_version: int | None
    schema: Schema
    shards: tuple[ShardInfo, ...]
    created_at: str = ""
    writer: str = ""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def body(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "version": self.version,
            "parent_version": self.parent_version,
            "created_at": self.created_at,
            "writer": self.writer,
            "rows": self.rows,
            "bytes": self.bytes,
            "schema": self.schema.to_dict(),
            "shards": [s.to_dict() for s in self.shards],
        }

    def to_json(self) -> bytes:
        body = self.body()
        body["checksum"] = f"{_body_crc(body):08x}"
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: str = "manifest") -> "Manifest":
        try:
            d = json.loads(data)
        except ValueError as e:
            raise CorruptDatasetError(f"{where} is not valid JSON (truncated or corrupt): {e}") from None
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise CorruptDatasetError(f"{where} is not a tensorstore_fs manifest")
        if d.get("format_version") != MANIFEST_FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{where} has format_version {d.get('format_version')!r}; this library reads version "
                f"{MANIFEST_FORMAT_VERSION} (upgrade tensorstore_fs)"
            )
        stored = d.pop("checksum", None)
        if stored is None or f"{_body_crc(d):08x}" != stored:
            raise CorruptDatasetError(f"{where} failed its checksum: it was modified or damaged")
        try:
            m = cls(
                version=int(d["version"]),
                parent_version=None if d["parent_version"] is None else int(d["parent_version"]),
                schema=Schema.from_dict(d["schema"]),
                shards=tuple(ShardInfo.from_dict(s) for s in d["shards"]),
                created_at=d.get("created_at", ""),
                writer=d.get("writer", ""),
            )
        except (KeyError, TypeError, ValueError, CorruptDatasetError) as e:
            if isinstance(e, CorruptDatasetError):
                raise CorruptDatasetError(f"{where}: {e}") from None
            raise CorruptDatasetError(f"{where} is malformed: {type(e).__name__}: {e}") from None
        return m


def _body_crc(body: Mapping[str, Any]) -> int:
    return crc32c(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def latest_version(storage: Storage) -> int | None:
    """Newest committed version, or None if the URL holds no dataset."""
    hint = 0
    if storage.exists(LATEST):
        try:
            hint = int(storage.read_bytes(LATEST).decode().strip())
        except ValueError:
            logger.warning("%s: ignoring unreadable %s", storage.url, LATEST)
    v = hint
    while storage.exists(manifest_path(v + 1)):
        v += 1
    if v == 0:
        return None
    if v == hint and not storage.exists(manifest_path(v)):
        raise CorruptDatasetError(f"{storage.url}: {LATEST} names version {v} but its manifest is missing")
    return v


def load_manifest(storage: Storage, version: int | None = None) -> Manifest:
    """Read one manifest (the newest when ``version`` is None)."""
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise InvalidArgumentError(f"version must be a positive int, got {version!r}")
    if version is None:
        version = latest_version(storage)
        if version is None:
            raise DatasetNotFoundError(f"{storage.url} is not a tensorstore_fs dataset (no {META_DIR}/ manifest)")
    rel = manifest_path(version)
    if not storage.exists(rel):
        newest = latest_version(storage)
        if newest is None:
            raise DatasetNotFoundError(f"{storage.url} is not a tensorstore_fs dataset (no {META_DIR}/ manifest)")
        if version < newest:  # versions are consecutive: an older one is missing only once removed
            raise DatasetNotFoundError(f"{storage.url}: version {version} does not exist any more: it was removed "
                                       f"(vacuum deletes the versions it does not retain); the newest is {newest}")
        raise DatasetNotFoundError(f"{storage.url}: version {version} does not exist")
    m = Manifest.from_json(storage.read_bytes(rel), where=f"{storage.url}/{rel}")
    if m.version != version:
        raise CorruptDatasetError(f"{storage.url}/{rel} claims version {m.version}")
    return m


def commit_manifest(storage: Storage, manifest: Manifest) -> None:
    """Create the manifest file exclusively (the commit point), then update the hint."""
    storage.create_exclusive(manifest_path(manifest.version), manifest.to_json())
    try:
        storage.write_bytes(LATEST, str(manifest.version).encode())
    except OSError as e:  # the commit stands; readers probe forward past a stale hint
        logger.warning("%s: committed version %d but could not update %s: %s", storage.url, manifest.version, LATEST, e)
