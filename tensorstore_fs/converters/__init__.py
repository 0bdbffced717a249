"""Converters between tensorstore_fs datasets and other formats.

* HDF5 (:func:`to_hdf5`, :func:`from_hdf5`) — needs ``h5py`` (``pip install tensorstore_fs[hdf5]``).
* TFRecord (:func:`to_tfrecord`, :func:`from_tfrecord`) — ``tf.train.Example`` records written and
  read without TensorFlow (``pip install tensorstore_fs[tfrecord]``).
* Petastorm (:func:`from_petastorm`) — imports Petastorm datasets without importing petastorm and
  without unpickling arbitrary objects.

Each submodule is imported on first use, so ``import tensorstore_fs.converters`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "to_hdf5": "hdf5",
    "from_hdf5": "hdf5",
    "to_tfrecord": "tfrecord",
    "from_tfrecord": "tfrecord",
    "from_petastorm": "petastorm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
