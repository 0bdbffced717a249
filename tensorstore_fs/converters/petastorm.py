"""Import Petastorm datasets, without petastorm and without unsafe unpickling.

>>> from tensorstore_fs.converters import from_petastorm
>>> ds = from_petastorm("/data/petastorm_ds", "/data/tsfs_ds")  # doctest: +SKIP

The Unischema pickled in ``_common_metadata`` is read by the restricted unpickler of
:mod:`._petastorm_schema` (local stand-ins for an allow-list of classes; nothing is executed; bounded
opcodes, memo, container sizes, depth and expanded size; state only on objects it created).
``_common_metadata`` itself is refused above 64 MiB.
Part files are then read with pyarrow, file by file and batch by batch within each row group, and
every cell is decoded as Petastorm's own ``make_reader`` would decode it:

* ``ScalarCodec`` / no codec: the native Parquet value, cast to the field's numpy type
  (``Decimal`` values become their exact decimal strings);
* ``NdarrayCodec``: ``np.save`` bytes, parsed here (one header parse and one reshape for a whole
  batch of same-shaped cells; ``allow_pickle`` is never involved: object arrays are refused);
* ``CompressedNdarrayCodec``: ``np.savez_compressed`` bytes, unzipped and parsed the same way;
* ``CompressedImageCodec``: PNG/JPEG bytes decoded with Pillow into RGB (Petastorm decodes with
  OpenCV and swaps BGR back to RGB: the values are the same).

See ``docs/petastorm.md`` for what is supported and how to migrate.
"""

from __future__ import annotations

import io
import logging
import zipfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._checks import check_int
from .._progress import progress_bar
from ..read.dataset import Dataset, open_dataset
from ..errors import CorruptDatasetError, DatasetNotFoundError, UnsupportedFormatError
from ..storage import Storage
from ..writer import DatasetWriter
from ._petastorm_schema import UNISCHEMA_KEY, PetastormField, PetastormSchema, parse_unischema

