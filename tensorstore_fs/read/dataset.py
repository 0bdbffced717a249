"""Opening a committed dataset version and reading it."""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Sequence

import pyarrow as pa

from .._checks import check_int
from .._crc import crc32c_extend
from ..encoding import arrow_schema, decode_column, storage_columns, to_arrow_tensor
from ..errors import CorruptDatasetError
from ..manifest import Manifest, ShardInfo, latest_version, load_manifest, manifest_path
from ..predicates import Predicate
from ..schema import Schema
from ..storage import Storage
from .options import ReadOptions, resolve_columns, variable_mode
from .prune import RowGroupRef, all_row_groups
from .scan import Scanner

__all__ = ["Dataset", "open_dataset"]

logger = logging.getLogger(__name__)


class Dataset:
    """One committed version of a dataset. Cheap to create and to pickle (holds the manifest).

    Use :func:`open_dataset` to get one.
    """

    def __init__(self, storage: Storage, manifest: Manifest) -> None:
        self.storage = storage
        self.manifest = manifest
        self._storage_schema: pa.Schema | None = None

    @property
    def storage_schema(self) -> pa.Schema:
        """The Arrow schema of this version's shard files (built once, the manifest is immutable)."""
        if self._storage_schema is None:
            self._storage_schema = arrow_schema(self.schema)
        return self._storage_schema

    def __repr__(self) -> str:
        return (f"Dataset({self.storage.url!r}, version={self.version}, rows={len(self)}, "
                f"shards={len(self.shards)}, fields={self.schema.names})")

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def schema(self) -> Schema:
        return self.manifest.schema

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def parent_version(self) -> int | None:
        return self.manifest.parent_version

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    @property
    def files(self) -> list[str]:
        """Full paths of the committed shard files of this version."""
        return [self.storage.path(s.path) for s in self.shards]

    @property
    def num_rows(self) -> int:
        return self.manifest.rows

    @property
    def nbytes(self) -> int:
        """Bytes of the shard files of this version."""
        return self.manifest.bytes

    def __len__(self) -> int:
        return self.manifest.rows

    @property
    def row_groups(self) -> list[RowGroupRef]:
        return all_row_groups(self.manifest)

    def versions(self) -> list[int]:
        """Every committed version number of this dataset (probes manifests, newest last)."""
        latest = latest_version(self.storage) or self.version
        return [v for v in range(1, latest + 1) if self.storage.exists(manifest_path(v))]

    def vacuum(self, retain_versions: int | None = None, older_than: Any = None, *, dry_run: bool = False) -> Any:
        """Delete the files of this dataset (all versions, not only this one) that no retained
        version needs: orphans of killed writers, temporary files, and with ``retain_versions``
        the manifests and shards of older versions (:func:`tensorstore_fs.vacuum.vacuum`, which
        documents the arguments; ``older_than`` defaults to 1 hour). Returns a
        :class:`~tensorstore_fs.vacuum.VacuumReport`."""
        from ..vacuum import DEFAULT_OLDER_THAN_S, vacuum

        return vacuum(self.storage, retain_versions,
                      DEFAULT_OLDER_THAN_S if older_than is None else older_than, dry_run=dry_run)

    # -- reading -----------------------------------------------------------------------------------
    def scanner(
        self,
        columns: Sequence[str] | None = None,
        filter: Any = None,
        predicate: Predicate | None = None,
        batch_size: int = 1024,
        *,
        variable: str | None = None,
        drop_last: bool = False,
        pad_variable: bool | None = None,
        flat_variable: bool | None = None,
        readahead_bytes: int | None = None,
        max_padded_bytes: int | None = None,
    ) -> Scanner:
        """A :class:`~tensorstore_fs.read.scan.Scanner`: iterate it for batches, read ``.stats``
        after. Arguments as in :meth:`to_batches`."""
        options = ReadOptions(columns, filter, predicate, batch_size, drop_last=drop_last,
                              variable=variable_mode(variable, pad_variable, flat_variable),
                              readahead_bytes=readahead_bytes, max_padded_bytes=max_padded_bytes)
        return Scanner(self.storage, self.manifest, options, storage_schema=self.storage_schema)

    def to_batches(
        self,
        columns: Sequence[str] | None = None,
        filter: Any = None,
        predicate: Predicate | None = None,
        batch_size: int = 1024,
        *,
        variable: str | None = None,
        drop_last: bool = False,
        pad_variable: bool | None = None,
        flat_variable: bool | None = None,
        readahead_bytes: int | None = None,
        max_padded_bytes: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield batches as dicts of numpy arrays, in storage order.

        Parameters
        ----------
        columns : list of str, optional
            Fields to read (all by default). Only these columns' bytes are read.
        filter : pyarrow.compute.Expression, optional
            On scalar fields, e.g. ``(pc.field("label") == 3) & (pc.field("id") < 1000)``. Row
            groups whose manifest statistics rule it out are skipped without opening their files;
            the remaining rows are filtered exactly.
        predicate : Predicate, optional
            ``in_set``, ``in_range``, ``in_lambda``, ``in_negate``, ``in_reduce``,
            ``in_pseudorandom_split``: evaluated vectorised on each row group.
        batch_size : int
            Rows per batch (the last batch may be shorter unless ``drop_last``).
        variable : {"list", "pad", "flat"}
            Variable-shape fields as a list of arrays (default); ``"pad"``: one zero-padded array
            plus ``<name>__shape`` (n, ndim) holding each row's shape; ``"flat"``: one
            :class:`~tensorstore_fs.ragged.RaggedRows` per batch, the rows' values back to back
            plus offsets and shapes, with no object per row.
        drop_last : bool
            Drop a final batch shorter than ``batch_size``.
        pad_variable, flat_variable : bool, optional
            Deprecated spellings of ``variable="pad"`` / ``variable="flat"``.
        readahead_bytes : int, optional
            Bytes read ahead of the consumer (the next row groups' column chunks: fetched from an
            object store, asked of the page cache on a local disk); 0 turns it off. Default
            ``$TSFS_READAHEAD_BYTES``, else 256 MiB (:mod:`tensorstore_fs.read.readahead`).
        max_padded_bytes : int, optional
            ``variable="pad"``: the most bytes a batch's padded field may take (each batch is padded
            to its own widest extents; past the cap: :class:`~tensorstore_fs.InvalidArgumentError`).
            Default: the larger of 1 GiB and 16 times the batch's rows' own bytes.

        Yields
        ------
        dict
            Fixed-shape fields as ``(n, *shape)`` arrays decoded zero-copy (read-only views);
            scalars as ``(n,)`` arrays; strings/bytes as object arrays; nullable numeric fields as
            ``numpy.ma.MaskedArray``.
        """
        variable = variable_mode(variable, pad_variable, flat_variable)
        return iter(self.scanner(columns, filter, predicate, batch_size, variable=variable, drop_last=drop_last,
                                 readahead_bytes=readahead_bytes, max_padded_bytes=max_padded_bytes))

    def to_table(
        self,
        columns: Sequence[str] | None = None,
        filter: Any = None,
        predicate: Predicate | None = None,
    ) -> pa.Table:
        """Read into one pyarrow Table.

        Fixed-shape tensor fields become ``arrow.fixed_shape_tensor`` columns (zero-copy
        reinterpretation of the stored bytes; bool tensors are unpacked). Variable-shape fields
        keep the storage layout: ``large_binary`` payload plus the ``__shape__<name>`` column.
        """
        scanner = Scanner(self.storage, self.manifest, ReadOptions(columns, filter, predicate, 1 << 62),
                          storage_schema=self.storage_schema)
        names = storage_columns(self.schema, scanner.columns)
        tables = list(scanner.row_group_tables())
        storage_schema = self.storage_schema
        table = pa.concat_tables(tables) if tables else storage_schema.empty_table().select(names)
        arrays = []
        fields = []
        for name in names:
            col = table.column(name)
            if name in self.schema and self.schema[name].is_fixed_tensor:
                f = self.schema[name]
                chunks = [to_arrow_tensor(c, f) for c in col.chunks] or [to_arrow_tensor(pa.array([], type=col.type), f)]
                col = pa.chunked_array(chunks)
            arrays.append(col)
            fields.append(pa.field(name, col.type, nullable=storage_schema.field(name).nullable))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=storage_schema.metadata))

    def head(self, n: int = 5, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """The first ``n`` rows as one batch (fewer when the dataset has fewer).

        Parameters
        ----------
        n : int
            Rows to return, >= 0; ``head(0)`` is an empty batch with every column's dtype and shape.
        columns : list of str, optional
            Fields to read (all by default).

        Raises
        ------
        InvalidArgumentError
            ``n`` is not a non-negative int, or a column is unknown.
        """
        n = check_int("n", n, 0)
        names = resolve_columns(self.schema, columns)
        if n:
            scanner = Scanner(self.storage, self.manifest, ReadOptions(names, batch_size=n),
                              storage_schema=self.storage_schema, rows_hint=n)
            for batch in scanner:
                return batch
        empty = self.storage_schema.empty_table()
        out: dict[str, Any] = {}
        for name in names:
            out.update(decode_column(empty, self.schema.field(name)))
        return out

    def verify(self) -> None:
        """Check every shard file against the size and CRC32C recorded in the manifest.

        Raises
        ------
        CorruptDatasetError
            Naming the first file whose size or checksum differs.
        """
        for s in self.shards:
            crc, size = 0, 0
            with self.storage.open_stream(s.path) as fh:
                while True:
                    chunk = fh.read(8 << 20)
                    if not chunk:
                        break
                    crc = crc32c_extend(crc, chunk)
                    size += len(chunk)
            if size != s.bytes or crc != s.crc32c:
                raise CorruptDatasetError(
                    f"{self.storage.url}/{s.path}: size {size} crc32c {crc:08x}, manifest records "
                    f"size {s.bytes} crc32c {s.crc32c:08x}"
                )


def open_dataset(url: str, version: int | None = None, storage_options: Mapping[str, Any] | None = None, *,
                 cache_dir: str | None = None) -> Dataset:
    """Open a committed dataset version by reading its manifest only.

    Parameters
    ----------
    url : str
        Dataset root (local path, ``file://``, ``memory://``, ``s3://``, ...).
    version : int, optional
        Pin a version; the newest by default.
    storage_options : mapping, optional
        fsspec filesystem options (credentials, endpoint, ...).
    cache_dir : str, optional
        For a remote dataset, keep its shard files in this node-local cache, shared by every
        process of the machine (:mod:`tensorstore_fs.cache`); default ``$TSFS_CACHE_DIR/shards``
        when that variable is set, else none. Readers given this dataset (``TorchDataset(ds)``,
        DataLoader workers) use the same cache.

    Raises
    ------
    DatasetNotFoundError
        ``url`` holds no dataset, or not that version.
    CorruptDatasetError
        The manifest is truncated, tampered with or malformed.
    UnsupportedFormatError
        The manifest was written by a newer format version.
    """
    if isinstance(url, Dataset):
        return url if version in (None, url.version) else open_dataset(url.url, version, url.storage.storage_options,
                                                                       cache_dir=url.storage.cache_dir)
    storage = Storage(url, storage_options, cache_dir=cache_dir)
    return Dataset(storage, load_manifest(storage, version))

