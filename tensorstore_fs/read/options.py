"""What a read asks for: one frozen, validated value shared by the scanner, the stream and the adapters."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow.compute as pc

from .._checks import check_int
from ..errors import InvalidArgumentError
from ..plan import REMAINDERS
from ..predicates import Predicate
from ..ragged import check_max_padded_bytes
from ..schema import Schema

__all__ = ["DEFAULT_WINDOW_BYTES", "VARIABLE_MODES", "ReadOptions", "resolve_columns", "variable_mode"]

DEFAULT_WINDOW_BYTES = 64 * 2**20
# how a read hands out variable-shape fields: a list of arrays per batch, zero-padded plus
# ``<name>__shape``, or flat (:class:`~tensorstore_fs.ragged.RaggedRows`: values plus offsets)
VARIABLE_MODES = ("list", "pad", "flat")


def resolve_columns(schema: Schema, columns: Sequence[str] | None) -> list[str]:
    """The field names a reader returns: all for None, else ``columns`` checked against ``schema``."""
    if columns is None:
        return list(schema.names)
    if isinstance(columns, str):
        raise InvalidArgumentError(f"columns must be a list of field names, got the string {columns!r}")
    names = list(columns)
    if not names:
        raise InvalidArgumentError("columns must name at least one field (or be None for all)")
    for c in names:
        if c not in schema:
            raise InvalidArgumentError(f"unknown column {c!r}; dataset fields are {schema.names}")
    return names


def variable_mode(variable: str | None, pad_variable: bool | None = None, flat_variable: bool | None = None,
                  *, default: str = "list") -> str:
    """The ``variable=`` choice, also from the deprecated ``pad_variable=`` / ``flat_variable=``
    booleans (a :class:`DeprecationWarning`; they may not be combined with ``variable=``)."""
    if pad_variable is not None or flat_variable is not None:
        warnings.warn("pad_variable= and flat_variable= are deprecated: pass variable='pad' or variable='flat'",
                      DeprecationWarning, stacklevel=3)
        if variable is not None:
            raise InvalidArgumentError("pass variable= alone, not with pad_variable= / flat_variable=")
        if pad_variable and flat_variable:
            raise InvalidArgumentError("pad_variable and flat_variable are exclusive: variable-shape rows are "
                                       "either padded or flat values plus offsets")
        variable = "pad" if pad_variable else "flat" if flat_variable else "list"
    variable = default if variable is None else variable
    if variable not in VARIABLE_MODES:
        raise InvalidArgumentError(f"variable must be one of {VARIABLE_MODES}, got {variable!r}")
    return variable


@dataclass(frozen=True)
class ReadOptions:
    """The arguments of a read (validated on construction; columns are checked against the
    dataset's schema when a reader opens it).

    Parameters
    ----------
    columns : sequence of str, optional
        Fields to read (all by default).
    filter : pyarrow.compute.Expression, optional
        On scalar fields; row groups whose statistics rule it out are not read.
    predicate : Predicate, optional
        A tensorstore_fs predicate, evaluated vectorised on each row group.
    batch_size : int
        Rows per batch.
    shuffle, seed : bool, int
        Shuffle per epoch with this seed (planned reads).
    remainder : {"drop", "pad", "uneven"}
        What a planned read does with rows that do not divide evenly across ranks.
    drop_last : bool
        Drop a final short batch.
    window_bytes : int
        Bytes of one worker window (a planned read's shuffle buffer and unit of work).
    variable : {"list", "pad", "flat"}
        Variable-shape fields as lists of arrays, zero-padded plus ``<name>__shape``, or
        :class:`~tensorstore_fs.ragged.RaggedRows`.
    with_row_ids : bool
        Add ``__row_id__`` (planned reads).
    num_epochs : int or None
        Epochs one pass covers (planned reads; None: forever).
    readahead_bytes : int or None
        Bytes a reader fetches ahead of its consumer (:mod:`tensorstore_fs.read.readahead`); 0
        turns read-ahead off; None: ``$TSFS_READAHEAD_BYTES``, else 256 MiB.
    max_padded_bytes : int or None
        ``variable="pad"``: the most bytes one batch's padded variable-shape field may take (each
        batch is padded to its own widest extents); a batch past it raises
        :class:`~tensorstore_fs.InvalidArgumentError`. None: the larger of 1 GiB and 16 times the
        bytes of the batch's rows themselves (:func:`~tensorstore_fs.ragged.padded_shape`).
    """

    columns: tuple[str, ...] | None = None
    filter: Any = None
    predicate: Predicate | None = None
    batch_size: int = 1024
    shuffle: bool = False
    seed: int = 0
    remainder: str = "drop"
    drop_last: bool = False
    window_bytes: int = DEFAULT_WINDOW_BYTES
    variable: str = "list"
    with_row_ids: bool = False
    num_epochs: int | None = 1
    readahead_bytes: int | None = None
    max_padded_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.columns is not None:
            if isinstance(self.columns, str):
                raise InvalidArgumentError(f"columns must be a list of field names, got the string {self.columns!r}")
            object.__setattr__(self, "columns", tuple(self.columns))
        if self.filter is not None and not isinstance(self.filter, pc.Expression):
            raise InvalidArgumentError(f"filter must be a pyarrow.compute.Expression (e.g. pc.field('label') == 3), "
                                       f"got {type(self.filter).__name__}")
        if self.predicate is not None and not isinstance(self.predicate, Predicate):
            raise InvalidArgumentError(f"predicate must be a tensorstore_fs predicate, got {type(self.predicate).__name__}")
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        object.__setattr__(self, "window_bytes", check_int("window_bytes", self.window_bytes))
        object.__setattr__(self, "num_epochs", check_int("num_epochs", self.num_epochs, allow_none=True))
        object.__setattr__(self, "readahead_bytes", check_int("readahead_bytes", self.readahead_bytes, 0,
                                                              allow_none=True))
        object.__setattr__(self, "max_padded_bytes", check_max_padded_bytes(self.max_padded_bytes))
        if self.remainder not in REMAINDERS:
            raise InvalidArgumentError(f"remainder must be one of {REMAINDERS}, got {self.remainder!r}")
        if self.variable not in VARIABLE_MODES:
            raise InvalidArgumentError(f"variable must be one of {VARIABLE_MODES}, got {self.variable!r}")

    def check(self, schema: Schema) -> list[str]:
        """The field names this read returns, checked against ``schema`` (and the predicate's)."""
        names = resolve_columns(schema, self.columns)
        if self.predicate is not None:
            for f in self.predicate.fields:
                if f not in schema:
                    raise InvalidArgumentError(f"predicate reads unknown field {f!r}; dataset fields are {schema.names}")
        return names