__all__ = ["from_petastorm", "read_petastorm_schema", "PetastormField", "PetastormSchema"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 1024
_NPY_MAGIC = b"\x93NUMPY"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAX_VARIABLE_CELL_BYTES = 1 << 31  # bound on an unzipped CompressedNdarrayCodec cell of variable shape
_HEADER_CACHE_SIZE = 4096
MAX_COMMON_METADATA_BYTES = 64 << 20  # a real one is a few KiB; the pickle in it has its own limits


class _CellError(Exception):
    """A cell failed to decode; the caller adds file, row and field."""


# -------------------------------------------------------------------------------------------
# Schema
# -------------------------------------------------------------------------------------------

def _unischema_bytes(src: Storage) -> bytes:
    if not src.exists("_common_metadata"):
        if not src.fs.exists(src.root):
            raise DatasetNotFoundError(f"{src.url}: no such Petastorm dataset (the path does not exist)")
        raise DatasetNotFoundError(
            f"{src.url} is not a Petastorm dataset: it has no _common_metadata file (Petastorm's "
            "materialize_dataset writes it; petastorm-generate-metadata.py adds it to an existing dataset)")
    with src._op("reading the size of", "_common_metadata"):
        size = src.fs.size(src.path("_common_metadata"))
    if size is not None and size > MAX_COMMON_METADATA_BYTES:
        raise CorruptDatasetError(
            f"{src.url}/_common_metadata is {size} bytes, more than the {MAX_COMMON_METADATA_BYTES} a Petastorm "
            "metadata file needs (it holds a Parquet schema and a pickled Unischema); refusing to read it")
    raw = src.read_bytes("_common_metadata")
    try:
        meta = pq.read_metadata(pa.BufferReader(raw)).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise CorruptDatasetError(f"{src.url}/_common_metadata is not a Parquet metadata file: {e}") from None
    if UNISCHEMA_KEY not in meta:
        raise UnsupportedFormatError(
            f"{src.url} is not a Petastorm dataset: _common_metadata holds no Unischema "
            f"(key {UNISCHEMA_KEY.decode()}); plain Parquet can be read with pyarrow directly")
    return meta[UNISCHEMA_KEY]


def read_petastorm_schema(url: str, storage_options: Mapping[str, Any] | None = None) -> PetastormSchema:
    """Read the Unischema of the Petastorm dataset at ``url``, without running any of its code.

    Parameters
    ----------
    url : str
        Root directory of the Petastorm dataset (local path or fsspec URL).
    storage_options : mapping, optional
        fsspec options for ``url``.

    Returns
    -------
    PetastormSchema
        Its fields (codec, numpy type, shape, nullability); ``.to_schema()`` gives the
        tensorstore_fs schema an import would write.

    Raises
    ------
    DatasetNotFoundError
        ``url`` does not exist or has no ``_common_metadata``.
    UnsupportedFormatError
        No Unischema in ``_common_metadata``, or the pickle names a class outside the allow-list.
    CorruptDatasetError
        The metadata or the pickle is malformed.
    """
    src = Storage(url, storage_options)
    return parse_unischema(_unischema_bytes(src), f"{src.url}/_common_metadata")


# -------------------------------------------------------------------------------------------
# Cell decoders
# -------------------------------------------------------------------------------------------

def _npy_header(cell: np.ndarray, cache: dict[bytes, tuple]) -> tuple[int, np.dtype, tuple[int, ...], bool]:
    """``(prefix length, dtype, shape, fortran_order)`` of one ``np.save`` cell."""
    if bytes(cell[:6]) != _NPY_MAGIC or len(cell) < 10:
        raise _CellError("not an np.save (.npy) cell: bad magic bytes")
    major = cell[6]
    if major == 1:
        prefix = 10 + int.from_bytes(bytes(cell[8:10]), "little")
    elif major == 2:
        prefix = 12 + int.from_bytes(bytes(cell[8:12]), "little")
    else:
        raise _CellError(f".npy format version {major}.{cell[7]} is not supported")
    if len(cell) < prefix:
        raise _CellError(f"truncated .npy header ({len(cell)} bytes, header needs {prefix})")
    key = bytes(cell[:prefix])
    hit = cache.get(key)
    if hit is None:
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        try:
            shape, fortran, dtype = reader(io.BytesIO(key[8:]))
        except (ValueError, SyntaxError) as e:
            raise _CellError(f"invalid .npy header: {e}") from None
        if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
            raise _CellError(f".npy cell holds dtype {dtype}; only plain numeric arrays are accepted")
        if len(cache) >= _HEADER_CACHE_SIZE:
            cache.clear()
        hit = cache[key] = (prefix, dtype, tuple(shape), bool(fortran))
    return hit


def _decode_npy(cell: np.ndarray, cache: dict[bytes, tuple]) -> np.ndarray:
    prefix, dtype, shape, fortran = _npy_header(cell, cache)
    count = int(np.prod(shape, dtype=np.int64))
    need = prefix + count * dtype.itemsize
    if len(cell) != need:
        raise _CellError(f".npy cell of {dtype} {shape} needs {need} bytes, it holds {len(cell)}")
    flat = np.frombuffer(cell, dtype=dtype, count=count, offset=prefix)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _decode_npz(cell: np.ndarray, limit: int, cache: dict[bytes, tuple]) -> np.ndarray:
    try:
        with zipfile.ZipFile(io.BytesIO(cell)) as zf:
            infos = zf.infolist()
            if [i.filename for i in infos] != ["arr.npy"]:
                raise _CellError(f"np.savez cell holds {[i.filename for i in infos]}, expected ['arr.npy']")
            if infos[0].file_size > limit:
                raise _CellError(f"compressed array unpacks to {infos[0].file_size} bytes, more than its shape allows")
            raw = zf.read("arr.npy")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
        raise _CellError(f"not a valid np.savez_compressed cell: {e}") from None
    return _decode_npy(np.frombuffer(raw, dtype=np.uint8), cache)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "decoding Petastorm CompressedImageCodec fields needs Pillow: pip install 'tensorstore_fs[image]' "
            "(or leave the image fields out with columns=[...])") from e
    return Image


