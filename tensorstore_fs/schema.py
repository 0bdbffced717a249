"""Tensor schema: named fields with a dtype, a shape (``None`` for variable dimensions) and nullability.

A :class:`Schema` is a frozen value object, validated when it is built, and serialised as versioned
JSON (never pickle). See ``docs/format.md`` for the JSON layout.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import SchemaError, UnsupportedFormatError

__all__ = ["Field", "Schema", "SCHEMA_FORMAT_VERSION", "DTYPES", "RESERVED_PREFIX", "RESERVED_SUFFIXES",
           "reserved_suffix"]

logger = logging.getLogger(__name__)

SCHEMA_FORMAT_VERSION = 1

#: dtype names accepted by :class:`Field`, mapped to the numpy dtype used in memory.
DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype("bool"),
    "int8": np.dtype("int8"),
    "int16": np.dtype("int16"),
    "int32": np.dtype("int32"),
    "int64": np.dtype("int64"),
    "uint8": np.dtype("uint8"),
    "uint16": np.dtype("uint16"),
    "uint32": np.dtype("uint32"),
    "uint64": np.dtype("uint64"),
    "float16": np.dtype("float16"),
    "float32": np.dtype("float32"),
    "float64": np.dtype("float64"),
    "string": np.dtype("object"),
    "bytes": np.dtype("object"),
}

MAX_FIXED_ROW_BYTES = 2**31 - 1  # a fixed-shape row is one fixed_len_byte_array value (int32 length)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
RESERVED_PREFIX = "__"  # internal columns: __shape__<name> in shards, __pad__, __row_id__ in read batches
#: suffixes readers append to a field's name for the derived arrays they hand out next to it:
#: ``<name>__shape`` (row shapes of a padded or flat variable field), ``<name>__offsets`` (row
#: offsets of a flat variable field), ``<name>__valid`` (row validity of a nullable field)
RESERVED_SUFFIXES = ("__shape", "__offsets", "__valid")
# set while a schema stored in a dataset is parsed: names with a reserved suffix written before
# they were reserved still open (see Schema.from_dict)
_STORED = contextvars.ContextVar("tensorstore_fs_stored_schema", default=False)


def reserved_suffix(name: str) -> str | None:
    """The reserved suffix ``name`` ends with (one of :data:`RESERVED_SUFFIXES`), or None."""
    return next((s for s in RESERVED_SUFFIXES if name.endswith(s)), None)


def parse_dtype(dtype: Any, *, field_name: str = "?") -> str:
    """Normalise ``dtype`` (a name, a numpy dtype or a Python type) to one of :data:`DTYPES`."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    if dtype in (str, "str", "unicode", "utf8"):
        return "string"
    if dtype in (bytes, "binary"):
        return "bytes"
    if dtype is bool:
        return "bool"
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    if np_dtype is not None:
        if np_dtype.kind == "U":
            return "string"
        if np_dtype.kind == "S":
            return "bytes"
        name = np_dtype.newbyteorder("=").name if np_dtype.byteorder not in ("=", "|") else np_dtype.name
        if name in DTYPES and name not in ("string", "bytes"):
            return name
    valid = ", ".join(DTYPES)
    raise SchemaError(f"field {field_name!r}: unsupported dtype {dtype!r}; expected one of {valid}")


def parse_shape(shape: Any, *, field_name: str = "?") -> tuple[int | None, ...]:
    """Validate a shape: a tuple of positive ints and ``None`` (variable dimension)."""
    if shape is None:
        return ()
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise SchemaError(f"field {field_name!r}: shape must be a tuple, got {shape!r}") from None
    out: list[int | None] = []
    for d in dims:
        if d is None or (isinstance(d, int) and d == -1):
            out.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and int(d) >= 1:
            out.append(int(d))
        else:
            raise SchemaError(
                f"field {field_name!r}: shape dimensions must be positive ints or None, got {shape!r}"
            )
    return tuple(out)


