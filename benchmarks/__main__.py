"""The benchmarks' command line: ``python -m benchmarks <target> [options]``.

Targets: ``core``, ``loader``, ``tf``, ``suite``, ``storage``, and ``all`` (the five in turn, each in
its own process). Results go to ``benchmarks/results/`` (``--out``); ``--quick`` runs small sizes and few
repetitions (a smoke test of minutes) and writes to a temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from .harness import RESULTS, ROOT, default_work
from .petastorm_venv import VENV

TARGETS = {"core": "benchmarks.core", "loader": "benchmarks.loader", "tf": "benchmarks.tfdata",
           "suite": "benchmarks.suite.run", "storage": "benchmarks.storage"}
QUICK_OUT = Path(tempfile.gettempdir()) / "tsfs_bench_quick"


def parser() -> argparse.ArgumentParser:
    """One parser, a sub-command per target; the options every target shares come first in its help."""
    shared = argparse.ArgumentParser(add_help=False)
    g = shared.add_argument_group("shared options")
    g.add_argument("--out", type=Path,
                   help=f"results folder (default {RESULTS.relative_to(ROOT)}/; --quick: {QUICK_OUT})")
    g.add_argument("--quick", action="store_true", help="small sizes and few repetitions: a smoke test (minutes)")
    g.add_argument("--repeat", type=int, help="timed repetitions per measure (default: the target's)")
    g.add_argument("--warmup", type=int, help="untimed warm-up passes per measure (default: the target's)")
    g.add_argument("--work", type=Path, default=default_work(),
                   help="the datasets go to a temporary folder in here, removed at the end (default /dev/shm: tmpfs)")
    g.add_argument("--keep", action="store_true", help="keep the datasets (and the suite's logs)")
    g.add_argument("--skip-petastorm", action="store_true", help="loader, suite: do not build or run Petastorm")
    g.add_argument("--petastorm-venv", type=Path, default=VENV,
                   help=f"loader, suite: Petastorm's virtualenv, created on first use (default {VENV.relative_to(ROOT)})")
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="target", required=True, metavar="{core,loader,tf,suite,storage,all}")
    for name, modname in TARGETS.items():
        mod = importlib.import_module(modname)
        sp = sub.add_parser(name, parents=[shared], help=mod.__doc__.splitlines()[0].replace("%", "%%"),
                            description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
    sub.add_parser("all", parents=[shared], help="core, loader, tf, suite and storage in turn, each in its own process")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    if args.target == "all":  # one process a target, as separate runs would be
        return max(subprocess.call([sys.executable, "-m", "benchmarks", t, *argv[1:]]) for t in TARGETS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    mod = importlib.import_module(TARGETS[args.target])
    for k, v in (mod.QUICK if args.quick else mod.FULL).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else RESULTS
    err = "--repeat must be >= 1 and --warmup >= 0" if args.repeat < 1 or args.warmup < 0 else mod.check(args)
    if err:
        p.error(f"{args.target}: {err}")
    return mod.main(args)


if __name__ == "__main__":
    sys.exit(main())
