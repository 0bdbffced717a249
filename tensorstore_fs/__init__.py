"""tensorstore_fs: tensor datasets as sharded Parquet, for PyTorch, tf.data and distributed training.

>>> import tensorstore_fs as tsfs
>>> schema = tsfs.Schema([tsfs.Field("image", "uint8", (3, 64, 64)), tsfs.Field("label", "int32")])
>>> ds = tsfs.write_dataset("/tmp/ds", {"image": images, "label": labels}, schema)  # doctest: +SKIP
>>> for batch in tsfs.open_dataset("/tmp/ds").to_batches(columns=["label"]):    # doctest: +SKIP
...     ...

Heavy frameworks (torch, tensorflow, h5py, pyspark) are imported only by the modules that need
them (``tensorstore_fs.readers.*``, ``tensorstore_fs.converters``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .columns import infer_schema
from .read.dataset import Dataset, open_dataset
from .errors import (
    CommitConflictError,
    CorruptDatasetError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidArgumentError,
    SchemaError,
    StorageError,
    TensorstoreError,
    UnsafeCommitError,
    UnsupportedFormatError,
)
from .predicates import (
    Predicate,
    in_lambda,
    in_negate,
    in_pseudorandom_split,
    in_range,
    in_reduce,
    in_set,
)
from .ragged import RaggedRows
from .schema import Field, Schema
from .writer import DatasetWriter, write_dataset

__all__ = [
    "__version__",
    "Field",
    "Schema",
    "infer_schema",
    "write_dataset",
    "DatasetWriter",
    "open_dataset",
    "Dataset",
    "RaggedRows",
    "Predicate",
    "in_set",
    "in_range",
    "in_lambda",
    "in_negate",
    "in_reduce",
    "in_pseudorandom_split",
    "TensorstoreError",
    "SchemaError",
    "InvalidArgumentError",
    "DatasetNotFoundError",
    "DatasetExistsError",
    "CorruptDatasetError",
    "UnsupportedFormatError",
    "CommitConflictError",
    "StorageError",
    "UnsafeCommitError",
]
