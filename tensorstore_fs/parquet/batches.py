"""Decode row groups of one Parquet file into record batches of exactly the sizes asked for.

:func:`read_batches` is the sequential read of both read engines (the scanner and the planned
stream): whole row groups decoded at once and sliced where that is cheaper, pyarrow's batch reader
where rows are wide or few are wanted, and located tensor values taken as they are in the file.
Given the file's name, it checks the stored shapes of variable-shape columns as they are decoded
(:func:`~tensorstore_fs.ragged.check_shapes`: a bad one is a
:class:`~tensorstore_fs.CorruptDatasetError` naming the file, the row group, the field and the row).
"""

from __future__ import annotations

import bisect
import itertools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..ragged import SHAPE_PREFIX, check_shapes
from .rowgroups import row_bytes, use_threads

if TYPE_CHECKING:
    from ..schema import Schema

__all__ = ["read_batches"]


def read_batches(
    pf: pq.ParquetFile,
    row_groups: Sequence[int],
    columns: list[str],
    sizes: Sequence[int],
    then: int,
    *,
    limit: int | None = None,
    direct: Callable[[int], dict[str, pa.Array]] | None = None,
    cut: bool = True,
    name: str | None = None,
    schema: "Schema | None" = None,
) -> Iterator[pa.RecordBatch]:
    """Decode ``row_groups`` of ``pf`` as record batches of ``sizes[0]``, ``sizes[1]``, ... rows,
    then ``then`` rows each (the last batch may be shorter).

    Each row group is decoded whole with ``read_row_group`` (much faster than pyarrow's batch
    reader for narrow columns) and cut into zero-copy slices; a batch is re-assembled (copied)
    only where it spans two row groups. Memory stays bounded by about one row group plus one
    batch.

    Parameters
    ----------
    pf : pyarrow.parquet.ParquetFile
        The open file.
    row_groups : sequence of int
        Row groups to read, in order.
    columns : list of str
        Storage columns to decode.
    sizes : sequence of int
        Sizes of the first batches.
    then : int
        Size of every later batch.
    limit : int, optional
        At most this many rows will be consumed. Where that is under half of the first row
        group, pyarrow's batch reader decodes only the pages needed instead of whole row groups.
    direct : callable, optional
        ``direct(row_group)`` gives columns of that row group that need no decoding (arrays
        over the file's own bytes, see :mod:`tensorstore_fs.parquet.pages`); pyarrow decodes the rest.
    cut : bool
        False: where row groups are read whole, yield them as read (one batch per row group, in
        row order) and leave cutting to the caller.
    name : str, optional
        The file's name: the stored shapes of variable-shape columns are checked as they are
        decoded (one min and max per dimension a batch), errors naming the file and row group.
    schema : Schema, optional
        The dataset's schema, for those checks to know each field's fixed dimensions.

    Yields
    ------
    pyarrow.RecordBatch
        Batches of exactly the requested sizes, in row order (unless ``cut`` is False).
    """
    plan = list(sizes)

    def next_size() -> int:
        return max(1, plan.pop(0) if plan else then)

    groups = list(row_groups)
    whole = hasattr(pf, "read_row_group") and hasattr(pf, "metadata")
    if whole and limit is not None and groups and 2 * limit < pf.metadata.row_group(groups[0]).num_rows:
        whole = False
    if direct is not None and groups and 3 * then > 2 * pf.metadata.row_group(groups[0]).num_rows:
        # mapped values cost nothing for a batch inside one row group, but a batch that spans two
        # is joined (faulting the map in, then copying): past ~2/3 of a row group a batch, most
        # batches span and the decoder's one copy is cheaper (measured crossover)
        direct = None
    first = direct(groups[0]) if whole and direct is not None and groups else {}
    # variable-shape rows count only where the batches are cut here: a caller that slices whole
    # row groups itself (Scanner.__iter__) got its token batches twice as fast from whole row
    # groups, while reads cut here (the loaders' read units) were 5% faster through the batch reader
    arrow = pf.schema_arrow if whole else None  # built anew on every access: once here
    wide = [c for c in columns if c not in first and (cut or pa.types.is_fixed_size_binary(arrow.field(c).type))] \
        if arrow is not None else []
    if whole and groups and row_bytes(pf, groups[0], wide) >= WIDE_ROW_BYTES:
        # wide rows to decode (tensors): the batch reader decodes a batch that spans row groups
        # straight into one buffer; whole row groups would cost a second copy for every such batch
        whole = False
    shapes = name is not None and any(c.startswith(SHAPE_PREFIX) for c in columns)
    if not whole:
        stream = _stream_batches(pf, groups, columns, next_size)
        yield from _checked(stream, pf, groups, name, schema) if shapes else stream
        return

    def decoded() -> Iterator[pa.RecordBatch]:
        if not first:  # nothing mapped: decode runs of small row groups in one call each
            for run in _runs_by_bytes(pf, groups, columns, GROUPED_READ_BYTES):
                threads = any(use_threads(pf, rg, columns) for rg in run)
                yield from pf.read_row_groups(run, columns=columns, use_threads=threads).to_batches()
            return
        # mapped tensor columns come per row group; the other columns are decoded for runs of
        # row groups at once and sliced (pyarrow's fixed cost per call dominates small columns)
        layout = pa.schema([arrow.field(c) for c in columns], metadata=arrow.metadata)
        rest = [c for c in columns if c not in first]
        i = 0
        for run in _runs_by_bytes(pf, groups, rest or columns, GROUPED_READ_BYTES):
            table = (pf.read_row_groups(run, columns=rest, use_threads=any(use_threads(pf, rg, rest) for rg in run))
                     if rest else None)
            at = 0
            for rg in run:
                n = pf.metadata.row_group(rg).num_rows
                mapped = first if i == 0 else direct(rg) if direct is not None else {}
                i += 1
                missing = [c for c in first if c not in mapped]  # this row group stores them otherwise
                extra = pf.read_row_group(rg, columns=missing, use_threads=False) if missing else None
                arrays = [pa.chunked_array([mapped[c]]) if c in mapped
                          else extra.column(c) if c in missing else table.column(c).slice(at, n)
                          for c in columns]
                at += n
                yield from pa.Table.from_arrays(arrays, schema=layout).to_batches()

    batches = _checked(decoded(), pf, groups, name, schema) if shapes else decoded()
    yield from _recut(batches, next_size(), next_size) if cut else batches


