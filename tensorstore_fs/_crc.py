"""CRC32C (Castagnoli) checksums, used for shard files and manifests.

Uses the ``crc32c`` package when installed (every extra of this package installs it; about
the fastest measured here, and it releases the GIL so a checksum thread overlaps Parquet encoding), else
``google-crc32c``, else a slow table-driven fallback so that a bare install still works.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["crc32c", "crc32c_extend", "IMPLEMENTATION"]

logger = logging.getLogger(__name__)

try:  # pragma: no branch - which one is installed depends on the environment
    import crc32c as _c  # hardware CRC32C that releases the GIL (lets checksums overlap encoding)

    def crc32c_extend(crc: int, data: bytes | memoryview) -> int:
        return _c.crc32c(data, crc)

    IMPLEMENTATION = "crc32c"
except ImportError:  # pragma: no cover
    try:
        import google_crc32c as _g

        def crc32c_extend(crc: int, data: bytes | memoryview) -> int:
            if isinstance(data, memoryview):  # the C extension takes buffers, not memoryview objects
                data = np.frombuffer(data, dtype=np.uint8)
            return _g.extend(crc, data)

        IMPLEMENTATION = "google-crc32c"
    except ImportError:
        _TABLE = []
        for _i in range(256):
            _v = _i
            for _ in range(8):
                _v = (_v >> 1) ^ 0x82F63B78 if _v & 1 else _v >> 1
            _TABLE.append(_v)
        _warned = False

        def crc32c_extend(crc: int, data: bytes | memoryview) -> int:
            global _warned
            if not _warned:
                logger.warning("no CRC32C extension is installed: checksums use a slow pure-Python "
                               "fallback; pip install crc32c")
                _warned = True
            crc ^= 0xFFFFFFFF
            table = _TABLE
            for b in bytes(data):
                crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
            return crc ^ 0xFFFFFFFF

        IMPLEMENTATION = "python"


def crc32c(data: bytes | memoryview) -> int:
    """CRC32C of ``data``."""
    return crc32c_extend(0, data)
