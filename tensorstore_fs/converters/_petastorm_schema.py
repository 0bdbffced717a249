"""Reading Petastorm's pickled ``Unischema`` without petastorm and without running its code.

Petastorm stores its schema as a pickle in the ``_common_metadata`` footer. Unpickling that with
``pickle.loads`` lets whoever wrote the dataset run any code (``os.system`` through ``REDUCE``);
Petastorm's own "restricted" unpickler allows every name in ``builtins`` and ``numpy``, ``eval``
included. Here :func:`._pickle_vm.interpret` — a small evaluator over opcodes decoded by
:func:`._pickle_vm.genops` (the ``pickle`` and ``pickletools`` modules are never imported) — resolves
an explicit list of ``(module, name)`` pairs to *local stand-ins* that only record the pickled
state: nothing from petastorm, pyspark or numpy is imported, and the only callables a pickle can
reach (through ``REDUCE``, ``NEWOBJ``, ``INST`` and ``OBJ``; ``EXT`` and persistent ids are refused)
are the stand-ins' own small constructors.
Everything else is refused with an error naming the ``module.name`` it asked for.

Every load is bounded (:class:`~._pickle_vm.UnpickleLimits`: bytes, opcodes, memo entries, items
per container, nesting depth, expanded size counting shared references, integer size): a pickle past
a limit raises :class:`CorruptDatasetError` naming the file and the limit. State (``BUILD``) may only
be given to fresh stand-in instances created by the same load, never to a class, an allow-listed
object or a function: :class:`UnsupportedFormatError`. So no pickle can change how a later one is read.

The recorded state is then validated into frozen :class:`PetastormField` / :class:`PetastormSchema`
value objects, which map onto a tensorstore_fs :class:`~tensorstore_fs.schema.Schema`.
"""

from __future__ import annotations

import logging
import reprlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import CorruptDatasetError, InvalidArgumentError, UnsupportedFormatError
from ..schema import DTYPES, Field, Schema
from ._pickle_vm import DEFAULT_LIMITS, Forbidden, LimitExceeded, Refused, UnpickleLimits, interpret
from ._pickle_vm import genops as _genops  # noqa: F401 - the opcode decoder, tested against pickletools

__all__ = ["UNISCHEMA_KEY", "PetastormField", "PetastormSchema", "parse_unischema", "ALLOWED_GLOBALS",
           "UnpickleLimits"]

logger = logging.getLogger(__name__)

UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
CODECS = ("ScalarCodec", "NdarrayCodec", "CompressedNdarrayCodec", "CompressedImageCodec")
# Old Petastorm releases lived under these package names (petastorm/etl/legacy.py).
_LEGACY_PACKAGES = ("av.ml.dataset_toolkit", "av.experimental.deepdrive.dataset_toolkit")


_Refused = Refused  # a pickle asked for something outside the allow-list (becomes UnsupportedFormatError)
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60


def _short(value: Any) -> str:
    """A bounded repr of a pickled value for error messages (never walks a whole hostile value)."""
    return _SHORT.repr(value)


# -------------------------------------------------------------------------------------------
# Stand-ins: record state, execute nothing
# -------------------------------------------------------------------------------------------

