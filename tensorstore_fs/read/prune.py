"""Which row groups a read touches: every row group of a version, and those a filter leaves after
the manifest's min/max statistics (no file is opened to prune)."""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidArgumentError
from ..manifest import Manifest
from ..schema import Schema

__all__ = ["RowGroupRef", "all_row_groups", "check_filter", "prune", "prune_row_groups"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowGroupRef:
    """One row group of one shard, and where its rows sit in the dataset."""

    shard: int
    row_group: int
    first_row: int  # global index of its first row in the manifest's order
    rows: int


def all_row_groups(manifest: Manifest) -> list[RowGroupRef]:
    out = []
    first = 0
    for si, shard in enumerate(manifest.shards):
        for gi, g in enumerate(shard.row_groups):
            out.append(RowGroupRef(si, gi, first, g.rows))
            first += g.rows
    return out


_MAX_SPLIT_COLUMNS = 3  # row groups with partial nulls in more columns than this keep no bounds for them


def _conjunction(parts: list[Any]) -> Any:
    if not parts:
        return pc.scalar(True)
    out = parts[0]
    for p in parts[1:]:
        out = out & p
    return out


def _guarantees(stats: dict[str, Any], rows: int, types: dict[str, pa.DataType]) -> list[Any]:
    """Expressions whose disjunction holds for every row of a row group (from manifest statistics).

    A column with some nulls holds rows "in [min, max]" or "null". Arrow cannot simplify with an
    ``or`` guarantee, so the row group is described by one guarantee per combination of those
    alternatives (at most ``2 ** _MAX_SPLIT_COLUMNS``); it is pruned only if all are ruled out.
    """
    fixed: list[Any] = []
    split: list[tuple[Any, Any]] = []
    for name, st in stats.items():
        if name not in types:
            continue
        f = pc.field(name)
        nulls = int(st.get("nulls", 0))
        if nulls == rows:
            fixed.append(f.is_null())
            continue
        if "min" not in st:
            continue
        rng = (f >= pa.scalar(st["min"], type=types[name])) & (f <= pa.scalar(st["max"], type=types[name]))
        if nulls == 0:
            fixed.append(rng)
        else:
            split.append((rng, f.is_null()))
    split = split[:_MAX_SPLIT_COLUMNS]
    return [_conjunction(fixed + list(choice)) for choice in itertools.product(*split)]


def prune_row_groups(manifest: Manifest, refs: Sequence[RowGroupRef], expression: Any, arrow_types: dict[str, pa.DataType]) -> list[RowGroupRef]:
    """Keep the row groups whose statistics do not rule ``expression`` out.

    Uses pyarrow's own expression simplification (each row group becomes one or more virtual
    fragments whose partition expressions are its min/max guarantees), so pruning follows Arrow's
    semantics exactly and never opens a file.
    """
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    if not refs:
        return []
    owners: list[int] = []
    guarantees: list[Any] = []
    for i, r in enumerate(refs):
        for g in _guarantees(manifest.shards[r.shard].row_groups[r.row_group].stats, r.rows, arrow_types):
            owners.append(i)
            guarantees.append(g)
    schema = pa.schema([(k, v) for k, v in arrow_types.items()])
    virtual = pads.FileSystemDataset.from_paths(
        [f"rg/{i}" for i in range(len(guarantees))],
        schema=schema,
        format=pads.ParquetFileFormat(),
        filesystem=pafs.LocalFileSystem(),
        partitions=guarantees,
    )
    try:
        kept = {owners[int(fr.path.rsplit("/", 1)[1])] for fr in virtual.get_fragments(filter=expression)}
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InvalidArgumentError(f"filter {expression} cannot be applied: {e}. {filter_hint(manifest.schema)}") from None
    if _NAN_LITERAL.search(str(expression)):
        # Arrow's guarantee simplification orders NaN above every number, so with finite bounds it
        # turns `x < nan` into true and `~(x < nan)` into false, pruning row groups that match
        # (every comparison with NaN is false). Keep everything; the exact filter still applies.
        return list(refs)
    return [refs[i] for i in sorted(kept)]


_NAN_LITERAL = re.compile(r"\bnan\b", re.IGNORECASE)


def _pruning_types(schema: Schema, arrow_schema: pa.Schema) -> dict[str, pa.DataType]:
    return {f.name: arrow_schema.field(f.name).type for f in schema.fields if f.is_scalar}


def filter_hint(schema: Schema) -> str:
    names = [f.name for f in schema.fields if f.is_scalar]
    half = [f.name for f in schema.fields if f.is_scalar and f.dtype == "float16"]
    hint = f"A filter may reference scalar columns only: {names}."
    if half:
        hint += f" float16 columns {half} cannot be compared by Arrow: use predicate=in_range(...) instead."
    return hint


def check_filter(expr: Any, schema: Schema, arrow_schema: pa.Schema) -> None:
    """Bind a filter to the scalar columns now, so a bad filter fails even with no rows."""
    scalars = [f.name for f in schema.fields if f.is_scalar]
    empty = arrow_schema.empty_table().select(scalars)
    try:
        empty.filter(expr)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InvalidArgumentError(f"filter {expr} cannot be evaluated: {e}. {filter_hint(schema)}") from None


def prune(manifest: Manifest, refs: list[RowGroupRef], filter: Any, predicate: Any,
          arrow_schema: pa.Schema) -> list[RowGroupRef]:
    """The row groups of ``refs`` that the filter's and the predicate's pruning expression do not
    rule out (a predicate without a usable expression prunes nothing: it is exact anyway)."""
    types = _pruning_types(manifest.schema, arrow_schema)
    if filter is not None:
        refs = prune_row_groups(manifest, refs, filter, types)
    expr = predicate.to_expression() if predicate is not None else None
    if expr is not None:
        try:
            refs = prune_row_groups(manifest, refs, expr, types)
        except InvalidArgumentError as e:
            logger.debug("predicate %r gives no usable pruning expression: %s", predicate, e)
    return refs
