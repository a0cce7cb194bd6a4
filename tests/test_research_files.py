"""Files that break the parsers (deep JSON, huge CSV fields, non-UTF-8) are ValueErrors naming the
file and what to do, never RecursionError or _csv.Error."""

from __future__ import annotations

import json

import pytest

from steerable.research.ab import load_ab_dataset
from steerable.research.files import read_csv_rows, read_json, read_json_lines
from steerable.research.pair_files import load_pair_file
from steerable.testing.tiny_models import tiny_tokenizer

DEEP = "[" * 100_000 + "]" * 100_000


def test_json_nested_too_deeply_is_a_value_error(tmp_path) -> None:
    for name in ("deep.json", "ab.json"):
        (tmp_path / name).write_text(DEEP)
    with pytest.raises(ValueError, match="deep.json: JSON nested too deeply to read"):
        read_json(tmp_path / "deep.json")  # was RecursionError
    with pytest.raises(ValueError, match="ab.json: JSON nested too deeply"):
        load_ab_dataset(tmp_path / "ab.json")
    with pytest.raises(ValueError, match="deep.json: JSON nested too deeply"):
        load_pair_file(tmp_path / "deep.json", tiny_tokenizer())
    (tmp_path / "deep.jsonl").write_text('{"positive": "a", "negative": "b"}\n' + DEEP)
    with pytest.raises(ValueError, match="deep.jsonl line 2: JSON nested too deeply"):
        read_json_lines(tmp_path / "deep.jsonl")


def test_a_csv_field_over_the_csv_limit_is_a_value_error(tmp_path) -> None:
    path = tmp_path / "long.csv"
    path.write_text('positive,negative\nw5,w6\n"' + "w" * 131_073 + '",w7\n')
    with pytest.raises(ValueError, match=r"long.csv line 3: not readable as CSV \(field larger than field limit"):
        read_csv_rows(path)  # was _csv.Error
    with pytest.raises(ValueError, match="use JSON or JSONL rows instead"):
        load_pair_file(path, tiny_tokenizer())


def test_csv_quoted_fields_may_span_lines_and_other_files_read_as_before(tmp_path) -> None:
    (tmp_path / "p.csv").write_text('positive,negative\n"w5\nw6",w7\n')
    assert read_csv_rows(tmp_path / "p.csv") == [{"positive": "w5\nw6", "negative": "w7"}]
    (tmp_path / "p.json").write_text(json.dumps([{"positive": "w5", "negative": "w6"}]))
    assert read_json(tmp_path / "p.json") == [{"positive": "w5", "negative": "w6"}]
    (tmp_path / "bad.json").write_bytes(b'["\xff"]')
    with pytest.raises(ValueError, match="bad.json: not UTF-8 text"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json: no such file"):
        read_json(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError, match="is a directory, not a file"):
        read_json(tmp_path)