@dataclass(frozen=True)
class Field:
    """One named column of a dataset.

    Parameters
    ----------
    name : str
        Column name: letters, digits, ``_``, ``.``, ``-``, not starting with a digit. Reserved:
        names starting with ``"__"`` (internal columns such as ``__pad__``, ``__row_id__``,
        ``__shape__<name>``) and names ending with ``"__shape"``, ``"__offsets"`` or
        ``"__valid"`` (:data:`RESERVED_SUFFIXES`: readers name a field's derived arrays
        ``<name>__shape`` etc., which such a field would collide with).
    dtype : str or numpy dtype
        One of ``bool``, ``int8``–``int64``, ``uint8``–``uint64``, ``float16``/``32``/``64``,
        ``string``, ``bytes``.
    shape : tuple
        ``()`` for a scalar, otherwise the per-row tensor shape with ``None`` for variable
        dimensions, e.g. ``(3, 64, 64)``, ``(None,)``, ``(3, None, None)``.
    nullable : bool
        Whether rows may hold no value.
    description : str
        Free text kept in the schema.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...] = ()
    nullable: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SchemaError(
                f"field name {self.name!r} is invalid: expected a non-empty identifier-like string "
                "(letters, digits, '_', '.', '-')"
            )
        if self.name.startswith(RESERVED_PREFIX):
            raise SchemaError(f"field name {self.name!r} is reserved: names starting with '__' are internal")
        suffix = reserved_suffix(self.name)
        if suffix is not None and not _STORED.get():
            raise SchemaError(
                f"field name {self.name!r} is reserved: it ends with {suffix!r}, which readers append to a "
                f"field's name for its derived arrays (reserved suffixes: {', '.join(RESERVED_SUFFIXES)}); "
                "rename the field"
            )
        object.__setattr__(self, "dtype", parse_dtype(self.dtype, field_name=self.name))
        object.__setattr__(self, "shape", parse_shape(self.shape, field_name=self.name))
        if not isinstance(self.nullable, bool):
            raise SchemaError(f"field {self.name!r}: nullable must be a bool, got {self.nullable!r}")
        if not isinstance(self.description, str):
            raise SchemaError(f"field {self.name!r}: description must be a str")
        if self.dtype in ("string", "bytes") and self.shape != ():
            raise SchemaError(
                f"field {self.name!r}: dtype {self.dtype} supports only scalar shape (), got {self.shape}"
            )
        if self.shape and not self.is_variable and self.row_nbytes > MAX_FIXED_ROW_BYTES:
            raise SchemaError(
                f"field {self.name!r}: a row of shape {self.shape} {self.dtype} is {self.row_nbytes:,} bytes; "
                f"a fixed-shape tensor row holds at most {MAX_FIXED_ROW_BYTES:,} (Parquet's fixed_len_byte_array "
                "length is an int32): give the large dimension as None (variable shape) or split the field"
            )

    # -- derived properties -------------------------------------------------------------------
    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype values of this field have in memory."""
        return DTYPES[self.dtype]

    @property
    def is_scalar(self) -> bool:
        """True for shape ``()`` (stored as a native Parquet column with statistics)."""
        return self.shape == ()

    @property
    def is_tensor(self) -> bool:
        return self.shape != ()

    @property
    def is_variable(self) -> bool:
        """True if any dimension is ``None``."""
        return any(d is None for d in self.shape)

    @property
    def is_fixed_tensor(self) -> bool:
        return self.is_tensor and not self.is_variable

    @property
    def numel(self) -> int:
        """Elements per row of a fixed-shape field."""
        if self.is_variable:
            raise SchemaError(f"field {self.name!r} has a variable shape {self.shape}")
        return math.prod(self.shape)  # exact Python ints (1 for a scalar); hot: called per batch

    @property
    def row_nbytes(self) -> int:
        """Bytes per row of a fixed-shape numeric field."""
        return self.numel * self.numpy_dtype.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": [d for d in self.shape],
            "nullable": self.nullable,
            "description": self.description,
            "encoding": "raw",
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Field":
        if not isinstance(d, Mapping) or "name" not in d or "dtype" not in d:
            raise SchemaError(f"field entry must be an object with 'name' and 'dtype', got {d!r}")
        encoding = d.get("encoding", "raw")
        if encoding != "raw":
            raise UnsupportedFormatError(
                f"field {d['name']!r}: encoding {encoding!r} is not supported by this version (expected 'raw')"
            )
        return cls(
            name=d["name"],
            dtype=d["dtype"],
            shape=tuple(d.get("shape", ())),
            nullable=bool(d.get("nullable", False)),
            description=d.get("description", ""),
        )


