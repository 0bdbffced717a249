"""TFRecord export (:func:`to_tfrecord`) and import (:func:`from_tfrecord`), without TensorFlow.

Files hold ``tf.train.Example`` records in "tsfs TFRecord layout 1" (``docs/tfrecord.md``): fixed and
variable tensors as raw little-endian bytes (variable ones with a ``<name>.shape`` feature), integer
and bool scalars as ``int64_list``, float16/32 scalars as ``float_list``, float64 scalars as raw
bytes (exact), strings and bytes as ``bytes_list``; an absent feature is a null. A
``<basename>.features.json`` written beside the files describes every feature and holds the tensor
schema; :func:`make_parse_fn` turns it into a ``tf.data`` parse function (the only place TensorFlow
is imported). Files written by TensorFlow are imported with that JSON, a feature spec, or inference.

Imports treat files as untrusted: record lengths are bounded by the file and ``max_record_bytes``
before anything is allocated (:mod:`._tfrecord_io`), and every damaged record, Example, feature key
or value raises a :class:`~tensorstore_fs.errors.TensorstoreError` naming the file, the record and
its byte offset.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from .._progress import progress_bar
from ..read.dataset import Dataset, open_dataset
from ..errors import (
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidArgumentError,
    SchemaError,
    UnsupportedFormatError,
)
from ..predicates import Predicate
from ..schema import Schema
from ..writer import DatasetWriter
from ._example import (
    BYTES,
    FLOAT,
    KIND_NAMES,
    Feature,
    WireError,
    decode_column,
    encode_examples,
    layout_for,
    parse_example,
)
from ._tfrecord_io import MAX_RECORD_BYTES, RecordSink, frame, is_gzip, read_records

__all__ = ["to_tfrecord", "from_tfrecord", "make_parse_fn", "TFRecordSpec", "TFRecordExport", "Feature",
           "LAYOUT", "LAYOUT_VERSION"]

logger = logging.getLogger(__name__)

LAYOUT = "tsfs TFRecord layout 1"
LAYOUT_VERSION = 1
SPEC_SUFFIX = ".features.json"
BATCH_BYTES = 16 << 20  # target bytes of one batch of rows moved between the formats
_EXT = re.compile(r"\.tfrecords?(\.gz)?$")
_SHARD = re.compile(r"(-\d{5}-of-\d{5})?(\.tfrecords?)?(\.gz)?$")


# ================================================================================================
# The feature spec (<basename>.features.json)

@dataclass(frozen=True)
class TFRecordSpec:
    """The features of a set of TFRecord files and the tensor schema they hold.

    Serialised as ``<basename>.features.json`` (:meth:`to_json`); ``files`` are names relative to
    that file's folder, ``rows_per_file`` their record counts.
    """

    features: tuple[Feature, ...]
    schema: Schema
    compression: str | None = None
    files: tuple[str, ...] = ()
    rows_per_file: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if [f.name for f in self.features] != self.schema.names:
            raise SchemaError(f"features {[f.name for f in self.features]} do not match schema fields "
                              f"{self.schema.names}")
        for f in self.features:
            field = self.schema[f.name]
            if (field.dtype, field.shape, field.nullable) != (f.dtype, f.shape, f.nullable):
                raise SchemaError(f"feature {f.key!r} does not match schema field {field}")
        keys = [k for f in self.features for k in (f.key, f.shape_key) if k is not None]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise SchemaError(f"feature keys {dupes} are used twice (a field named like another's '<name>.shape'?)")
        if len(self.files) != len(self.rows_per_file):
            raise SchemaError("files and rows_per_file differ in length")

    @property
    def num_rows(self) -> int:
        return sum(self.rows_per_file)

    def to_dict(self) -> dict[str, Any]:
        return {"format": LAYOUT, "layout_version": LAYOUT_VERSION, "compression": self.compression,
                "num_rows": self.num_rows, "files": list(self.files), "rows_per_file": list(self.rows_per_file),
                "features": [f.to_dict() for f in self.features], "schema": self.schema.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TFRecordSpec":
        if not isinstance(d, Mapping) or "features" not in d or "schema" not in d:
            raise SchemaError("a TFRecord feature spec is an object with 'features' and 'schema'")
        if d.get("layout_version") != LAYOUT_VERSION:
            raise UnsupportedFormatError(f"TFRecord layout_version {d.get('layout_version')!r} is not supported "
                                         f"(this library reads {LAYOUT_VERSION})")
        return cls(tuple(Feature.from_dict(f) for f in d["features"]), Schema.from_dict(d["schema"]),
                   d.get("compression"), tuple(d.get("files", ())), tuple(d.get("rows_per_file", ())))

    @classmethod
    def from_json(cls, text: str | bytes) -> "TFRecordSpec":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise SchemaError(f"TFRecord feature spec is not valid JSON: {e}") from None
        return cls.from_dict(d)


@dataclass(frozen=True)
class TFRecordExport:
    """What :func:`to_tfrecord` wrote: the record files, the feature spec and its path, the row count."""

    paths: tuple[str, ...]
    spec_path: str
    spec: TFRecordSpec
    num_rows: int

    @property
    def compression_type(self) -> str:
        """The ``compression_type`` argument of ``tf.data.TFRecordDataset`` for these files."""
        return self.spec.compression or ""


def _load_spec(spec: Any, storage_options: Mapping[str, Any] | None = None) -> TFRecordSpec:
    """A TFRecordSpec, TFRecordExport, dict, JSON text, or path of a ``.features.json`` file."""
    if isinstance(spec, TFRecordExport):
        return spec.spec
    if isinstance(spec, TFRecordSpec):
        return spec
    if isinstance(spec, Mapping):
        return TFRecordSpec.from_dict(spec)
    if isinstance(spec, (str, bytes, os.PathLike)):
        text = os.fspath(spec)
        if text.lstrip()[:1] in ("{", b"{"):
            return TFRecordSpec.from_json(text)
        try:
            with fsspec.open(text, "rb", **(storage_options or {})) as fh:
                return TFRecordSpec.from_json(fh.read())
        except FileNotFoundError:
            raise DatasetNotFoundError(f"feature spec {text} does not exist") from None
    raise InvalidArgumentError(f"expected a TFRecordSpec, TFRecordExport, dict, JSON or path, got "
                               f"{type(spec).__name__}")


# ================================================================================================
# Export

def _compression(value: Any, allow_auto: bool = False) -> str | None:
    options = (None, "GZIP", "auto") if allow_auto else (None, "GZIP")
    if isinstance(value, str) and value.upper() in ("GZIP", ""):
        return "GZIP" if value else None
    if value in options:
        return value
    raise InvalidArgumentError(f"compression must be one of {options}, got {value!r}")


def _targets(fs: Any, root: str, shards: int, compression: str | None) -> tuple[list[str], str]:
    """Final paths of the record files and of the spec, from a ``.tfrecord`` file name or a folder."""
    ext = ".tfrecord.gz" if compression else ".tfrecord"
    m = _EXT.search(root)
    if m:
        prefix = root[:m.start()]
        if shards == 1:
            return [root], prefix + SPEC_SUFFIX
    else:
        if fs.exists(root) and not fs.isdir(root):
            raise InvalidArgumentError(f"{root} is a file: name a '.tfrecord' file or a directory")
        prefix = f"{root.rstrip('/')}/part"
    return [f"{prefix}-{i:05d}-of-{shards:05d}{ext}" for i in range(shards)], prefix + SPEC_SUFFIX


def _row_split(total: int, shards: int) -> list[int]:
    """Contiguous row ranges: the first ``total % shards`` files get one row more."""
    return [total // shards + (i < total % shards) for i in range(shards)]


class _ShardedSink:
    """Routes framed rows to consecutive files holding the planned number of rows each."""

    def __init__(self, fs: Any, paths: Sequence[str], rows: Sequence[int], compression: str | None) -> None:
        self._fs, self._paths, self._rows, self._compression = fs, list(paths), list(rows), compression
        self._index, self._left, self._sink = -1, 0, None

    def _next(self) -> None:
        self.close()
        self._index += 1
        self._sink = RecordSink(self._fs, self._paths[self._index], self._compression)
        self._left = self._rows[self._index]

    def write(self, rows: list[list[Any]]) -> None:
        pos = 0
        while pos < len(rows):
            while self._left == 0:
                self._next()
            take = min(self._left, len(rows) - pos)
            out: list[Any] = []
            for parts in rows[pos:pos + take]:
                frame(parts, out)
            self._sink.write(out)  # type: ignore[union-attr]
            pos += take
            self._left -= take

    def finish(self) -> None:
        while self._index < len(self._paths) - 1:
            self._next()
        self.close()

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


def _batch_rows(schema: Schema) -> int:
    """Rows per exported batch: a power of two (the scanner then never re-assembles batches)."""
    row = sum(f.row_nbytes if f.is_fixed_tensor or (f.is_scalar and f.dtype not in ("string", "bytes")) else 256
              for f in schema.fields)
    rows = max(64, min(1 << 16, BATCH_BYTES // max(1, row)))
    return 1 << (rows.bit_length() - 1)


def _remove(fs: Any, paths: Iterable[str]) -> None:
    for p in paths:
        try:
            fs.rm_file(p)
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - best effort while already failing
            logger.warning("could not remove temporary file %s", p)


def _old_files(fs: Any, spec_path: str) -> list[str]:
    """Files listed by an existing spec at ``spec_path`` (replaced by an overwrite)."""
    try:
        old = TFRecordSpec.from_json(fs.cat_file(spec_path))
    except (FileNotFoundError, SchemaError, CorruptDatasetError):
        return []
    folder = posixpath.dirname(spec_path)
    return [posixpath.join(folder, name) for name in old.files]


def _publish(fs: Any, renames: dict[str, str], stale: list[str]) -> None:
    """Rename temporary files to their final names (the spec last), then drop files of an older export."""
    for tmp, final in renames.items():
        fs.mv(tmp, final)
    _remove(fs, [p for p in stale if p not in renames.values()])


def to_tfrecord(
    ds_or_url: Dataset | str,
    path_or_dir: str | os.PathLike,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    predicate: Predicate | None = None,
    shards: int = 1,
    compression: str | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> TFRecordExport:
    """Export a dataset (or its selected columns and rows) as ``tf.train.Example`` TFRecord files.

    Parameters
    ----------
    ds_or_url : Dataset or str
        The dataset, or its URL.
    path_or_dir : str or path
        A file name ending in ``.tfrecord`` / ``.tfrecord.gz`` (``shards > 1`` turns it into
        ``<stem>-00000-of-0000N.tfrecord``), or a directory that receives
        ``part-00000-of-0000N.tfrecord[.gz]``. ``<stem>.features.json`` (``part.features.json``)
        is written beside the files.
    columns : list of str, optional
        Fields to export (all by default).
    filter, predicate
        Row selection, as in :meth:`Dataset.to_batches`.
    shards : int
        Number of files; each holds a contiguous range of rows (sizes differ by at most one).
    compression : {None, "GZIP"}
        ``"GZIP"`` writes gzip streams (``tf.data.TFRecordDataset(..., compression_type="GZIP")``).
    overwrite : bool
        Replace existing files of the same names (and the files listed by the spec replaced).
    storage_options : mapping, optional
        fsspec options for the dataset URL and the output path.
    progress : bool
        Show a progress bar.

    Returns
    -------
    TFRecordExport

    Raises
    ------
    DatasetExistsError
        A target file exists and ``overwrite`` is false.
    SchemaError
        A value the layout cannot hold (a uint64 scalar at or above 2**63); nothing is left behind.

    Notes
    -----
    Files are written under temporary names and renamed when all are complete, the spec last.
    TensorFlow is not needed (nor imported).
    """
    ds = open_dataset(ds_or_url, storage_options=storage_options)
    if isinstance(columns, str):
        raise InvalidArgumentError(f"columns must be a list of field names, got the string {columns!r}")
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise InvalidArgumentError(f"shards must be a positive int, got {shards!r}")
    compression = _compression(compression)
    schema = ds.schema if columns is None else ds.schema.select(list(columns))
    features = tuple(layout_for(f) for f in schema.fields)
    TFRecordSpec(features, schema)  # validates feature keys before anything is written
    fs, root = fsspec.core.url_to_fs(os.fspath(path_or_dir), **(storage_options or {}))
    paths, spec_path = _targets(fs, root, shards, compression)
    existing = [p for p in [*paths, spec_path] if fs.exists(p)]
    if existing and not overwrite:
        raise DatasetExistsError(f"{existing[0]} exists ({len(existing)} target files do); pass overwrite=True")
    scanner = ds.scanner(schema.names, filter, predicate, batch_size=_batch_rows(schema))
    counter = ds.scanner(schema.names, filter, predicate)
    total = sum(ref.rows if hits is None else len(hits) for ref, hits in counter.matches())
    rows = _row_split(total, shards)
    spec = TFRecordSpec(features, schema, compression, tuple(posixpath.basename(p) for p in paths), tuple(rows))
    tag = uuid.uuid4().hex[:12]
    renames = {f"{p}.tmp-{tag}": p for p in [*paths, spec_path]}
    tmp_paths = list(renames)
    folder = posixpath.dirname(spec_path)
    new_folder = not fs.exists(folder)
    fs.makedirs(folder, exist_ok=True)
    sink = _ShardedSink(fs, tmp_paths[:-1], rows, compression)
    try:
        with progress_bar(progress, total, "to_tfrecord") as bar:
            row0 = 0
            for batch in scanner:
                encoded = encode_examples(list(features), batch, row0)
                sink.write(encoded)
                row0 += len(encoded)
                bar.update(len(encoded))
        sink.finish()
        fs.pipe_file(tmp_paths[-1], spec.to_json().encode())
    except BaseException:
        sink.close()
        _remove(fs, tmp_paths)
        if new_folder:
            with contextlib.suppress(OSError):
                fs.rmdir(folder)
        raise
    _publish(fs, renames, _old_files(fs, spec_path) if overwrite else [])
    logger.info("to_tfrecord: %d rows of %s -> %d files (%s)", total, ds.url, shards, spec_path)
    url = (lambda p: p) if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol  # s3://... stays a URL
    return TFRecordExport(tuple(map(url, paths)), url(spec_path), spec, total)


# ================================================================================================
# Import

_GLOB = re.compile(r"[*?\[]")


def _listing(fs: Any, path: str) -> list[str]:
    if _GLOB.search(path):
        return sorted(p for p in fs.glob(path) if fs.isfile(p))
    if fs.isdir(path):
        names = sorted(p for p in fs.ls(path, detail=False) if fs.isfile(p))
        return [p for p in names if not (p.endswith(SPEC_SUFFIX) or ".tmp-" in posixpath.basename(p)
                                         or posixpath.basename(p).startswith((".", "_")))]
    if not fs.exists(path):
        raise DatasetNotFoundError(f"{path} does not exist")
    return [path]


def _input_files(paths: Any, storage_options: Mapping[str, Any] | None) -> list[tuple[Any, str]]:
    """``(filesystem, path)`` of every file named by a path, a list, a directory or a glob."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out = []
    for item in items:
        fs, path = fsspec.core.url_to_fs(os.fspath(item), **(storage_options or {}))
        out += [(fs, p) for p in _listing(fs, path)]
    if not out:
        raise DatasetNotFoundError(f"no TFRecord files found at {paths!r}")
    return out


