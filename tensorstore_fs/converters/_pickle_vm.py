"""A bounded pickle evaluator that runs no code: the engine under the Petastorm schema reader.

The ``pickle`` and ``pickletools`` modules are never imported. :func:`genops` decodes opcodes;
:func:`interpret` gives meaning to the subset a Petastorm ``Unischema`` uses. Every global comes
from the caller's ``find_class`` (an allow-list of inert stand-ins), every ``BUILD`` goes through
the caller's ``build``; persistent ids, extension codes and out-of-band buffers are refused.

A pickle is a program, and a short one can be expensive: ``DUP`` + ``TUPLE2`` repeated 59 times is
122 bytes and builds a tuple of 2**59 leaves that costs nothing to build but never finishes when
anything walks it (``repr``, hashing, a recursive conversion). So every load is bounded by
:class:`UnpickleLimits`: the pickle's bytes, opcodes evaluated, memo entries, items in one container,
nesting depth, and the *expanded size* of every value (its objects and characters, each shared
reference counted again: the work a walk over it would do). A value is measured when it is built;
a container may be changed only while nothing refers to it yet, so a measured size stays true
(and no value can contain itself). Exceeding a limit raises :class:`LimitExceeded`.

State may only be given to objects this load created: ``BUILD``, ``APPEND``, ``SETITEM`` ... on a
class, a function, an allow-listed object or anything else that outlives the load raise
:class:`Forbidden`, so a pickle cannot change how later pickles in the process are read.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

from ..errors import InvalidArgumentError

__all__ = ["UnpickleLimits", "DEFAULT_LIMITS", "Refused", "Forbidden", "LimitExceeded", "genops", "interpret"]


class Refused(Exception):
    """A pickle asked for a global or opcode outside the allow-list; the message names it."""


class Forbidden(Exception):
    """A pickle tried to change an object it did not create (a class, an allow-listed object, a
    value already placed inside another)."""


class LimitExceeded(Exception):
    """A pickle exceeded one of :class:`UnpickleLimits`; the message names the limit."""


@dataclass(frozen=True)
class UnpickleLimits:
    """Bounds on one load. A real Petastorm ``Unischema`` pickle is a few KiB, a few thousand
    opcodes and nests about 10 deep; the defaults leave room for schemas of thousands of fields.

    Attributes
    ----------
    max_bytes : int
        Size of the pickle.
    max_ops : int
        Opcodes evaluated.
    max_memo : int
        Memo entries.
    max_items : int
        Items in one list, tuple, dict or set.
    max_depth : int
        Nesting of containers and objects.
    max_size : int
        Expanded size of any value: one per object plus one per character or byte of its strings,
        with every shared reference counted again.
    max_int_bytes : int
        Bytes (or decimal digits) of one integer.
    """

    max_bytes: int = 16 << 20
    max_ops: int = 500_000
    max_memo: int = 100_000
    max_items: int = 100_000
    max_depth: int = 100
    max_size: int = 8 << 20
    max_int_bytes: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"UnpickleLimits.{f.name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = UnpickleLimits()

_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_VALUES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
           "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
           "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}


# Pickle opcodes this reader understands: byte -> (name, argument kind). Decoded here rather
# than with the pickle / pickletools modules, so nothing in the library can ever unpickle.
_OPCODES: dict[int, tuple[str, str]] = {ord(c): v for c, v in {
    "(": ("MARK", ""), ".": ("STOP", ""), "0": ("POP", ""), "1": ("POP_MARK", ""), "2": ("DUP", ""),
    "F": ("FLOAT", "line"), "I": ("INT", "line"), "J": ("BININT", "i4"), "K": ("BININT1", "u1"),
    "L": ("LONG", "line"), "M": ("BININT2", "u2"), "N": ("NONE", ""), "P": ("PERSID", "line"),
    "Q": ("BINPERSID", ""), "R": ("REDUCE", ""), "S": ("STRING", "line"), "T": ("BINSTRING", "b4"),
    "U": ("SHORT_BINSTRING", "b1"), "V": ("UNICODE", "line"), "X": ("BINUNICODE", "b4"),
    "a": ("APPEND", ""), "b": ("BUILD", ""), "c": ("GLOBAL", "2lines"), "d": ("DICT", ""),
    "}": ("EMPTY_DICT", ""), "e": ("APPENDS", ""), "g": ("GET", "line"), "h": ("BINGET", "u1"),
    "i": ("INST", "2lines"), "j": ("LONG_BINGET", "u4"), "l": ("LIST", ""), "]": ("EMPTY_LIST", ""),
    "o": ("OBJ", ""), "p": ("PUT", "line"), "q": ("BINPUT", "u1"), "r": ("LONG_BINPUT", "u4"),
    "s": ("SETITEM", ""), "t": ("TUPLE", ""), ")": ("EMPTY_TUPLE", ""), "u": ("SETITEMS", ""),
    "G": ("BINFLOAT", "f8"), "B": ("BINBYTES", "b4"), "C": ("SHORT_BINBYTES", "b1"),
    "\x80": ("PROTO", "u1"), "\x81": ("NEWOBJ", ""), "\x82": ("EXT1", "u1"), "\x83": ("EXT2", "u2"),
    "\x84": ("EXT4", "i4"), "\x85": ("TUPLE1", ""), "\x86": ("TUPLE2", ""), "\x87": ("TUPLE3", ""),
    "\x88": ("NEWTRUE", ""), "\x89": ("NEWFALSE", ""), "\x8a": ("LONG1", "long1"),
    "\x8b": ("LONG4", "long4"), "\x8c": ("SHORT_BINUNICODE", "b1"), "\x8d": ("BINUNICODE8", "b8"),
    "\x8e": ("BINBYTES8", "b8"), "\x8f": ("EMPTY_SET", ""), "\x90": ("ADDITEMS", ""),
    "\x91": ("FROZENSET", ""), "\x92": ("NEWOBJ_EX", ""), "\x93": ("STACK_GLOBAL", ""),
    "\x94": ("MEMOIZE", ""), "\x95": ("FRAME", "u8"), "\x96": ("BYTEARRAY8", "b8"),
    "\x97": ("NEXT_BUFFER", ""), "\x98": ("READONLY_BUFFER", ""),
}.items()}
_SIZED = {"u1": ("<B", 1), "u2": ("<H", 2), "i4": ("<i", 4), "u4": ("<I", 4), "u8": ("<Q", 8), "f8": (">d", 8)}
_LENGTH = {"b1": ("<B", 1), "b4": ("<I", 4), "b8": ("<Q", 8), "long1": ("<B", 1), "long4": ("<i", 4)}


def _line_value(name: str, raw: bytes, limits: UnpickleLimits) -> Any:
    text = raw.decode("latin-1")
    if name in ("INT", "LONG") and len(text) > limits.max_int_bytes + 2:
        raise LimitExceeded(f"an integer of {len(text)} digits (max_int_bytes={limits.max_int_bytes})")
    if name == "INT":  # protocol 0 writes booleans as INT 00 / 01
        return {"00": False, "01": True}[text] if text in ("00", "01") else int(text)
    if name == "LONG":
        return int(text[:-1] if text.endswith("L") else text)
    if name == "FLOAT":
        return float(text)
    if name == "UNICODE":
        return raw.decode("raw-unicode-escape")
    if name == "STRING":
        if len(text) < 2 or text[0] != text[-1] or text[0] not in "'\"":
            raise ValueError("STRING opcode argument is not quoted")
        return codecs.escape_decode(raw[1:-1])[0].decode("latin-1")
    if name in ("GET", "PUT"):
        return int(text)
    return text


def genops(data: bytes, limits: UnpickleLimits = DEFAULT_LIMITS) -> Iterator[tuple[str, Any]]:
    """``(opcode name, decoded argument)`` for each opcode of a pickle — decoding only."""
    if len(data) > limits.max_bytes:
        raise LimitExceeded(f"the pickle is {len(data)} bytes (max_bytes={limits.max_bytes})")
    view = memoryview(data)
    pos, end = 0, len(data)

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > end:
            raise ValueError("pickle is truncated")
        chunk = bytes(view[pos:pos + n])
        pos += n
        return chunk

    def line() -> bytes:
        nonlocal pos
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise ValueError("pickle is truncated")
        chunk, pos = data[pos:nl], nl + 1
        return chunk

    while pos < end:
        code = data[pos]
        pos += 1
        if code not in _OPCODES:
            raise ValueError(f"unknown pickle opcode {code:#x}")
        name, kind = _OPCODES[code]
        if not kind:
            arg: Any = None
        elif kind == "line":
            arg = _line_value(name, line(), limits)
        elif kind == "2lines":
            arg = line().decode("utf-8") + " " + line().decode("utf-8")
        elif kind in _SIZED:
            fmt, n = _SIZED[kind]
            arg = struct.unpack(fmt, take(n))[0]
        else:
            fmt, n = _LENGTH[kind]
            size = struct.unpack(fmt, take(n))[0]
            if size < 0:
                raise ValueError("negative length in pickle")
            if kind in ("long1", "long4") and size > limits.max_int_bytes:
                raise LimitExceeded(f"an integer of {size} bytes (max_int_bytes={limits.max_int_bytes})")
            raw = take(size)
            if kind in ("long1", "long4"):
                arg = int.from_bytes(raw, "little", signed=True)
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
                arg = raw.decode("utf-8", "surrogatepass")
            elif name in ("BINSTRING", "SHORT_BINSTRING"):
                arg = raw.decode("latin-1")
            else:
                arg = raw
        yield name, arg
        if name == "STOP":
            return


def text(value: str) -> str:
    """Python 2 ``str`` opcodes, decoded the way ``pickle.loads(..., encoding="utf-8")`` would."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