@dataclass(frozen=True)
class Schema:
    """An ordered collection of :class:`Field` with unique names.

    Parameters
    ----------
    fields : sequence of Field
    metadata : mapping of str to str, optional
        Free-form key/value pairs kept with the schema.
    """

    fields: tuple[Field, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __init__(self, fields: Iterable[Field], metadata: Mapping[str, str] | None = None) -> None:
        fields = tuple(fields)
        for f in fields:
            if not isinstance(f, Field):
                raise SchemaError(f"Schema expects Field objects, got {type(f).__name__}: {f!r}")
        if not fields:
            raise SchemaError("a schema needs at least one field")
        names = [f.name for f in fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"duplicate field names in schema: {dupes}")
        meta = dict(metadata or {})
        for k, v in meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SchemaError(f"schema metadata must map str to str, got {k!r}: {v!r}")
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "metadata", meta)

    def __hash__(self) -> int:
        return hash((self.fields, tuple(sorted(self.metadata.items()))))

    def __len__(self) -> int:
        return len(self.fields)

    def __iter__(self):
        return iter(self.fields)

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in self.fields)

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        """The field called ``name``; raises :class:`SchemaError` listing valid names otherwise."""
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(f"unknown field {name!r}; schema fields are {self.names}")

    def select(self, names: Sequence[str]) -> "Schema":
        """A schema with only ``names``, in that order."""
        return Schema([self.field(n) for n in names], self.metadata)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": SCHEMA_FORMAT_VERSION,
            "fields": [f.to_dict() for f in self.fields],
            "metadata": dict(self.metadata),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Schema":
        """Parse a stored schema (the ``"schema"`` object of a manifest).

        A name ending with a reserved suffix (:data:`RESERVED_SUFFIXES`) is accepted here, so
        datasets written before those names were reserved still open, unless the schema also has
        the field the name derives from (``tok__shape`` next to ``tok``): readers would hand out
        one array under both names, so such a schema is refused with
        :class:`~tensorstore_fs.UnsupportedFormatError`.
        """
        if not isinstance(d, Mapping) or "fields" not in d:
            raise SchemaError(f"schema must be an object with 'fields', got {type(d).__name__}")
        version = d.get("format_version")
        if version != SCHEMA_FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"schema format_version {version!r} is not supported (this library reads version "
                f"{SCHEMA_FORMAT_VERSION})"
            )
        if not isinstance(d["fields"], list):
            raise SchemaError(f"schema 'fields' must be a list, got {type(d['fields']).__name__}")
        token = _STORED.set(True)
        try:
            fields = [Field.from_dict(f) for f in d["fields"]]
        finally:
            _STORED.reset(token)
        _check_stored_names(fields)
        return cls(fields, d.get("metadata") or {})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Schema":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise SchemaError(f"schema JSON is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _check_stored_names(fields: Sequence[Field]) -> None:
    """Refuse a stored schema in which a field's name is another field's derived name."""
    names = {f.name for f in fields}
    for f in fields:
        suffix = reserved_suffix(f.name)
        if suffix is None:
            continue
        base = f.name[: -len(suffix)]
        if base in names:
            raise UnsupportedFormatError(
                f"field {f.name!r} collides with the {suffix!r} array readers derive from field {base!r}: "
                f"names ending with {', '.join(RESERVED_SUFFIXES)} are reserved (docs/format.md, section 4); "
                "read the shard files with pyarrow, rename the field and write the dataset again"
            )
        logger.warning("stored schema: field %r ends with the reserved suffix %r (written before it was reserved); "
                       "the dataset opens, but a new schema cannot use this name", f.name, suffix)