def _file_compression(fs: Any, path: str, compression: str | None) -> str | None:
    if compression != "auto":
        return compression
    with fs.open(path, "rb") as fh:
        return "GZIP" if is_gzip(fh.read(12)) else None


def _find_spec(files: list[tuple[Any, str]]) -> tuple[TFRecordSpec | None, str | None]:
    """The ``.features.json`` written with these files, if there is one."""
    found = sorted({(p, fs) for fs, p in ((fs, _SHARD.sub("", p) + SPEC_SUFFIX) for fs, p in files)
                    if fs.exists(p)}, key=lambda t: t[0])
    if len(found) > 1:
        raise InvalidArgumentError(f"the files belong to different exports ({[p for p, _ in found]}); import them "
                                   "separately")
    if not found:
        return None, None
    path, fs = found[0]
    return TFRecordSpec.from_json(fs.cat_file(path)), path


def _field_name(key: str) -> str:
    """A valid tensorstore_fs field name for a feature key (``image/encoded`` -> ``image_encoded``)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", key)
    return name if re.match(r"[A-Za-z]", name) or (name[:1] == "_" and name[:2] != "__") else f"f_{name}"


_KIND_ALIASES = {"int64": "int64_list", "int64_list": "int64_list", "float": "float_list", "float32": "float_list",
                 "float_list": "float_list", "bytes": "bytes_list", "string": "bytes_list", "bytes_list": "bytes_list"}


def _from_tf_feature(desc: Any) -> dict[str, Any]:
    """A ``tf.io.FixedLenFeature`` / ``VarLenFeature`` (duck-typed: TensorFlow is not imported)."""
    name = type(desc).__name__
    dtype = getattr(getattr(desc, "dtype", None), "name", None)
    if name not in ("FixedLenFeature", "VarLenFeature") or dtype not in ("int64", "float32", "string"):
        raise SchemaError(f"{name} of {dtype}: only FixedLenFeature / VarLenFeature of int64, float32, string")
    if name == "VarLenFeature":
        return {"kind": dtype, "dtype": dtype, "shape": (None,), "nullable": True}
    return {"kind": dtype, "dtype": "bytes" if dtype == "string" else dtype, "shape": tuple(desc.shape),
            "nullable": desc.default_value is not None}


def _user_feature(key: str, desc: Any) -> Feature:
    """One entry of a user feature spec: ``(kind, dtype[, shape[, nullable]])``, a dict with those
    keys (and optional ``name``), or a TensorFlow FixedLenFeature / VarLenFeature."""
    if type(desc).__module__.startswith("tensorflow"):
        desc = _from_tf_feature(desc)
    if isinstance(desc, (tuple, list)) and 2 <= len(desc) <= 4:
        desc = dict(zip(("kind", "dtype", "shape", "nullable"), desc))
    if not isinstance(desc, Mapping) or desc.get("kind") not in _KIND_ALIASES or "dtype" not in desc:
        raise SchemaError(f"feature {key!r}: expected (kind, dtype[, shape[, nullable]]) with kind in "
                          f"{sorted(_KIND_ALIASES)}, got {desc!r}")
    kind = _KIND_ALIASES[desc["kind"]]
    shape = tuple(desc.get("shape") or ())
    raw = kind == "bytes_list" and desc["dtype"] not in ("string", "bytes", str, bytes)
    variable = any(d is None or d == -1 for d in shape)
    shape_key = desc.get("shape_key", f"{key}.shape" if raw and variable and len(shape) > 1 else None)
    return Feature(desc.get("name") or _field_name(key), key, kind, desc["dtype"], shape,
                   bool(desc.get("nullable", False)), raw, shape_key)


def _count(kind: int, chunks: list[memoryview]) -> int:
    if kind == BYTES:
        return len(chunks)
    data = b"".join(chunks)
    return len(data) // 4 if kind == FLOAT else int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) < 0x80))


def _inferred(key: str, kind: int, lo: int, hi: int, nullable: bool) -> Feature:
    name = _field_name(key)
    if kind == BYTES:
        if hi > 1:
            raise SchemaError(f"feature {key!r} holds up to {hi} bytes values in a record; a field holds one: "
                              f"pass features={{{key!r}: ...}} or leave it out of features")
        return Feature(name, key, "bytes_list", "bytes", (), nullable or lo == 0)
    shape = () if lo == hi == 1 else (hi,) if lo == hi else (None,)
    dtype = "int64" if KIND_NAMES[kind] == "int64_list" else "float32"
    return Feature(name, key, KIND_NAMES[kind], dtype, shape, nullable)


def _infer_features(examples: Iterator[tuple[str, dict]]) -> list[Feature]:
    """Features of every key seen, sorted by key (an Example's map has no order): kind, value-count
    range, and whether some records lack it."""
    stats: dict[bytes, list[int]] = {}
    rows = 0
    for where, parsed in examples:
        rows += 1
        for key, (kind, chunks) in parsed.items():
            if kind == 0:
                continue
            if key not in stats:
                try:
                    key.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorruptDatasetError(
                        f"{where}: feature key {key[:60]!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        "a tf.train.Example's keys are UTF-8 strings") from None
            n = _count(kind, chunks)
            st = stats.setdefault(key, [kind, n, n, 0])
            if st[0] != kind:
                raise SchemaError(f"{where}: feature {key.decode(errors='replace')!r} is a {KIND_NAMES[kind]}, "
                                  f"earlier records hold a {KIND_NAMES[st[0]]}; pass features=")
            st[1], st[2], st[3] = min(st[1], n), max(st[2], n), st[3] + 1
    if not stats:
        raise SchemaError("the records hold no features to infer a schema from; pass features= or schema=")
    return [_inferred(k.decode(), kind, lo, hi, seen < rows) for k, (kind, lo, hi, seen) in sorted(stats.items())]


def _examples(files: list[tuple[Any, str]], compressions: list[str | None], rows_per_file: Mapping[str, int],
              max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[str, dict]]:
    """``(where, parsed example)`` of every record, files in order; record counts checked against
    the spec's ``rows_per_file`` (a file cut at a record boundary)."""
    for (fs, path), compression in zip(files, compressions):
        count = 0
        for index, offset, data in read_records(fs, path, compression, max_record_bytes):
            where = f"{path}: record {index} at byte {offset}"
            try:
                parsed = parse_example(data)
            except (WireError, IndexError) as e:
                raise CorruptDatasetError(f"{where}: not a tf.train.Example ({e})") from None
            yield where, parsed
            count += 1
        expected = rows_per_file.get(posixpath.basename(path))
        if expected is not None and count != expected:
            raise CorruptDatasetError(f"{path}: holds {count} records, its features.json lists {expected} "
                                      "(truncated at a record boundary?)")


def _import_features(features: Any, schema: Schema | None, spec: TFRecordSpec | None,
                     infer: Callable[[], list[Feature]]) -> tuple[list[Feature], Schema]:
    if features is not None and schema is not None:
        raise InvalidArgumentError("pass features= or schema=, not both")
    if features is not None:
        if not isinstance(features, Mapping) or not features:
            raise InvalidArgumentError(f"features must be a non-empty dict of feature key -> description, "
                                       f"got {features!r}")
        feats = [_user_feature(k, v) for k, v in features.items()]
        return feats, Schema([f.field for f in feats])
    if schema is not None:
        if not isinstance(schema, Schema):
            raise InvalidArgumentError(f"schema must be a tensorstore_fs.Schema, got {type(schema).__name__}")
        return [layout_for(f) for f in schema.fields], schema
    if spec is not None:
        return list(spec.features), spec.schema
    feats = infer()
    return feats, Schema([f.field for f in feats])


def from_tfrecord(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    url: str,
    features: Mapping[str, Any] | None = None,
    schema: Schema | None = None,
    compression: str | None = "auto",
    mode: str = "error",
    storage_options: Mapping[str, Any] | None = None,
    batch_rows: int = 1024,
    progress: bool = False,
    max_record_bytes: int = MAX_RECORD_BYTES,
    **writer_options: Any,
) -> Dataset:
    """Import ``tf.train.Example`` TFRecord files as a dataset.

    Parameters
    ----------
    paths : str, path or list
        Files, directories (every file in them but ``*.features.json``) or globs.
    url : str
        The dataset to write.
    features : dict, optional
        ``{feature key: (kind, dtype, shape, nullable)}`` with kind ``"int64"``, ``"float"`` or
        ``"bytes"`` (shape, nullable optional), e.g. ``{"image": ("bytes", "uint8", (28, 28)),
        "label": ("int64", "int32"), "text": ("bytes", "string")}``; a dict with those keys, or a
        ``tf.io.FixedLenFeature`` / ``VarLenFeature``. A ``bytes`` feature of a numeric dtype holds
        raw little-endian tensor bytes. Only the listed features are imported.
    schema : Schema, optional
        Read the files as tsfs layout 1 of this schema (when their ``.features.json`` is lost).
    compression : {"auto", None, "GZIP"}
        ``"auto"`` tells gzip files by their content.
    mode : {"error", "overwrite", "append"}
        As for :class:`DatasetWriter`.
    storage_options : mapping, optional
        fsspec options for the inputs and ``url``.
    batch_rows : int
        Records per batch handed to the writer.
    progress : bool
        Show a progress bar.
    max_record_bytes : int
        Largest record accepted (default 2 GiB - 1, protobuf's limit on one message). A record's
        length field is also checked against what remains of a plain file before anything is read.
    **writer_options
        ``row_group_bytes``, ``shard_bytes``, ``compression`` ... of :class:`DatasetWriter`.

    Without ``features`` or ``schema``, the ``<basename>.features.json`` written by
    :func:`to_tfrecord` beside the files gives the exact schema; failing that the schema is inferred
    from all records (``int64_list`` -> int64, ``float_list`` -> float32: one value a scalar, a
    constant count ``k`` shape ``(k,)``, varying counts ``(None,)``; single ``bytes_list`` values
    -> bytes; a key missing from some records -> nullable).

    Raises
    ------
    CorruptDatasetError
        A bad length or data checksum, a length past the end of the file or above
        ``max_record_bytes``, a truncated file, a malformed Example or a feature key that is not
        UTF-8, naming the file, the record and its byte offset. Nothing is committed.
    SchemaError
        Records that do not match the features. Nothing is committed.
    """
    if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be a positive int, got {batch_rows!r}")
    if not isinstance(max_record_bytes, int) or isinstance(max_record_bytes, bool) or max_record_bytes < 1:
        raise InvalidArgumentError(f"max_record_bytes must be a positive int, got {max_record_bytes!r}")
    compression = _compression(compression, allow_auto=True)
    files = _input_files(paths, storage_options)
    compressions = [_file_compression(fs, p, compression) for fs, p in files]
    spec, spec_path = _find_spec(files)
    counts = dict(zip(spec.files, spec.rows_per_file)) if spec is not None else {}
    examples = lambda: _examples(files, compressions, counts, max_record_bytes)  # noqa: E731
    feats, target = _import_features(features, schema, spec, lambda: _infer_features(examples()))
    logger.info("from_tfrecord: %d files, features from %s", len(files),
                "features=" if features is not None else "schema=" if schema is not None else spec_path or "inference")
    writer = DatasetWriter(url, target, mode=mode, storage_options=storage_options, **writer_options)
    with writer, progress_bar(progress, spec.num_rows if spec else None, "from_tfrecord") as bar:
        stream = examples()
        while batch := list(itertools.islice(stream, batch_rows)):
            wheres = [w for w, _ in batch]
            rows = [p for _, p in batch]
            writer.write({f.name: decode_column(f, rows, wheres.__getitem__) for f in feats})
            bar.update(len(rows))
    return open_dataset(url, version=writer.manifest.version, storage_options=storage_options)


# ================================================================================================
# TensorFlow parse function

def _raw_dtype(tf: Any, f: Feature) -> Any:
    """decode_raw's out_type for f (it has no uint32/uint64/bool: decode the same-size type)."""
    return {"bool": tf.uint8, "uint32": tf.int32, "uint64": tf.int64}.get(f.dtype) or tf.as_dtype(f.dtype)


def _tf_parse_spec(tf: Any, f: Feature) -> dict[str, Any]:
    dtype = tf.as_dtype(f.tf_dtype)
    ragged_list = not f.raw and f.field.is_variable
    if f.nullable or ragged_list:
        spec = {f.key: tf.io.VarLenFeature(dtype)}
        if f.shape_key:
            spec[f.shape_key] = tf.io.VarLenFeature(tf.int64)
        return spec
    spec = {f.key: tf.io.FixedLenFeature([] if f.raw else list(f.shape), dtype)}
    if f.shape_key:
        spec[f.shape_key] = tf.io.FixedLenFeature([len(f.shape)], tf.int64)
    return spec


def _first_or(tf: Any, values: Any, default: Any, n: int) -> Any:
    """The first ``n`` values, or ``default`` (n of them) when there are none."""
    return tf.concat([values, default], 0)[:n]


def _nullable_value(tf: Any, f: Feature, value: Any) -> Any:
    """A nullable feature's VarLen values as the field's dense value: zeros / empty when null."""
    values = value.values
    if not f.raw and f.field.is_variable:
        return values
    if f.kind == "bytes_list":
        default = b"\0" * f.field.row_nbytes if f.raw and not f.field.is_variable else b""
        return _first_or(tf, values, tf.constant([default]), 1)[0]
    n = f.field.numel
    return tf.reshape(_first_or(tf, values, tf.zeros([n], values.dtype), n), f.shape)


def _tf_value(tf: Any, f: Feature, parsed: dict[str, Any]) -> dict[str, Any]:
    """One feature of ``parse_single_example``'s output as the field's tensor (plus ``.valid``)."""
    value = parsed[f.key]
    shape = parsed.get(f.shape_key) if f.shape_key else None
    out: dict[str, Any] = {}
    if f.nullable:
        out[f"{f.name}.valid"] = tf.size(value.values) > 0
        value = _nullable_value(tf, f, value)
        if shape is not None:
            shape = _first_or(tf, shape.values, tf.zeros([len(f.shape)], tf.int64), len(f.shape))
    elif isinstance(value, tf.SparseTensor):
        value = value.values
    if f.kind == "bytes_list" and not f.raw:
        out[f.name] = value
        return out
    x = value
    if f.raw:
        x = tf.io.decode_raw(value, _raw_dtype(tf, f))
        x = tf.reshape(x, shape if shape is not None else [-1] if f.field.is_variable else list(f.shape))
    target = tf.as_dtype(f.dtype)
    if f.dtype == "bool":
        x = tf.not_equal(x, tf.zeros([], x.dtype))
    elif x.dtype != target:
        x = tf.bitcast(x, target) if f.raw else tf.cast(x, target)
    out[f.name] = tf.ensure_shape(x, list(f.shape))
    return out


def make_parse_fn(spec_or_json: Any, storage_options: Mapping[str, Any] | None = None) -> Callable[[Any], dict]:
    """A function for ``tf.data.TFRecordDataset(files, compression_type=...).map(parse)``.

    Parameters
    ----------
    spec_or_json : TFRecordSpec, TFRecordExport, dict, JSON text or path of a ``.features.json``

    Returns
    -------
    callable
        Maps one serialized ``Example`` (a scalar string tensor) to ``{field: tensor}`` with each
        field's dtype and shape (static where fixed; variable ones reshaped from ``<name>.shape``),
        plus a bool ``<field>.valid`` for nullable fields (a null reads as zeros / empty).

    Notes
    -----
    Imports TensorFlow (only here).
    """
    spec = _load_spec(spec_or_json, storage_options)
    import tensorflow as tf

    parse_spec: dict[str, Any] = {}
    for f in spec.features:
        parse_spec.update(_tf_parse_spec(tf, f))

    def parse(serialized: Any) -> dict[str, Any]:
        parsed = tf.io.parse_single_example(serialized, parse_spec)
        out: dict[str, Any] = {}
        for f in spec.features:
            out.update(_tf_value(tf, f, parsed))
        return out

    return parse
