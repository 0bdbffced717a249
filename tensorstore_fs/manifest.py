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
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._crc import crc32c
from .errors import (CorruptDatasetError, DatasetNotFoundError, InvalidArgumentError, StorageError,
                     UnsupportedFormatError)
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
        if (len(parts) < 2 or parts[0] != SHARD_DIR or any(p in ("", ".", "..") for p in parts) or "\\" in self.path
                or any(ord(c) < 32 or c == "\x7f" for c in self.path)):
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
        """Parse and validate a manifest file's bytes (``where`` names the file in errors).

        Every claim is checked once, here, before anything uses it (docs/format.md, "How a reader
        validates a manifest"): JSON without non-finite numbers, a bounded nesting depth, the
        checksum, the type and range of every key, row counts that add up, statistics that fit
        their column's type, and shard paths inside ``data/``.

        Raises
        ------
        CorruptDatasetError
            Naming ``where``, the shard or row group and what is wrong.
        UnsupportedFormatError
            Another ``format_version``.
        """
        try:
            d = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            raise CorruptDatasetError(f"{where} is nested too deeply to be a manifest") from None
        except (ValueError, TypeError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise CorruptDatasetError(f"{where} is not valid JSON (truncated or corrupt): {e}") from None
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise CorruptDatasetError(f"{where} is not a tensorstore_fs manifest")
        if d.get("format_version") != MANIFEST_FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{where} has format_version {_show(d.get('format_version'))}; this library reads version "
                f"{MANIFEST_FORMAT_VERSION} (upgrade tensorstore_fs)"
            )
        try:
            _check_depth(d, MAX_DEPTH)
            stored = d.pop("checksum", None)
            if not isinstance(stored, str) or f"{_body_crc(d):08x}" != stored:
                raise CorruptDatasetError("failed its checksum: it was modified or damaged")
            return _parse_body(cls, d)
        except CorruptDatasetError as e:
            raise type(e)(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError, RecursionError) as e:
            # the schema's own parser (SchemaError is a ValueError) and anything _parse_body missed
            raise CorruptDatasetError(f"{where} is malformed: {type(e).__name__}: {e}") from None