_IMAGE_MODES = {"L": np.uint8, "RGB": np.uint8, "I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16}


def _decode_image(cell: np.ndarray, fmt: str | None, image_mod: Any) -> np.ndarray:
    data = bytes(cell)
    if data[:8] == _PNG_MAGIC and len(data) > 25 and data[24] == 16 and data[25] in (2, 6):
        raise _CellError("16-bit colour PNG cannot be decoded exactly with Pillow")
    formats = {"png": ["PNG"], "jpeg": ["JPEG"]}.get(fmt or "")
    try:
        with image_mod.open(io.BytesIO(data), formats=formats) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for bad bytes
        raise _CellError(f"image does not decode: {type(e).__name__}: {e}") from None
    if mode not in _IMAGE_MODES:
        raise _CellError(f"image mode {mode!r} is not greyscale or RGB (Petastorm reads only those too)")
    return arr.astype(_IMAGE_MODES[mode], copy=False)


# -------------------------------------------------------------------------------------------
# Column decoders: one Arrow column of one batch -> what DatasetWriter.write takes
# -------------------------------------------------------------------------------------------

class _Column:
    """Decode one field's Arrow columns; ``where(i, msg)`` builds the error for batch row ``i``."""

    def __init__(self, f: PetastormField, image_mod: Any) -> None:
        self.f = f
        self.image_mod = image_mod
        self.cache: dict[bytes, tuple] = {}
        self.target = f.numpy_dtype
        fixed = f.shape != () and None not in f.shape
        nbytes = int(np.prod(f.shape, dtype=np.int64)) * self.target.itemsize if fixed and self.target else 0
        self.npz_limit = nbytes + (1 << 16) if fixed else _MAX_VARIABLE_CELL_BYTES

    def decode(self, arr: pa.Array, fail: Callable[[int, str], Exception]) -> Any:
        f = self.f
        valid = None if arr.null_count == 0 else np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
        if valid is not None and not f.nullable:
            raise fail(int(np.flatnonzero(~valid)[0]), "null value, but the Unischema says the field is not nullable")
        if f.codec in ("ScalarCodec", None):
            return self._scalars(arr, valid, fail)
        if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
            raise fail(0, f"Parquet column is {arr.type}, {f.codec} cells are binary")
        if f.codec == "NdarrayCodec" and None not in f.shape:
            fast = self._npy_batch(arr, valid)
            if fast is not None:
                return fast
        return self._assemble(self._cells(arr, valid, fail), valid)

    # tensors --------------------------------------------------------------------------------------
    def _cells(self, arr: pa.Array, valid: np.ndarray | None, fail: Callable[[int, str], Exception]) -> list:
        f = self.f
        offsets, data = _binary_buffers(arr)
        out: list[np.ndarray | None] = []
        for i in range(len(arr)):
            if valid is not None and not valid[i]:
                out.append(None)
                continue
            cell = data[offsets[i]:offsets[i + 1]]
            try:
                if f.codec == "NdarrayCodec":
                    a = _decode_npy(cell, self.cache)
                elif f.codec == "CompressedNdarrayCodec":
                    a = _decode_npz(cell, self.npz_limit, self.cache)
                else:
                    a = _decode_image(cell, f.image_format, self.image_mod)
                out.append(self._check(a))
            except _CellError as e:
                raise fail(i, str(e)) from None
        return out

    def _check(self, a: np.ndarray) -> np.ndarray:
        f = self.f
        if a.dtype.newbyteorder("=") != self.target:
            raise _CellError(f"cell holds {a.dtype.name} values, the Unischema says {f.numpy_type}")
        if a.ndim != len(f.shape) or any(d is not None and d != s for d, s in zip(f.shape, a.shape)):
            raise _CellError(f"cell holds shape {a.shape}, the Unischema says {f.shape}")
        return a if a.dtype.isnative else a.astype(self.target)

    def _npy_batch(self, arr: pa.Array, valid: np.ndarray | None) -> Any:
        """All same-header ``np.save`` cells of a fixed-shape field: one header parse, one reshape.
        None when the cells differ (the per-cell path then finds and names the bad one)."""
        offsets, data = _binary_buffers(arr)
        lengths = np.diff(offsets)
        rows = np.flatnonzero(valid) if valid is not None else np.arange(len(arr))
        if len(rows) == 0:
            return None
        first = data[offsets[rows[0]]:offsets[rows[0] + 1]]
        try:
            prefix, dtype, shape, fortran = _npy_header(first, self.cache)
        except _CellError:
            return None
        width = prefix + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if fortran or shape != self.f.shape or dtype.newbyteorder("=") != self.target:
            return None
        if (lengths[rows] != width).any() or (valid is not None and lengths[~valid].any()):
            return None
        block = data[offsets[0]:offsets[-1]].reshape(len(rows), width)
        if not (block[:, :prefix] == np.frombuffer(bytes(first[:prefix]), np.uint8)).all():
            return None
        values = np.ascontiguousarray(block[:, prefix:]).view(dtype).reshape((len(rows), *shape))
        if not dtype.isnative:
            values = values.astype(self.target)
        if valid is None:
            return values
        out = np.zeros((len(arr), *shape), dtype=self.target)
        out[rows] = values
        return _masked(out, valid)

    def _assemble(self, values: list, valid: np.ndarray | None) -> Any:
        if None in self.f.shape:
            return values  # a list of arrays, None for nulls
        out = np.zeros((len(values), *self.f.shape), dtype=self.target)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = v
        return out if valid is None else _masked(out, valid)

    # scalars --------------------------------------------------------------------------------------
    def _scalars(self, arr: pa.Array, valid: np.ndarray | None, fail: Callable[[int, str], Exception]) -> Any:
        f, t = self.f, arr.type
        if f.kind in ("str", "bytes", "decimal"):
            return self._texts(arr, fail)
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise fail(0, f"Parquet column is {t}, the Unischema says {f.numpy_type}")
        if valid is not None:
            arr = arr.fill_null(False if pa.types.is_boolean(t) else 0)
        values = arr.to_numpy(zero_copy_only=False)
        values = _cast_scalars(values, self.target, fail)
        return values if valid is None else _masked(values, valid)

    def _texts(self, arr: pa.Array, fail: Callable[[int, str], Exception]) -> list:
        f, t = self.f, arr.type
        out = arr.to_pylist()
        if f.kind == "decimal":
            if not pa.types.is_decimal(t):
                raise fail(0, f"Parquet column is {t}, the Unischema says {f.numpy_type}")
            return [None if v is None else str(v) for v in out]
        is_text = pa.types.is_string(t) or pa.types.is_large_string(t)
        if not (is_text or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            raise fail(0, f"Parquet column is {t}, the Unischema says {f.numpy_type}")
        if f.kind == "bytes" and is_text:
            return [None if v is None else v.encode("utf-8") for v in out]
        if f.kind == "str" and not is_text:
            for i, v in enumerate(out):
                try:
                    out[i] = None if v is None else v.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise fail(i, f"string is not UTF-8: {e}") from None
        return out


def _binary_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets as int64 with the array's offset applied, the data buffer as uint8) of a binary array."""
    bufs = arr.buffers()
    odt = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=odt)[arr.offset:arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size else np.zeros(0, np.uint8)
    return offsets, data


def _masked(values: np.ndarray, valid: np.ndarray) -> np.ma.MaskedArray:
    mask = np.broadcast_to((~valid).reshape((-1,) + (1,) * (values.ndim - 1)), values.shape)
    return np.ma.MaskedArray(values, mask=mask)


def _cast_scalars(values: np.ndarray, target: np.dtype, fail: Callable[[int, str], Exception]) -> np.ndarray:
    """Cast Parquet values to the Unischema's numpy type as Petastorm does, refusing silent damage."""
    if values.dtype == target:
        return values
    if target.kind in "iu" and values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.floor(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise fail(i, f"value {values[i]} is not an integer ({target.name})")
    if target.kind in "iu" and values.dtype.kind in "iuf" and len(values):
        info = np.iinfo(target)
        bad = (values < info.min) | (values > info.max)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise fail(i, f"value {values[i]} does not fit {target.name}")
    return values.astype(target)


# -------------------------------------------------------------------------------------------
# Files
# -------------------------------------------------------------------------------------------

def _part_files(src: Storage) -> list[str]:
    """Data files under the root, as Petastorm (pyarrow's ParquetDataset) sees them, sorted by path:
    names starting with ``_`` or ``.`` (``_SUCCESS``, ``_common_metadata``, ``.crc``) are not data."""
    root = src.root.rstrip("/")
    rels = []
    for path in src.fs.find(root):
        rel = path[len(root):].lstrip("/") if path.startswith(root) else path
        if rel and not any(part.startswith(("_", ".")) for part in rel.split("/")):
            rels.append(rel)
    return sorted(rels)


def _check_columns(pf: pq.ParquetFile, rel: str, fields: Sequence[PetastormField], url: str) -> None:
    names = set(pf.schema_arrow.names)
    for f in fields:
        if f.name in names:
            continue
        if any("=" in part for part in rel.split("/")[:-1]):
            raise UnsupportedFormatError(
                f"{url}: field {f.name!r} is not stored in {rel}: hive-partitioned Petastorm datasets "
                "(partition_by) are not supported")
        raise CorruptDatasetError(f"{url}: part file {rel} has no column {f.name!r} of the Unischema")


def _file_batches(src: Storage, rel: str, fields: Sequence[PetastormField], decoders: Sequence[_Column],
                  batch_rows: int) -> Iterator[dict[str, Any]]:
    """Decoded batches of one part file, read row group by row group."""
    with src.open_input(rel) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowException, OSError) as e:
            raise CorruptDatasetError(f"{src.url}: part file {rel} is not a Parquet file: {e}") from None
        _check_columns(pf, rel, fields, src.url)
        row0 = 0
        for rb in pf.iter_batches(batch_size=batch_rows, columns=[f.name for f in fields]):
            batch = {}
            for f, dec in zip(fields, decoders):
                def fail(i: int, msg: str, _f: PetastormField = f, _r: int = row0) -> CorruptDatasetError:
                    return CorruptDatasetError(
                        f"{src.url}: {rel} row {_r + i}, field {_f.name!r} ({_f.codec_repr}): {msg}")
                batch[f.name] = dec.decode(rb.column(f.name), fail)
            row0 += rb.num_rows
            yield batch


def _count_rows(src: Storage, files: Sequence[str]) -> int:
    total = 0
    for rel in files:
        with src.open_input(rel) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def from_petastorm(
    url: str,
    dest_url: str,
    columns: Sequence[str] | None = None,
    mode: str = "error",
    storage_options: Mapping[str, Any] | None = None,
    dest_storage_options: Mapping[str, Any] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = False,
    **writer_options: Any,
) -> Dataset:
    """Import the Petastorm dataset at ``url`` as a tensorstore_fs dataset at ``dest_url``.

    Neither petastorm nor pyspark is imported, and the pickled Unischema is read by a restricted
    unpickler that cannot run code. Rows keep Petastorm's storage order (part files sorted by
    path, then row groups in order).

    Parameters
    ----------
    url : str
        Root of the Petastorm dataset (the directory holding ``_common_metadata``).
    dest_url : str
        Where to write the tensorstore_fs dataset.
    columns : list of str, optional
        Unischema fields to import, in this order (default: all, in Unischema order).
    mode : {"error", "overwrite", "append"}
        As for :class:`~tensorstore_fs.DatasetWriter`.
    storage_options, dest_storage_options : mapping, optional
        fsspec options for ``url`` and ``dest_url``.
    batch_rows : int
        Rows decoded and handed to the writer at a time (memory holds about one such batch plus
        one Parquet row group).
    progress : bool
        Show a progress bar (needs tqdm).
    **writer_options
        ``row_group_bytes``, ``shard_bytes``, ``compression``, ``scalar_compression``.

    Returns
    -------
    Dataset
        The committed dataset.

    Raises
    ------
    DatasetNotFoundError, UnsupportedFormatError
        ``url`` is not a Petastorm dataset, its pickle names a class outside the allow-list, or a
        selected field has no tensorstore_fs equivalent (the message names it).
    CorruptDatasetError
        A cell fails to decode (the message names the file, the row and the field).
    ImportError
        An image field is imported and Pillow is not installed.

    Nothing is committed at ``dest_url`` when an error is raised.
    """
    check_int("batch_rows", batch_rows)
    src = Storage(url, storage_options)
    pschema = parse_unischema(_unischema_bytes(src), f"{src.url}/_common_metadata")
    fields = pschema.select(columns)
    schema = pschema.to_schema(columns)
    image_mod = _pillow() if any(f.codec == "CompressedImageCodec" for f in fields) else None
    decoders = [_Column(f, image_mod) for f in fields]
    files = _part_files(src)
    logger.info("%s: importing Petastorm %r (%d part files, fields %s) into %s", src.url, pschema.name,
                len(files), [f.name for f in fields], dest_url)
    total = _count_rows(src, files) if progress else None
    writer = DatasetWriter(dest_url, schema, mode=mode, storage_options=dest_storage_options, **writer_options)
    with writer, progress_bar(progress, total, "from_petastorm") as bar:
        for rel in files:
            for batch in _file_batches(src, rel, fields, decoders, int(batch_rows)):
                bar.update(writer.write(batch))
    assert writer.manifest is not None
    logger.info("%s: imported %d rows as version %d", dest_url, writer.manifest.rows, writer.manifest.version)
    return open_dataset(dest_url, version=writer.manifest.version, storage_options=dest_storage_options)