class _Ledger:
    """What one load built: each value's expanded size and depth, which objects it created
    (``fresh``: may be given state) and which are already inside another value (``sealed``: never
    changed again). Tracked values are kept alive, so an ``id`` is never reused during the load."""

    def __init__(self, limits: UnpickleLimits) -> None:
        self.limits = limits
        self.sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded size, depth)
        self.keep: list[Any] = []
        self.fresh: set[int] = set()
        self.sealed: set[int] = set()

    def measure(self, x: Any) -> tuple[int, int]:
        hit = self.sizes.get(id(x))
        if hit is not None:
            return hit
        if isinstance(x, (str, bytes)):
            return 1 + len(x), 0
        return 1, 0

    def _check(self, size: int, depth: int, what: str) -> None:
        lim = self.limits
        if depth > lim.max_depth:
            raise LimitExceeded(f"{what} nests {depth} deep (max_depth={lim.max_depth})")
        if size > lim.max_size:
            raise LimitExceeded(f"{what} expands to more than {lim.max_size} objects and characters, counting "
                                f"shared references (max_size={lim.max_size})")

    def _children(self, children: Any, what: str) -> tuple[int, int]:
        size, depth = 0, 0
        for c in children:
            s, d = self.measure(c)
            size, depth = size + s, max(depth, d)
            if id(c) in self.fresh:
                self.sealed.add(id(c))
        if size > self.limits.max_size:  # checked as it grows: the sum itself stays small
            self._check(size, 0, what)
        return size, depth

    def new(self, obj: Any, children: Any, what: str, fresh: bool) -> Any:
        """Register ``obj``, built from ``children`` (which become sealed)."""
        if len(children) > self.limits.max_items:
            raise LimitExceeded(f"{what} of {len(children)} items (max_items={self.limits.max_items})")
        size, depth = self._children(children, what)
        size, depth = size + 1, depth + 1
        self._check(size, depth, what)
        if id(obj) not in self.sizes:
            self.sizes[id(obj)] = (size, depth)
            self.keep.append(obj)
            if fresh:
                self.fresh.add(id(obj))
        return obj

    def grow(self, target: Any, children: Any, what: str, count: int | None = None) -> None:
        """Check that ``target`` may receive ``children`` (``APPEND``, ``SETITEM``, ``BUILD`` ...) and
        account for them; ``count`` is how many items that adds (default: one per child)."""
        if id(target) not in self.fresh:
            raise Forbidden(f"{what} on {_describe(target)}, which this pickle did not create")
        if id(target) in self.sealed or any(c is target for c in children):
            raise Forbidden(f"{what} on a value already placed inside another value")
        count = len(children) if count is None else count
        if hasattr(target, "__len__") and len(target) + count > self.limits.max_items:
            raise LimitExceeded(f"{what}: more than {self.limits.max_items} items in one container "
                                f"(max_items={self.limits.max_items})")
        size, depth = self.measure(target)
        add, add_depth = self._children(children, what)
        size, depth = size + add, max(depth, add_depth + 1)
        self._check(size, depth, what)
        self.sizes[id(target)] = (size, depth)


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"class {getattr(obj, 'pickled_name', obj.__name__)}"
    if callable(obj):
        return f"function {getattr(obj, '__name__', '?')}"
    return f"a {type(obj).__name__}"