# -- validation of a parsed manifest (once, when it is read) ------------------------------------------
MAX_DEPTH = 16  # a manifest nests 6 deep (body > shards > shard > row_groups > group > stats > column)
MAX_ROWS = 2**53  # every row count, and their total (int64 arithmetic never overflows below this)
MIN_SHARD_BYTES = 12  # the smallest Parquet file: "PAR1", an empty footer's length, "PAR1"
MAX_PAGE_VALUES = 2**31 - 1  # a Parquet data page counts its values in an int32
_CRC_HEX = re.compile(r"[0-9a-f]{8}")
_INT_RANGES = {f"int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)}
_INT_RANGES.update({f"uint{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} (JSON has none)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows a float")
    return value


def _check_depth(value: Any, limit: int) -> None:
    """Refuse containers nested deeper than ``limit`` (iteratively: no recursion on hostile input)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth >= limit:
                raise CorruptDatasetError(f"nested more than {limit} levels deep: not a manifest")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def _int(d: Mapping[str, Any], key: str, what: str, lo: int = 0, hi: int = MAX_ROWS, default: Any = ...) -> int:
    if key not in d:
        if default is not ...:
            return default
        raise CorruptDatasetError(f"{what}: missing {key!r}")
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CorruptDatasetError(f"{what}: {key!r} must be an integer in [{lo}, {hi}], got {_show(v)}")
    return v


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise CorruptDatasetError(f"{what} must be a JSON object, got {_show(v)}")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise CorruptDatasetError(f"{what} must be a JSON array, got {_show(v)}")
    return v


def _str(d: Mapping[str, Any], key: str, what: str, default: str = "") -> str:
    v = d.get(key, default)
    if not isinstance(v, str):
        raise CorruptDatasetError(f"{what}: {key!r} must be a string, got {_show(v)}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise CorruptDatasetError(f"{what}: {key!r} is not valid Unicode (a lone surrogate)") from None
    return v


def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else type(v).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_body(cls: type["Manifest"], d: dict[str, Any]) -> "Manifest":
    version = _int(d, "version", "the manifest", 1, 2**62)
    parent = d.get("parent_version")
    if parent is not None:
        parent = _int(d, "parent_version", "the manifest", 1, version - 1)
    schema = Schema.from_dict(_obj(d.get("schema"), "'schema'"))
    shards = tuple(_parse_shard(s, i, version, schema) for i, s in enumerate(_list(d.get("shards"), "'shards'")))
    m = cls(version=version, parent_version=parent, schema=schema, shards=shards,
            created_at=_str(d, "created_at", "the manifest"), writer=_str(d, "writer", "the manifest"))
    total = m.rows
    if total > MAX_ROWS:
        raise CorruptDatasetError(f"shards claim {total} rows in all, more than {MAX_ROWS}")
    for key, actual in (("rows", total), ("bytes", m.bytes)):
        if key in d and d[key] != actual:
            raise CorruptDatasetError(f"'{key}' is {_show(d[key])} but its shards add up to {actual}")
    return m


def _parse_shard(s: Any, i: int, version: int, schema: Schema) -> ShardInfo:
    what = f"shard {i}"
    s = _obj(s, what)
    path = _str(s, "path", what)
    what = f"shard {i} ({path!r})"
    rows = _int(s, "rows", what)
    size = _int(s, "bytes", what, MIN_SHARD_BYTES, 2**62)
    crc = s.get("crc32c")
    if not isinstance(crc, str) or not _CRC_HEX.fullmatch(crc):
        raise CorruptDatasetError(f"{what}: 'crc32c' must be 8 lowercase hex digits, got {_show(crc)}")
    groups = []
    for j, g in enumerate(_list(s.get("row_groups"), f"{what}: 'row_groups'")):
        gwhat = f"{what}, row group {j}"
        g = _obj(g, gwhat)
        # each data page counts at most 2^31 - 1 values, and a page takes at least a byte of the file
        g_rows = _int(g, "rows", gwhat, 0, min(MAX_ROWS, MAX_PAGE_VALUES * size))
        groups.append(RowGroupInfo(rows=g_rows, stats=_parse_stats(g.get("stats"), g_rows, gwhat, schema)))
    return ShardInfo(path=path, rows=rows, bytes=size, crc32c=int(crc, 16), row_groups=tuple(groups),
                     version_added=_int(s, "version_added", what, 0, version, default=0))


def _parse_stats(stats: Any, rows: int, what: str, schema: Schema) -> dict[str, dict[str, Any]]:
    if stats is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, st in _obj(stats, f"{what}: 'stats'").items():
        cwhat = f"{what}, statistics of {name!r}"
        st = _obj(st, cwhat)
        if name not in schema or not schema.field(name).is_scalar:
            raise CorruptDatasetError(f"{cwhat}: no scalar field of that name in the schema")
        entry: dict[str, Any] = {"nulls": _int(st, "nulls", cwhat, 0, rows, default=0)}
        if ("min" in st) != ("max" in st):
            raise CorruptDatasetError(f"{cwhat}: has one of 'min' and 'max' without the other")
        if "min" in st:
            dtype = schema.field(name).dtype
            lo, hi = (_stat_value(st[k], dtype, f"{cwhat}: {k!r}") for k in ("min", "max"))
            if hi < lo:  # type: ignore[operator]
                raise CorruptDatasetError(f"{cwhat}: min {_show(lo)} is greater than max {_show(hi)}")
            entry["min"], entry["max"] = lo, hi
        out[name] = entry
    return out


def _stat_value(v: Any, dtype: str, what: str) -> Any:
    """A statistic bound checked against its column's type (Arrow must be able to compare with it)."""
    if dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        expected = f"an integer in [{lo}, {hi}]"
    elif dtype.startswith("float"):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= _FLOAT_MAX[dtype]
        expected = f"a finite {dtype} number"
    elif dtype == "bool":
        ok, expected = isinstance(v, bool), "true or false"
    elif dtype == "string":
        ok, expected = isinstance(v, str), "a string"
        if ok:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                ok, expected = False, "a valid Unicode string"
    else:
        ok, expected = False, f"absent (a {dtype} column has no bounds)"
    if not ok:
        raise CorruptDatasetError(f"{what} must be {expected}, got {_show(v)}")
    return v


_FLOAT_MAX = {"float16": 65504.0, "float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}


def _body_crc(body: Mapping[str, Any]) -> int:
    return crc32c(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def latest_version(storage: Storage) -> int | None:
    """Newest committed version, or None if the URL holds no dataset.

    ``_latest`` is only a hint of where to start probing ``manifest-<v+1>.json``, ``<v+2>``, ...:
    a hint that is unreadable counts as 0, and one naming a version whose manifest does not exist
    (larger than the newest, or a manifest removed since) is replaced by the newest manifest
    found by listing ``_tsfs/`` (docs/format.md, section 2).
    """
    hint = _read_hint(storage)
    v = hint
    if hint and not storage.exists(manifest_path(hint)):
        v = _newest_listed(storage)
        logger.warning("%s: %s names version %d, which has no manifest; probing from version %d",
                       storage.url, LATEST, hint, v)
    elif not hint and not storage.exists(manifest_path(1)):  # no hint, no version 1: vacuum removed old versions
        v = _newest_listed(storage)
    while storage.exists(manifest_path(v + 1)):
        v += 1
    return v or None


_HINT_BYTES = 32
_MANIFEST_NAME = re.compile(r"manifest-(\d{1,19})\.json")


def _read_hint(storage: Storage) -> int:
    """The version ``_latest`` names, or 0 when it is absent or not a plain version number."""
    if not storage.exists(LATEST):
        return 0
    try:
        try:
            raw = storage.read_range(LATEST, 0, _HINT_BYTES)  # a hostile hint of gigabytes is not read
        except StorageError:  # some object stores refuse a ranged read of an empty object
            raw = storage.read_bytes(LATEST)
        text = raw.decode("ascii").strip()
    except (UnicodeDecodeError, DatasetNotFoundError):  # garbage, or removed since the check
        text = ""
    if text.isdigit() and len(text) <= 18:
        return int(text)
    logger.warning("%s: ignoring unreadable %s", storage.url, LATEST)
    return 0


def _newest_listed(storage: Storage) -> int:
    """The largest version among the manifest files in ``_tsfs/`` (0 if none)."""
    names = storage.list_names(META_DIR)
    found = [int(m.group(1)) for n in names if (m := _MANIFEST_NAME.fullmatch(n))]
    return max(found, default=0)


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