def _plain(value: Any, what: str) -> Any:
    """Accept only plain values (and stand-ins) inside a recorded state."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, _Record, _TypeRef, _UnischemaField)):
        return value
    if type(value) in (tuple, list):
        return type(value)(_plain(v, what) for v in value)
    raise _Refused(f"{what} holds a {type(value).__name__}, which a Petastorm schema never does")


class _Record:
    """Stand-in for a pickled petastorm / pyspark object: keeps its ``__dict__`` state as data."""

    pickled_name = "?"
    state: dict[str, Any] = {}

    def __init__(self, *args: Any) -> None:  # reached only through copyreg._reconstructor / REDUCE
        self.args = tuple(_plain(a, self.pickled_name) for a in args)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]  # (dict_state, slot_state) form
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _Refused(f"{self.pickled_name}: pickled state must be a dict of str keys, got {type(state).__name__}")
        self.state = {k: v if isinstance(v, (OrderedDict, dict)) else _plain(v, self.pickled_name)
                      for k, v in state.items()}

    def __repr__(self) -> str:
        return f"<stand-in {self.pickled_name}>"


class _Unischema(_Record):
    pickled_name = "petastorm.unischema.Unischema"


class _Codec(_Record):
    pickled_name = "petastorm.codecs.?"


class _SparkType(_Record):
    pickled_name = "pyspark.sql.types.?"


class _UnischemaField(tuple):
    """Stand-in for the ``UnischemaField`` namedtuple: a plain tuple of its values."""

    def __new__(cls, *args: Any) -> "_UnischemaField":
        return tuple.__new__(cls, tuple(_plain(a, "UnischemaField") for a in args))

    def __setstate__(self, state: Any) -> None:
        # namedtuples carry no state, except Python 2.7.3's, which pickled a copy of the values
        if state and not isinstance(state, dict):
            raise _Refused("petastorm.unischema.UnischemaField: unexpected pickled state")


@dataclass(frozen=True)
class _TypeRef:
    """A type named by the pickle (``numpy.int32``, ``numpy.str_``, ``decimal.Decimal``): never called."""

    qualname: str
    kind: str  # a numpy dtype string ("<i4"), or "str", "bytes", "decimal", "unsupported"


class _DtypeRef(_Record):
    """Stand-in for a pickled ``numpy.dtype`` instance (``numpy.dtype('f4', False, True)`` + state)."""

    pickled_name = "numpy.dtype"

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or len(spec) > 8 or not spec.isalnum():
            raise _Refused(f"numpy.dtype({spec!r}): only simple dtype codes are accepted")
        dt = np.dtype(spec)
        if dt.kind not in "biufSU":
            raise _Refused(f"numpy.dtype({spec!r}): kind {dt.kind!r} is not accepted")
        self.dtype = dt

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise _Refused("numpy.dtype: unexpected pickled state")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])

    def type_ref(self) -> _TypeRef:
        kind = {"U": "str", "S": "bytes"}.get(self.dtype.kind, self.dtype.str)
        return _TypeRef(f"numpy.dtype({self.dtype.str!r})", kind)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 pickles) for stand-ins only."""
    if base is _TUPLE and cls is _UnischemaField and isinstance(state, tuple):
        return _UnischemaField(*state)
    if base is _OBJECT and cls in _RECONSTRUCTIBLE and state is None:
        return cls.__new__(cls)
    raise _Refused(f"copyreg._reconstructor({getattr(cls, '__name__', cls)!r}, ...) is not a Petastorm schema object")


def _ordered_dict(items: Any = ()) -> OrderedDict:
    """``collections.OrderedDict`` (empty, or from a list of pairs as Python 2 pickled it)."""
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items):
        raise _Refused("collections.OrderedDict: expected a list of pairs")
    return OrderedDict((k, v) for k, v in items)