def _checked(batches: Iterable[pa.RecordBatch], pf: pq.ParquetFile, groups: Sequence[int], name: str | None,
             schema: "Schema | None") -> Iterator[pa.RecordBatch]:
    """``batches`` (the rows of ``groups`` in order), each one's stored shapes checked first."""
    starts = list(itertools.accumulate((pf.metadata.row_group(rg).num_rows for rg in groups), initial=0))
    at = 0
    for rb in batches:
        # the row groups this batch's rows come from, as (first row relative to the batch, label)
        first = max(0, bisect.bisect_right(starts, at) - 1)
        last = bisect.bisect_left(starts, at + rb.num_rows)
        parts = [(starts[i] - at, f"row group {groups[i]}") for i in range(first, min(last, len(groups)))]
        check_shapes(rb, str(name), parts, schema)
        at += rb.num_rows
        yield rb


def _recut(batches: Iterable[pa.RecordBatch], want: int, next_size: Any,
           after: Any = None) -> Iterator[pa.RecordBatch]:
    """Re-cut ``batches`` into batches of ``want``, then ``next_size()``, ... rows (the last may be
    shorter), slicing without copies where one input batch holds a whole output batch.
    ``after(rows still wanted)`` is called after each input batch."""
    buf: list[pa.RecordBatch] = []
    have = 0
    for rb in batches:
        if rb.num_rows:
            buf.append(rb)
            have += rb.num_rows
        while have >= want:
            out, buf = _cut(buf, want)
            have -= want
            yield out
            want = next_size()
        if after is not None:
            after(want - have)
    if have:
        yield _cut(buf, have)[0]


WIDE_ROW_BYTES = 512  # decoded bytes per row from which the batch reader beats whole row groups


GROUPED_READ_BYTES = 4 << 20  # decoded bytes up to which consecutive row groups are read in one call


def _runs_by_bytes(pf: pq.ParquetFile, groups: Sequence[int], columns: list[str], limit: int) -> Iterator[list[int]]:
    """``groups`` in consecutive runs of at most ``limit`` decoded bytes (a bigger row group alone)."""
    run: list[int] = []
    nbytes = 0
    for rg in groups:
        size = row_bytes(pf, rg, columns) * pf.metadata.row_group(rg).num_rows
        if run and nbytes + size > limit:
            yield run
            run, nbytes = [], 0
        run.append(rg)
        nbytes += size
    if run:
        yield run


def _stream_batches(pf: pq.ParquetFile, row_groups: list[int], columns: list[str], next_size: Any) -> Iterator[pa.RecordBatch]:
    """:func:`read_batches` through pyarrow's batch reader, asking for the next size between batches.

    pyarrow's batch reader reads its batch size before every batch, so asking for the next size
    between batches yields batches of exactly the requested sizes. Should a pyarrow release stop
    honouring the change, the batches it returns are re-cut (and joined where short) to the
    requested sizes: slower, never wrong.
    """
    want = next_size()
    reader = pf.iter_batches(batch_size=want, row_groups=row_groups, columns=columns, use_threads=True)
    yield from _recut(reader, want, next_size, pf.reader.set_batch_size)


def _cut(buf: list[pa.RecordBatch], n: int) -> tuple[pa.RecordBatch, list[pa.RecordBatch]]:
    """The first ``n`` rows of ``buf`` as one batch (zero-copy when one batch holds them) and the rest."""
    head = buf[0]
    if head.num_rows >= n:
        rest = ([head.slice(n)] if head.num_rows > n else []) + buf[1:]
        return head.slice(0, n), rest
    pieces, taken, i = [], 0, 0
    while taken < n:
        take = min(buf[i].num_rows, n - taken)
        pieces.append(buf[i].slice(0, take))
        taken += take
        if take < buf[i].num_rows:
            buf = [buf[i].slice(take)] + buf[i + 1:]
            i = 0
            break
        i += 1
    else:
        buf = buf[i:]
    joined = pa.Table.from_batches(pieces).combine_chunks().to_batches()
    return (joined[0] if joined else pieces[0]), buf
