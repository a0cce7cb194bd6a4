"""The ``steerable`` command line: ``info``, ``train``, ``generate``, ``sweep``, ``diagnose`` and ``bench``.

One module per command, each with ``add_parser(commands)`` and ``run(args)``; ``cli.common`` holds
what they share. A user error (a bad file, option or value) is one line on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from steerable.cli import bench, diagnose, generate, info, sweep, train
from steerable.cli.common import check_counts, load_any, printable

__all__ = ["load_any", "main", "parser"]

COMMANDS = (info, train, generate, sweep, diagnose, bench)

#: What a user's file, option or value can raise: reported in one line. (RecursionError: a file
#: nested too deeply for a parser that does not say so itself.)
USER_ERRORS = (ValueError, TypeError, OSError, IndexError, KeyError, NotImplementedError, UnicodeError, RecursionError)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="steerable", description="Steering vectors for Hugging Face models.")
    commands = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return top


def one_line(error: BaseException) -> str:
    """The error's first line, escaped for the terminal (messages quote files), or its type's name."""
    if isinstance(error, RecursionError):
        return "an input is nested too deeply to read (RecursionError): flatten the file's structure"
    text = str(error).strip()
    return printable(text.splitlines()[0]) if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: every option passes through
        return bench.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        check_counts(args)  # before any work: a negative count would slice from the end
        code = args.run(args)
    except USER_ERRORS as error:
        print(f"steerable {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
