"""The one validator of integer arguments (every module checks ints through it, so every message
reads the same)."""

from __future__ import annotations

import numbers
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["check_int"]


def check_int(name: str, value: Any, minimum: int = 1, *, allow_none: bool = False,
              error: type[Exception] = InvalidArgumentError, where: str = "") -> Any:
    """``value`` as an ``int`` if it is an integer (not a bool) of at least ``minimum``; None
    passes when ``allow_none``. Otherwise ``error`` (an :class:`~tensorstore_fs.InvalidArgumentError`
    by default) naming ``name`` (after ``where``), what was expected and what was given."""
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < minimum:
        expected = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise error(f"{where}{name} must be {expected}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)
