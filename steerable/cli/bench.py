"""``steerable bench [OPTIONS]``: the overhead benchmark of the repository (``benchmarks.overhead``);
every option passes through to its own parser."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "bench", help="the overhead benchmark (all its options: steerable bench --help)", add_help=False
    )
    p.add_argument("options", nargs=argparse.REMAINDER)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return main(list(args.options))


def main(options: list[str]) -> int:
    """The benchmark's own ``main`` on ``options`` (exit code 2 outside a checkout, where it is absent)."""
    try:
        from benchmarks.overhead import main as bench
    except ImportError:
        print(
            "steerable bench: error: the benchmarks live in the repository, not the installed package; "
            "run this from a checkout of steerable (python -m benchmarks.overhead)",
            file=sys.stderr,
        )
        return 2
    return int(bench(options) or 0)
