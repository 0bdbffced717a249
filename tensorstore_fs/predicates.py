"""Row predicates evaluated vectorised on a batch's columns (Petastorm's names, numpy speed).

A predicate is an object with ``fields`` (the columns it reads) and ``__call__(columns) -> mask``
where ``columns`` maps each field name to a numpy array (or list, for variable shapes) and the
result is a boolean array with one entry per row. Predicates that can be written as a pyarrow
expression also offer ``to_expression()``, which lets the reader prune row groups with them.

Predicates are plain picklable objects (except ``in_lambda`` around a lambda), so they travel to
DataLoader worker processes under any start method.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InvalidArgumentError

__all__ = [
    "Predicate",
    "in_set",
    "in_range",
    "in_lambda",
    "in_negate",
    "in_reduce",
    "in_pseudorandom_split",
    "stable_unit_hash",
]


class Predicate:
    """Base class: subclasses set ``fields`` and implement ``__call__``."""

    fields: tuple[str, ...] = ()

    def __call__(self, columns: dict[str, Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_expression(self) -> Any:
        """An equivalent ``pyarrow.compute.Expression``, or None when there is none."""
        return None


def _as_bool_mask(result: Any, n: int, what: str) -> np.ndarray:
    mask = np.asarray(result)
    if mask.dtype != bool or mask.shape != (n,):
        raise InvalidArgumentError(
            f"{what} must return a boolean array of shape ({n},), got dtype {mask.dtype} shape {mask.shape}"
        )
    return mask


def _filled(values: Any) -> Any:
    if isinstance(values, np.ma.MaskedArray):
        return values.filled(0) if values.dtype != object else values.data
    return values


def _null_mask(values: Any) -> np.ndarray | None:
    if isinstance(values, np.ma.MaskedArray):
        m = np.ma.getmaskarray(values)
        return m.reshape(m.shape[0], -1).any(axis=1) if m.ndim > 1 else m
    if isinstance(values, np.ndarray) and values.dtype == object:
        return np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    return None


@dataclass(frozen=True)
class in_set(Predicate):
    """Rows whose ``field`` value is one of ``values`` (nulls never match)."""

    values: Sequence[Any]
    field: str

    def __post_init__(self) -> None:
        if not isinstance(self.field, str):
            raise InvalidArgumentError(f"in_set: field must be a column name, got {self.field!r}")
        object.__setattr__(self, "values", tuple(self.values))

    @property
    def fields(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.field,)

    def __call__(self, columns: dict[str, Any]) -> np.ndarray:
        col = columns[self.field]
        nulls = _null_mask(col)
        vals = _filled(col)
        if isinstance(vals, np.ndarray) and vals.dtype != object:
            mask = np.isin(vals, np.asarray(self.values, dtype=object if not self.values else None))
        else:
            lookup = set(self.values)
            mask = np.fromiter((v in lookup for v in vals), dtype=bool, count=len(vals))
        return mask & ~nulls if nulls is not None else mask

    def to_expression(self) -> Any:
        import pyarrow.compute as pc

        values = [v for v in self.values if v is not None]  # nulls never match
        if not values:
            return pc.scalar(False)  # an empty (null-typed) value set cannot be bound to a column
        f = pc.field(self.field)
        expr = f.isin(values)
        # Arrow simplifies isin against min/max guarantees only for small value sets; an explicit
        # range lets large sets of orderable values prune row groups too.
        numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                      and v == v for v in values)
        if numeric or all(isinstance(v, str) for v in values):
            expr = expr & (f >= min(values)) & (f <= max(values))
        return expr


@dataclass(frozen=True)
class in_range(Predicate):
    """Rows with ``low <= value < high`` (either bound optional; ``inclusive_high`` for ``<=``)."""

    field: str
    low: Any = None
    high: Any = None
    inclusive_high: bool = False

    def __post_init__(self) -> None:
        if self.low is None and self.high is None:
            raise InvalidArgumentError(f"in_range({self.field!r}): give low, high or both")

    @property
    def fields(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.field,)

    def __call__(self, columns: dict[str, Any]) -> np.ndarray:
        col = columns[self.field]
        nulls = _null_mask(col)
        vals = _filled(col)
        if nulls is not None and nulls.any() and isinstance(vals, np.ndarray) and vals.dtype == object:
            # strings/bytes hold None for nulls, which do not compare with str: test present rows only
            out = np.zeros(len(vals), dtype=bool)
            out[~nulls] = self({self.field: vals[~nulls]})
            return out
        mask = np.ones(len(vals), dtype=bool)
        if self.low is not None:
            mask &= np.asarray(vals >= self.low, dtype=bool)
        if self.high is not None:
            mask &= np.asarray((vals <= self.high) if self.inclusive_high else (vals < self.high), dtype=bool)
        return mask & ~nulls if nulls is not None else mask

    def to_expression(self) -> Any:
        import pyarrow.compute as pc

        f = pc.field(self.field)
        parts = []
        if self.low is not None:
            parts.append(f >= self.low)
        if self.high is not None:
            parts.append(f <= self.high if self.inclusive_high else f < self.high)
        expr = parts[0]
        for p in parts[1:]:
            expr = expr & p
        return expr


@dataclass(frozen=True)
class in_lambda(Predicate):
    """Rows for which ``func(*[columns[f] for f in fields])`` is True.

    ``func`` is vectorised: it receives whole column arrays and returns a boolean array. Use a
    module-level function (not a lambda) when the predicate must reach spawned worker processes.
    """

    predicate_fields: Sequence[str]
    func: Callable[..., Any]

    def __post_init__(self) -> None:
        if isinstance(self.predicate_fields, str):
            object.__setattr__(self, "predicate_fields", (self.predicate_fields,))
        object.__setattr__(self, "predicate_fields", tuple(self.predicate_fields))
        if not callable(self.func):
            raise InvalidArgumentError(f"in_lambda: func must be callable, got {self.func!r}")

    @property
    def fields(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.predicate_fields)

    def __call__(self, columns: dict[str, Any]) -> np.ndarray:
        args = [columns[f] for f in self.predicate_fields]
        n = len(args[0]) if args else 0
        return _as_bool_mask(self.func(*args), n, f"in_lambda({list(self.predicate_fields)})")


@dataclass(frozen=True)
class in_negate(Predicate):
    """Rows that ``predicate`` rejects."""

    predicate: Predicate

    @property
    def fields(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.predicate.fields)

    def __call__(self, columns: dict[str, Any]) -> np.ndarray:
        return ~self.predicate(columns)


@dataclass(frozen=True)
class in_reduce(Predicate):
    """Combine predicates with ``"all"`` (logical and) or ``"any"`` (logical or)."""

    predicates: Sequence[Predicate]
    reduce: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "predicates", tuple(self.predicates))
        if self.reduce not in ("all", "any"):
            raise InvalidArgumentError(f"in_reduce: reduce must be 'all' or 'any', got {self.reduce!r}")
        if not self.predicates:
            raise InvalidArgumentError("in_reduce needs at least one predicate")
        for p in self.predicates:
            if not isinstance(p, Predicate):
                raise InvalidArgumentError(f"in_reduce: expected predicates, got {p!r}")

    @property
    def fields(self) -> tuple[str, ...]:  # type: ignore[override]
        out: list[str] = []
        for p in self.predicates:
            out += [f for f in p.fields if f not in out]
        return tuple(out)

    def __call__(self, columns: dict[str, Any]) -> np.ndarray:
        masks = [p(columns) for p in self.predicates]
        return np.logical_and.reduce(masks) if self.reduce == "all" else np.logical_or.reduce(masks)

    def to_expression(self) -> Any:
        exprs = [p.to_expression() for p in self.predicates]
        if self.reduce == "all":
            usable = [e for e in exprs if e is not None]  # a weaker conjunction still prunes safely
        else:
            if any(e is None for e in exprs):
                return None
            usable = exprs
        if not usable:
            return None
        out = usable[0]
        for e in usable[1:]:
            out = (out & e) if self.reduce == "all" else (out | e)
        return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def stable_unit_hash(values: Any) -> np.ndarray:
    """Map each value to a float in [0, 1), identically on every run, machine and numpy version.

    Integers and bools hash their int64 value (splitmix64); floats their IEEE-754 bits; strings and
    bytes the first 8 bytes of BLAKE2b of their UTF-8 / raw bytes.
    """
    vals = _filled(values)
    arr = np.asarray(vals) if not isinstance(vals, list) else np.asarray(vals, dtype=object)
    if arr.dtype.kind in "biu":
        bits = arr.astype(np.int64).view(np.uint64)
    elif arr.dtype.kind == "f":
        bits = arr.astype(np.float64).view(np.uint64)
    else:
        def one(v: Any) -> int:
            b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little")

        bits = np.fromiter((0 if v is None else one(v) for v in arr), dtype=np.uint64, count=len(arr))
    h = _splitmix64(bits)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class in_pseudorandom_split(Predicate):
    """Rows in subset ``subset_index`` of a split by ``fractions`` of ``key_column``'s hash.

    The split depends only on each row's key value, so it is stable across runs, machines,
    shard layouts and appends: ``in_pseudorandom_split([0.8, 0.2], 0, "id")`` is the train set
    and ``..., 1, "id")`` the disjoint test set.
    """

    fractions: Sequence[float]
    subset_index: int
    key_column: str

    def __post_init__(self) -> None:
        fr = tuple(float(x) for x in self.fractions)
        object.__setattr__(self, "fractions", fr)
        if not fr or any(x < 0 for x in fr) or sum(fr) > 1.0 + 1e-9:
            raise InvalidArgumentError(f"in_pseudorandom_split: fractions must be >= 0 and sum to <= 1, got {fr}")
        if not (0 <= self.subset_index < len(fr)):
            raise InvalidArgumentError(
                f"in_pseudorandom_split: subset_index must be in [0, {len(fr)}), got {self.subset_index}"
            )

    @property
    def fields(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.key_column,)

    def __call__(self, columns: dict[str, Any]) -> np.ndarray:
        u = stable_unit_hash(columns[self.key_column])
        edges = np.concatenate([[0.0], np.cumsum(self.fractions)])
        lo, hi = edges[self.subset_index], edges[self.subset_index + 1]
        return (u >= lo) & (u < hi)
