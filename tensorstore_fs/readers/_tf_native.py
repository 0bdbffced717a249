"""The tf.data adapter's native row gather (``_tf_gather.cc``), built on first use.

Fixed-shape tensor columns of local shards are plain runs of bytes in the files
(:mod:`tensorstore_fs.parquet.pages`). With this kernel the adapter's Python side only says where a
batch's rows are; TensorFlow's own threads copy them out of kept read-only maps into recycled
output memory — no Python call, no GIL and no fresh-page faults per batch (figures: ``benchmarks/results/tf.md``).

The kernel is compiled once per TensorFlow build and source against the installed TensorFlow's
headers (``tf.sysconfig``; seconds with g++) into ``$TSFS_CACHE_DIR`` (default
``~/.cache/tensorstore_fs``), where later processes load it. Without a C++ compiler, or with
``TSFS_TF_NATIVE=0``, the adapter reads through Python as before (same rows, slower); the
compiler is ``$CXX`` or ``c++``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["load", "unavailable_reason", "zero_copy"]

SOURCE = Path(__file__).with_name("_tf_gather.cc")
ENV_SWITCH = "TSFS_TF_NATIVE"
ZERO_COPY_SWITCH = "TSFS_TF_ZERO_COPY"
_lock = threading.Lock()
_state: dict[str, Any] = {}


def _cache_dir() -> Path:
    env = os.environ.get("TSFS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tensorstore_fs"


def _off(variable: str) -> bool:
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def zero_copy() -> bool:
    """Whether the gather hands out aligned sequential rows as the mapped file bytes (read-only
    memory) instead of copying them; ``TSFS_TF_ZERO_COPY=0`` turns it off."""
    return not _off(ZERO_COPY_SWITCH)


def _build(tf: Any) -> tuple[Any | None, str]:
    """``(op module, "")`` or ``(None, why not)``."""
    if _off(ENV_SWITCH):
        return None, f"disabled by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    cxx = os.environ.get("CXX") or "c++"
    compile_flags, link_flags = list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, tf.__version__.encode(), tf.sysconfig.get_lib().encode(),
                                     " ".join(compile_flags + link_flags).encode()])).hexdigest()[:20]
    target = _cache_dir() / f"tsfs_tf_gather-{key}.so"
    if not target.exists():
        if shutil.which(cxx) is None:
            return None, f"no C++ compiler ({cxx!r} is not on PATH; set CXX)"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".so.tmp")
        except OSError as exc:
            return None, f"cannot write the build to {target.parent} ({exc}); set TSFS_CACHE_DIR"
        os.close(fd)
        cmd = [cxx, "-shared", "-fPIC", "-O2", "-w", str(SOURCE), "-o", tmp, *compile_flags, *link_flags]
        logger.info("building the tf.data row gather: %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            os.unlink(tmp)
            return None, f"compiling {SOURCE.name} failed: {exc}"
        if done.returncode != 0:
            os.unlink(tmp)
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            return None, f"compiling {SOURCE.name} failed ({cxx} exit {done.returncode}): {tail}"
        os.replace(tmp, target)  # atomic: processes building at once each install a whole file
    try:
        return tf.load_op_library(str(target)), ""
    except Exception as exc:  # noqa: BLE001 - any load failure means: read through Python
        return None, f"loading {target} failed: {exc}"


def load() -> Any | None:
    """The loaded op module (``tsfs_gather_rows``), building it if needed; None when it cannot be
    had (the reason is logged once as a warning and kept for :func:`unavailable_reason`)."""
    with _lock:
        if "module" not in _state:
            import tensorflow as tf

            module, why = _build(tf)
            _state["module"], _state["why"] = module, why
            if module is None and not why.startswith("disabled"):
                logger.warning("tf.data adapter: native row gather unavailable, reading through Python "
                               "(same batches, slower): %s", why)
        return _state["module"]


def unavailable_reason() -> str:
    """Why :func:`load` returned None ("" when it did not, or was not called)."""
    return str(_state.get("why", ""))
