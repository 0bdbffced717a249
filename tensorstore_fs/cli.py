"""The ``tsfs`` command: inspect datasets and convert between formats.

::

    tsfs info URL                      schema, rows, shards, row groups, versions, bytes
    tsfs head URL [-n 5] [--columns a,b]
    tsfs verify URL                    check every shard against its recorded size and CRC32C
    tsfs convert SRC DST --to hdf5|tfrecord|tsfs [--from tsfs|hdf5|tfrecord|petastorm]
    tsfs vacuum URL [--dry-run] [--retain-versions N] [--older-than 1h]
                                       delete orphans and old versions' files, print them and the bytes

Errors exit with status 1 and one line ``tsfs: error: ...`` on stderr (2 for bad usage).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import InvalidArgumentError, TensorstoreError

FORMATS = ("tsfs", "hdf5", "tfrecord", "petastorm")
TARGETS = ("tsfs", "hdf5", "tfrecord")

logger = logging.getLogger(__name__)


def detect_format(src: str) -> str:
    """Guess the format of ``src`` from its name and contents (local paths and URLs)."""
    name = src.rstrip("/").lower()
    if name.endswith((".h5", ".hdf5", ".hdf")):
        return "hdf5"
    if name.endswith((".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")) or "*" in name:
        return "tfrecord"
    if os.path.isdir(src):
        entries = os.listdir(src)
        if "_tsfs" in entries:
            return "tsfs"
        if "_common_metadata" in entries:
            return "petastorm"
        if any(".tfrecord" in e for e in entries):
            return "tfrecord"
    elif os.path.isfile(src):
        with open(src, "rb") as f:
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return "hdf5"
    return "tsfs"


def _columns(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _show_value(v: Any) -> str:
    if isinstance(v, np.ndarray) and v.ndim > 0:
        flat = v.reshape(-1)
        head = np.array2string(flat[:6], separator=", ", threshold=6, max_line_width=10**6)
        return f"{v.dtype}{list(v.shape)} {head[:-1]}{', ...]' if flat.size > 6 else ']'}"
    if v is None or v is np.ma.masked:
        return "null"
    return repr(v.item() if isinstance(v, np.generic) else v)


def cmd_info(args: argparse.Namespace) -> int:
    from .read.dataset import open_dataset

    ds = open_dataset(args.url, args.version)
    info = {
        "url": ds.url,
        "version": ds.version,
        "versions": ds.versions(),
        "rows": len(ds),
        "shards": len(ds.shards),
        "row_groups": len(ds.row_groups),
        "bytes": ds.nbytes,
        "schema": ds.schema.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{ds.url}  version {ds.version} (versions {', '.join(map(str, info['versions']))})")
    print(f"rows {len(ds):,}  shards {info['shards']}  row groups {info['row_groups']}  bytes {ds.nbytes:,}")
    width = max(len(f.name) for f in ds.schema.fields)
    for f in ds.schema.fields:
        shape = "scalar" if f.shape == () else str(tuple(f.shape))
        extra = ("  nullable" if f.nullable else "") + (f"  # {f.description}" if f.description else "")
        print(f"  {f.name:<{width}}  {f.dtype:<8} {shape}{extra}")
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    from .read.dataset import open_dataset

    ds = open_dataset(args.url, args.version)
    batch = ds.head(args.n, columns=_columns(args.columns))
    names = [k for k in batch if not k.endswith("__shape")]
    n = min(args.n, len(batch[names[0]])) if names else 0
    for i in range(n):
        print(f"-- row {i}")
        for k in names:
            col = batch[k]
            value = col[i]
            print(f"  {k}: {_show_value(value)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .read.dataset import open_dataset

    ds = open_dataset(args.url, args.version)
    ds.verify()
    print(f"ok: {len(ds.shards)} shard(s), {ds.nbytes:,} bytes of version {ds.version} match their CRC32C")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from . import converters
    from .read.dataset import open_dataset

    src_format = args.src_format or detect_format(args.src)
    if src_format == args.to:
        raise InvalidArgumentError(f"source and target are both {src_format}: nothing to convert")
    columns, progress = _columns(args.columns), not args.no_progress and sys.stderr.isatty()
    mode = "overwrite" if args.overwrite else "error"
    if src_format == "tsfs":
        ds = open_dataset(args.src, args.version)
    elif args.to == "tsfs":
        ds = None
    else:  # e.g. hdf5 -> tfrecord: through a temporary tsfs dataset would hide errors; ask for two steps
        raise InvalidArgumentError(f"convert {src_format} -> {args.to} in two steps, through a tsfs dataset")
    if args.to == "hdf5":
        converters.to_hdf5(ds, args.dst, columns=columns, compression=args.compression, overwrite=args.overwrite,
                           progress=progress)
        print(f"wrote {args.dst}: {len(ds):,} rows as HDF5")
    elif args.to == "tfrecord":
        export = converters.to_tfrecord(ds, args.dst, columns=columns, shards=args.shards,
                                        compression=args.compression, overwrite=args.overwrite, progress=progress)
        print(f"wrote {len(export.paths)} TFRecord file(s) under {args.dst}: {export.num_rows:,} rows")
    else:
        if src_format == "hdf5":
            out = converters.from_hdf5(args.src, args.dst, mode=mode, progress=progress)
        elif src_format == "tfrecord":
            out = converters.from_tfrecord(args.src, args.dst, mode=mode, progress=progress)
        else:
            out = converters.from_petastorm(args.src, args.dst, columns=columns, mode=mode, progress=progress)
        if columns is not None and src_format != "petastorm":
            logger.warning("--columns applies to exports and Petastorm imports; all fields were imported")
        print(f"wrote {out.url}: {len(out):,} rows, version {out.version}")
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    from .vacuum import vacuum

    report = vacuum(args.url, args.retain_versions, args.older_than, dry_run=args.dry_run,
                    progress=not args.no_progress and sys.stderr.isatty())
    verb = "would remove" if report.dry_run else "removed"
    for f in report.removed:
        print(f"{verb} {f.path}  {f.bytes:,} bytes  ({f.reason})")
    for rel in report.kept_recent:
        print(f"kept {rel}  (younger than --older-than {args.older_than}: a writer may be writing it)")
    if report.foreign:
        print(f"left alone {len(report.foreign)} file(s) not written by tensorstore_fs (e.g. {report.foreign[0]})")
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsfs", description="Inspect and convert tensorstore_fs datasets.")
    parser.add_argument("--version", action="version", version=f"tensorstore_fs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_url(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("url", help="dataset URL or path")
        p.add_argument("--version", type=int, default=None, dest="version", help="dataset version (newest)")
        return p

    p = with_url("info", "schema, rows, shards, versions and bytes of a dataset")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    p = with_url("head", "print the first rows")
    p.add_argument("-n", type=int, default=5, help="rows to print (default 5)")
    p.add_argument("--columns", help="comma-separated fields")
    p.set_defaults(func=cmd_head)
    p = with_url("verify", "check every shard file against its recorded size and CRC32C")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("convert", help="convert between tsfs, HDF5, TFRecord (and from Petastorm)")
    p.add_argument("src", help="source path or URL")
    p.add_argument("dst", help="target path or URL")
    p.add_argument("--to", required=True, choices=TARGETS, help="target format")
    p.add_argument("--from", dest="src_format", choices=FORMATS, help="source format (guessed when omitted)")
    p.add_argument("--columns", help="comma-separated fields to export")
    p.add_argument("--compression", default=None, help="hdf5: gzip|lzf; tfrecord: GZIP")
    p.add_argument("--shards", type=int, default=1, help="tfrecord: number of files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing target")
    p.add_argument("--version", type=int, default=None, dest="version", help="source dataset version (tsfs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("vacuum", help="delete files no retained version needs (orphans of killed writers, old versions)")
    p.add_argument("url", help="dataset URL or path")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    p.add_argument("--retain-versions", type=int, default=None, metavar="N",
                   help="keep the newest N versions and delete the others (default: keep every version)")
    p.add_argument("--older-than", default="1h", metavar="DURATION",
                   help="never delete a file younger than this, e.g. 30m, 1h, 7d, 0 (default 1h: a running writer's files survive)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_vacuum)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tsfs`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="tsfs: %(message)s")
    if getattr(args, "n", 1) < 1:
        parser.error("-n must be at least 1")
    try:
        return args.func(args)
    except (TensorstoreError, FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        print(f"tsfs: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `tsfs head ... | head`: the reader left; stay quiet at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
