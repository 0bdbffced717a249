"""Cold reads: evict files' pages from the page cache, and check that they are gone.

* :func:`evict`     ``madvise(MADV_DONTNEED)`` on this process's own maps of the files (a reader
                    that keeps a file mapped between epochs would otherwise keep its pages: mapped
                    pages are never evicted; the next touch reads them from disk again), ``sync``,
                    ``echo 3 > /proc/sys/vm/drop_caches`` where allowed (root), and
                    ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file in any case (the only
                    way without root). Pages that another live process maps stay resident.
* :func:`resident`  how many bytes of the files are in the page cache now: ``mincore(2)`` (through
                    ctypes) on a fresh read-only map of each file, which reads nothing.

Standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from typing import Iterable

PAGE = mmap.PAGESIZE
DROP_CACHES = "/proc/sys/vm/drop_caches"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_libc.mincore.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value
MADV_DONTNEED = 4


def files_of(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Every regular file at or below ``paths``."""
    out: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            for d, _, names in os.walk(p):
                out += [os.path.join(d, n) for n in sorted(names)]
        elif os.path.isfile(p):
            out.append(p)
    return out


def resident(paths: Iterable[str | os.PathLike]) -> tuple[int, int]:
    """(bytes of ``paths`` in the page cache, their total size), from ``mincore``."""
    res = total = 0
    for p in files_of(paths):
        size = os.path.getsize(p)
        total += size
        if size == 0:
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, _MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"mmap {p}")
            try:
                pages = (size + PAGE - 1) // PAGE
                vec = (ctypes.c_ubyte * pages)()
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {p}")
                n = sum(b & 1 for b in bytes(vec))
                res += min(size, n * PAGE)
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
    return res, total


def release_maps(paths: Iterable[str | os.PathLike]) -> int:
    """``madvise(MADV_DONTNEED)`` on every map of ``paths`` in this process (``/proc/self/maps``):
    their pages leave this process's page tables, so the page cache can drop them; file-backed,
    read-only maps read them back from the file on the next touch. Returns the bytes released."""
    want = {os.path.realpath(p) for p in files_of(paths)}
    released = 0
    with open("/proc/self/maps") as fh:
        lines = fh.readlines()
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or os.path.realpath(parts[5].strip()) not in want:
            continue
        if "w" in parts[1]:
            continue  # never drop a writable map's pages (private writes would be lost)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if _libc.madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            released += hi - lo
    return released


def can_drop_caches() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def evict(paths: Iterable[str | os.PathLike], method: str = "auto") -> str:
    """Evict the pages of ``paths`` from the page cache; returns what was done.

    ``method``: ``"auto"`` (drop_caches where allowed, plus fadvise), ``"drop_caches"`` (fail where
    not allowed), ``"fadvise"`` (only the files' own pages)."""
    files = files_of(paths)
    done = []
    if release_maps(files):
        done.append("madvise(DONTNEED) on own maps")
    os.sync()
    if method in ("auto", "drop_caches"):
        try:
            with open(DROP_CACHES, "w") as fh:
                fh.write("3\n")
            done.append("drop_caches=3")
        except OSError as e:
            if method == "drop_caches":
                raise
            done.append(f"no drop_caches ({e.strerror})")
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    done.append("fadvise(DONTNEED)")
    return " + ".join(done)