def _np_scalar(dtype: Any, data: Any) -> int | float | bool:
    """``numpy.core.multiarray.scalar`` for plain numeric scalars (e.g. an np.int64 dimension)."""
    if not isinstance(dtype, _DtypeRef) or dtype.dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise _Refused("numpy.core.multiarray.scalar: only numeric scalars are accepted")
    if len(data) != dtype.dtype.itemsize:
        raise _Refused("numpy.core.multiarray.scalar: data does not match its dtype")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin1 text only, short."""
    if not isinstance(text, str) or encoding != "latin1" or len(text) > 64:
        raise _Refused("_codecs.encode: only short latin1 strings are accepted")
    return text.encode("latin1")


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_OBJECT = _Sentinel("builtins.object")
_RECONSTRUCTIBLE: set[type] = set()  # filled with the Unischema, codec and Spark type stand-ins
_TUPLE = _Sentinel("builtins.tuple")


def _named(base: type, qualname: str) -> type:
    cls = type(qualname.rsplit(".", 1)[1], (base,), {"pickled_name": qualname, "__module__": __name__})
    _RECONSTRUCTIBLE.add(cls)
    return cls


_NUMPY_TYPES = {
    **{n: np.dtype(n).str for n in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                    "float16", "float32", "float64")},
    **{n: "|b1" for n in ("bool_", "bool", "bool8")},
    **{n: "str" for n in ("str_", "unicode_", "unicode")},
    **{n: "bytes" for n in ("bytes_", "string_")},
    **{n: "unsupported" for n in ("object_", "datetime64", "timedelta64", "complex64", "complex128",
                                  "longdouble", "float128", "void")},
}
_BUILTIN_TYPES = {"str": "str", "unicode": "str", "bytes": "bytes", "int": "<i8", "float": "<f8", "bool": "|b1"}
_SPARK_TYPES = ("NullType", "StringType", "CharType", "VarcharType", "BinaryType", "BooleanType", "DateType",
                "TimestampType", "TimestampNTZType", "DecimalType", "DoubleType", "FloatType", "ByteType",
                "IntegerType", "LongType", "ShortType", "ArrayType")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("petastorm.unischema", "Unischema"): _RECONSTRUCTIBLE.add(_Unischema) or _Unischema,
        ("petastorm.unischema", "UnischemaField"): _UnischemaField,
        ("collections", "OrderedDict"): _ordered_dict,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("builtins", "object"): _OBJECT,
        ("__builtin__", "object"): _OBJECT,
        ("builtins", "tuple"): _TUPLE,
        ("__builtin__", "tuple"): _TUPLE,
        ("numpy", "dtype"): _DtypeRef,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("_codecs", "encode"): _codecs_encode,
        ("decimal", "Decimal"): _TypeRef("decimal.Decimal", "decimal"),
    }
    for codec in CODECS:
        table[("petastorm.codecs", codec)] = _named(_Codec, f"petastorm.codecs.{codec}")
    for st in _SPARK_TYPES:
        table[("pyspark.sql.types", st)] = _named(_SparkType, f"pyspark.sql.types.{st}")
    for name, kind in _NUMPY_TYPES.items():
        table[("numpy", name)] = _TypeRef(f"numpy.{name}", kind)
    for mod in ("builtins", "__builtin__"):
        for name, kind in _BUILTIN_TYPES.items():
            table[(mod, name)] = _TypeRef(f"builtins.{name}", kind)
    return table


#: Every ``(module, name)`` a Petastorm schema pickle may name, and the local stand-in it gets.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()


def _find_class(module: str, name: str) -> Any:
    """The stand-in for global ``module.name``; anything not allow-listed is refused."""
    for legacy in _LEGACY_PACKAGES:
        if module.startswith(legacy + "."):
            module = "petastorm." + module[len(legacy) + 1:]
    try:
        return ALLOWED_GLOBALS[(module, name)]
    except (KeyError, TypeError):
        raise _Refused(f"{module}.{name}") from None


def _build(obj: Any, state: Any) -> None:
    """The BUILD opcode: ``__setstate__`` of a stand-in instance (the interpreter has checked that
    this load created it). Nothing else ever gets attributes set: not classes, not functions, not
    allow-listed objects, not other values."""
    if not isinstance(obj, (_Record, _UnischemaField)) or isinstance(obj, type):
        raise Forbidden(f"BUILD (setting state) on a {type(obj).__name__}, which is not a Petastorm schema object")
    obj.__setstate__(state)


# -------------------------------------------------------------------------------------------
# Validated value objects
# -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PetastormField:
    """One field of a Petastorm ``Unischema``, as data.

    Attributes
    ----------
    name : str
    numpy_type : str
        What the Unischema names as the field's ``numpy_dtype`` (``"numpy.int32"``,
        ``"numpy.str_"``, ``"decimal.Decimal"``, ...).
    kind : str
        A numpy dtype string (``"<f4"``) for numbers, or ``"str"``, ``"bytes"``, ``"decimal"``, or
        ``"unsupported"`` (datetime, complex, object: no tensorstore_fs dtype).
    shape : tuple
        ``()`` for scalars; ``None`` marks a variable dimension.
    codec : str or None
        ``"ScalarCodec"``, ``"NdarrayCodec"``, ``"CompressedNdarrayCodec"``,
        ``"CompressedImageCodec"``, or None (Petastorm stores such scalars natively).
    nullable : bool
    spark_type : str or None
        The ``ScalarCodec``'s Spark type (``"IntegerType"``, ``"DecimalType(10,2)"``).
    image_format : str or None
        ``"png"`` or ``"jpeg"`` (anything OpenCV knew) for ``CompressedImageCodec``.
    image_quality : int or None
    """

    name: str
    numpy_type: str
    kind: str
    shape: tuple[int | None, ...]
    codec: str | None
    nullable: bool
    spark_type: str | None = None
    image_format: str | None = None
    image_quality: int | None = None

    @property
    def numpy_dtype(self) -> np.dtype | None:
        """The numpy dtype of a numeric field (native byte order), else None."""
        return np.dtype(self.kind).newbyteorder("=") if self.kind[:1] in "<>|=" else None

    @property
    def codec_repr(self) -> str:
        if self.codec == "ScalarCodec":
            return f"ScalarCodec({self.spark_type})"
        if self.codec == "CompressedImageCodec":
            return f"CompressedImageCodec({self.image_format!r}, {self.image_quality})"
        return f"{self.codec}()" if self.codec else "no codec"

    @property
    def tsfs_dtype(self) -> str:
        """The tensorstore_fs dtype this field imports as (raises if there is none)."""
        if self.kind in ("str", "decimal"):
            dtype = "string"
        elif self.kind == "bytes":
            dtype = "bytes"
        elif self.numpy_dtype is not None and self.numpy_dtype.name in DTYPES:
            dtype = self.numpy_dtype.name
        else:
            raise UnsupportedFormatError(
                f"Petastorm field {self.name!r}: numpy_dtype {self.numpy_type} has no tensorstore_fs dtype "
                "(supported: bool, ints, floats, str, bytes, Decimal); leave it out with columns=[...]"
            )
        tensor_codec = self.codec in ("NdarrayCodec", "CompressedNdarrayCodec", "CompressedImageCodec")
        if tensor_codec and dtype in ("string", "bytes"):
            raise UnsupportedFormatError(
                f"Petastorm field {self.name!r}: {self.codec} of {self.numpy_type} is not supported "
                "(tensors must be numeric)")
        if not tensor_codec and self.shape != ():
            raise UnsupportedFormatError(
                f"Petastorm field {self.name!r}: {self.codec_repr} with shape {self.shape} is not supported "
                "(only tensor codecs hold non-scalar values)")
        if self.codec == "CompressedImageCodec" and not (
                len(self.shape) == 2 or (len(self.shape) == 3 and self.shape[2] in (3, None))):
            raise UnsupportedFormatError(
                f"Petastorm field {self.name!r}: image shape {self.shape} is not (H, W) or (H, W, 3)")
        return dtype

    def to_field(self) -> Field:
        """The tensorstore_fs :class:`~tensorstore_fs.schema.Field` this field imports as."""
        desc = f"imported from Petastorm: {self.numpy_type}, {self.codec_repr}"
        if self.kind == "decimal":
            desc += "; decimals are kept exactly, as their decimal strings"
        return Field(self.name, self.tsfs_dtype, self.shape, nullable=self.nullable, description=desc)


@dataclass(frozen=True)
class PetastormSchema:
    """A Petastorm ``Unischema`` read as data: its name and its fields in stored order."""

    name: str
    fields: tuple[PetastormField, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> PetastormField:
        for f in self.fields:
            if f.name == name:
                return f
        raise InvalidArgumentError(f"unknown Petastorm field {name!r}; the Unischema has {self.names}")

    def select(self, columns: Sequence[str] | None) -> tuple[PetastormField, ...]:
        """The fields named by ``columns`` (all when None), in that order."""
        if columns is None:
            return self.fields
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise InvalidArgumentError(f"columns must be a list of field names, got {columns!r}")
        if len(set(columns)) != len(columns) or not columns:
            raise InvalidArgumentError(f"columns must be a non-empty list of distinct names, got {list(columns)}")
        return tuple(self.field(c) for c in columns)

    def to_schema(self, columns: Sequence[str] | None = None) -> Schema:
        """The tensorstore_fs schema of an import of ``columns`` (all fields when None)."""
        return Schema([f.to_field() for f in self.select(columns)],
                      {"imported_from": "petastorm", "petastorm.unischema": self.name})


# -------------------------------------------------------------------------------------------
# Parsing
# -------------------------------------------------------------------------------------------

def _spark_type_repr(t: Any, field: str) -> str:
    if not isinstance(t, _SparkType):
        raise CorruptDatasetError(
            f"field {_short(field)}: ScalarCodec holds {_short(t)}, not a pyspark.sql.types type")
    name = t.pickled_name.rsplit(".", 1)[1]
    if name == "DecimalType":
        return f"DecimalType({t.state.get('precision', 10)},{t.state.get('scale', 0)})"
    return f"{name}()"


def _parse_shape(shape: Any, field: str) -> tuple[int | None, ...]:
    if not isinstance(shape, (tuple, list)) or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape):
        raise CorruptDatasetError(f"field {_short(field)}: shape {_short(shape)} is not a tuple of ints and None")
    return tuple(d if d else None for d in shape)  # Petastorm treats 0 like None (_is_compliant_shape)


def _parse_field(key: Any, raw: Any) -> PetastormField:
    if not isinstance(raw, _UnischemaField) or not 3 <= len(raw) <= 5:
        raise CorruptDatasetError(f"Unischema entry {_short(key)} is not a UnischemaField")
    name, dtype, shape = raw[0], raw[1], raw[2]
    codec = raw[3] if len(raw) > 3 else None
    nullable = raw[4] if len(raw) > 4 else False
    if not isinstance(name, str) or name != key:
        raise CorruptDatasetError(f"Unischema entry {_short(key)} holds a field named {_short(name)}")
    if isinstance(dtype, _DtypeRef):
        dtype = dtype.type_ref()
    if not isinstance(dtype, _TypeRef):
        raise CorruptDatasetError(f"field {_short(name)}: numpy_dtype {_short(dtype)} is not a type")
    if codec is not None and not isinstance(codec, _Codec):
        raise CorruptDatasetError(f"field {_short(name)}: codec {_short(codec)} is not a Petastorm codec")
    if not isinstance(nullable, (bool, int)):
        raise CorruptDatasetError(f"field {_short(name)}: nullable {_short(nullable)} is not a bool")
    codec_name = codec.pickled_name.rsplit(".", 1)[1] if codec is not None else None
    extra: dict[str, Any] = {}
    if codec_name == "ScalarCodec":
        extra["spark_type"] = _spark_type_repr(codec.state.get("_spark_type"), name)
    elif codec_name == "CompressedImageCodec":
        fmt = codec.state.get("_image_codec", ".png")
        quality = codec.state.get("_quality", 80)
        if not isinstance(fmt, str) or not isinstance(quality, int):
            raise CorruptDatasetError(
                f"field {_short(name)}: CompressedImageCodec state {_short(codec.state)} is invalid")
        fmt = fmt.lstrip(".").lower()
        extra.update(image_format="jpeg" if fmt == "jpg" else fmt, image_quality=quality)
    return PetastormField(name, dtype.qualname, dtype.kind, _parse_shape(shape, name), codec_name,
                          bool(nullable), **extra)


def _load(data: bytes, source: str, limits: UnpickleLimits) -> Any:
    try:
        return interpret(data, _find_class, _build, limits)
    except LimitExceeded as e:
        raise CorruptDatasetError(
            f"{source}: the Petastorm schema pickle exceeds a safety limit: {e}; refusing to read it "
            "(no Petastorm schema comes near it: the file is damaged or hostile)") from None
    except Forbidden as e:
        raise UnsupportedFormatError(
            f"{source}: the Petastorm schema pickle tries {e}; refusing to unpickle it (a dataset must never "
            "change the library's state)") from None
    except _Refused as e:
        raise UnsupportedFormatError(
            f"{source}: the Petastorm schema pickle asks for {e}, which is not on the allow-list of "
            "Petastorm schema classes; refusing to unpickle it (a dataset must never run code)"
        ) from None
    except RecursionError:
        raise CorruptDatasetError(f"{source}: the Petastorm schema pickle is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - any failure of a malformed pickle is a corrupt schema
        raise CorruptDatasetError(
            f"{source}: the Petastorm schema pickle cannot be read: {type(e).__name__}: {e}") from None


def parse_unischema(data: bytes, source: str = "Petastorm schema",
                     limits: UnpickleLimits = DEFAULT_LIMITS) -> PetastormSchema:
    """Read a pickled Petastorm ``Unischema`` safely.

    Parameters
    ----------
    data : bytes
        The pickle (the ``dataset-toolkit.unischema.v1`` value of ``_common_metadata``).
    source : str
        Where it came from, for error messages.
    limits : UnpickleLimits
        Bounds on the load (bytes, opcodes, memo, items per container, depth, expanded size).

    Raises
    ------
    UnsupportedFormatError
        The pickle names a global outside :data:`ALLOWED_GLOBALS` (the message names it), or tries
        to set state on anything but a fresh stand-in instance it created.
    CorruptDatasetError
        The pickle is malformed, exceeds ``limits`` (the message names the limit), or does not
        describe a Unischema.
    """
    if not isinstance(limits, UnpickleLimits):
        raise InvalidArgumentError(f"limits must be an UnpickleLimits, got {type(limits).__name__}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"expected the pickled Unischema as bytes, got {type(data).__name__}")
    obj = _load(bytes(data), source, limits)
    if not isinstance(obj, _Unischema):
        raise CorruptDatasetError(f"{source}: the pickle holds {_short(obj)}, not a petastorm Unischema")
    name = obj.state.get("_name", "")
    fields = obj.state.get("_fields")
    if not isinstance(name, str) or not isinstance(fields, dict) or not fields:
        raise CorruptDatasetError(f"{source}: the Unischema has no fields")
    try:
        parsed = tuple(_parse_field(k, v) for k, v in fields.items())
    except CorruptDatasetError as e:
        raise CorruptDatasetError(f"{source}: {e}") from None
    logger.debug("%s: Petastorm Unischema %r with fields %s", source, name, [f.name for f in parsed])
    return PetastormSchema(name, parsed)