def interpret(data: bytes, find_class: Callable[[str, str], Any], build: Callable[[Any, Any], None],
              limits: UnpickleLimits = DEFAULT_LIMITS) -> Any:
    """Evaluate a pickle with no ``pickle`` module, within ``limits``.

    ``find_class(module, name)`` resolves every global (raising :class:`Refused` for anything not
    allowed); ``build(obj, state)`` applies a ``BUILD`` to an object this load created.

    Raises
    ------
    Refused, Forbidden, LimitExceeded
        As described on those classes.
    ValueError, KeyError, IndexError, TypeError, ...
        The pickle is malformed (the caller reports it as corrupt).
    """
    ledger = _Ledger(limits)
    foreign: set[int] = set()  # ids of objects from find_class (module-level, never freed): never fresh
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def created(obj: Any, children: Any, what: str) -> Any:
        return ledger.new(obj, children, what, fresh=id(obj) not in foreign)

    def remember(key: int, value: Any) -> None:
        if key not in memo and len(memo) >= limits.max_memo:
            raise LimitExceeded(f"more than {limits.max_memo} memo entries (max_memo={limits.max_memo})")
        memo[key] = value

    ops = 0
    for name, arg in genops(data, limits):
        ops += 1
        if ops > limits.max_ops:
            raise LimitExceeded(f"more than {limits.max_ops} opcodes (max_ops={limits.max_ops})")
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise ValueError("pickle ends with a malformed stack")
            return stack[0]
        if name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in _VALUES:
            stack.append(arg)
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            stack.append(text(arg))
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            remember(arg, stack[-1])
        elif name == "MEMOIZE":
            remember(len(memo), stack[-1])
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
            stack.append(ledger.new({"EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_SET": set}[name](), (),
                                    "a container", fresh=True))
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "LIST":
            items = pop_mark()
            stack.append(ledger.new(list(items), items, "a list", fresh=True))
        elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            if name == "TUPLE":
                items = pop_mark()
            else:
                n = int(name[-1])
                if len(stack) < n:
                    raise ValueError(f"{name} on a stack of {len(stack)} items")
                items = stack[-n:]
                del stack[-n:]
            stack.append(ledger.new(tuple(items), items, "a tuple", fresh=False))
        elif name == "DICT":
            items = pop_mark()
            stack.append(ledger.new(dict(zip(items[::2], items[1::2])), items, "a dict", fresh=True))
        elif name == "FROZENSET":
            items = pop_mark()
            stack.append(ledger.new(frozenset(items), items, "a frozenset", fresh=False))
        elif name in ("APPEND", "APPENDS"):
            items = [stack.pop()] if name == "APPEND" else pop_mark()
            target = stack[-1]
            if type(target) is not list:
                raise TypeError(f"{name} on a {type(target).__name__}")
            ledger.grow(target, items, name)
            target.extend(items)
        elif name == "ADDITEMS":
            items = pop_mark()
            target = stack[-1]
            if type(target) is not set:
                raise TypeError(f"ADDITEMS on a {type(target).__name__}")
            ledger.grow(target, items, name)
            target.update(items)
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                items = [key, value]
            else:
                items = pop_mark()
            target = stack[-1]
            if not isinstance(target, dict):
                raise TypeError(f"{name} on a {type(target).__name__}")
            ledger.grow(target, items, name, count=len(items) // 2)
            for k, v in zip(items[::2], items[1::2]):
                target[k] = v
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = arg.partition(" ")
            else:
                attr, module = stack.pop(), stack.pop()
                if not isinstance(module, str) or not isinstance(attr, str):
                    raise Refused("a global named by non-strings")
            obj = find_class(module, attr)
            foreign.add(id(obj))
            stack.append(obj)
        elif name == "REDUCE":
            args = stack.pop()
            func = stack.pop()
            if type(args) is not tuple:
                raise TypeError("REDUCE arguments are not a tuple")
            stack.append(created(func(*args), [func, args], "a reduced object"))
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            kwargs = stack.pop() if name == "NEWOBJ_EX" else {}
            args = stack.pop()
            cls = stack.pop()
            if not isinstance(cls, type) or type(args) is not tuple or type(kwargs) is not dict:
                raise TypeError(f"{name} needs a class, a tuple and a dict")
            stack.append(created(cls.__new__(cls, *args, **kwargs), [cls, args, kwargs], "an object"))
        elif name in ("INST", "OBJ"):
            items = pop_mark()
            if name == "INST":
                module, _, attr = arg.partition(" ")
                cls = find_class(module, attr)
                foreign.add(id(cls))
            else:
                cls, items = items[0], items[1:]
            obj = cls(*items) if items or not isinstance(cls, type) else cls.__new__(cls)
            stack.append(created(obj, [cls, *items], "an object"))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            ledger.grow(target, [state], "BUILD (setting state)")
            build(target, state)
        else:  # PERSID, BINPERSID, EXT1/2/4, BYTEARRAY8, NEXT_BUFFER, READONLY_BUFFER, ...
            raise Refused(f"pickle opcode {name}")
    raise ValueError("pickle has no STOP opcode")
