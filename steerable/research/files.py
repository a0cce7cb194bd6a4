"""Reading the JSON, JSONL and CSV files researchers give, with one kind of error.

Whatever is wrong with a file (not UTF-8, not JSON, JSON nested too deeply for the parser, a CSV
field over the csv module's size limit, a malformed CSV row) is a ``ValueError`` that names the file
and what to do, never the parser's own exception (``RecursionError``, ``_csv.Error``), which a
caller cannot tell from a bug.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any


def read_text(path: str | Path) -> str:
    """The file's text (UTF-8); a missing file or one that is not text is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def parse_json(text: str, where: str) -> Any:
    """``text`` parsed as JSON; ``where`` names it in the error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read: flatten the file's structure") from None


def read_json(path: str | Path) -> Any:
    """A JSON file's contents."""
    return parse_json(read_text(path), str(path))


def read_json_lines(path: str | Path) -> list[Any]:
    """A JSONL file's records, one per non-blank line."""
    lines = read_text(path).splitlines()
    return [parse_json(line, f"{path} line {number + 1}") for number, line in enumerate(lines) if line.strip()]


def read_csv_rows(path: str | Path) -> list[dict[str, Any]]:
    """A CSV file's rows as dicts keyed by its header."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
    try:
        return list(reader)
    except csv.Error as error:
        raise ValueError(
            f"{path} line {reader.line_num + 1}: not readable as CSV ({error}); for long or multi-line texts "
            "use JSON or JSONL rows instead"
        ) from None
