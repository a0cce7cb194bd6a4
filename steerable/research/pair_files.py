"""Reading the pair formats researchers have: CAA A/B JSON, and JSON, JSONL or CSV of
``{prompt?, positive, negative}`` rows; as contrastive pairs (to train by aggregation) or as
preferences (to learn a vector)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerable.chat_roles import chat_prompt
from steerable.research.ab import ABItem, Balance, ab_pair, ab_prompt, balanced, load_ab_dataset
from steerable.research.files import read_csv_rows, read_json, read_json_lines
from steerable.train.learned import Preference
from steerable.train.pairs import ContrastivePair

_AB_KEYS = {"question", "answer_matching_behavior", "answer_not_matching_behavior"}


@dataclass
class PairFile:
    """What a file held: ``pairs`` for aggregation, ``preferences`` for learned vectors, and the A/B
    ``items`` (after balancing) when it was a CAA file."""

    pairs: list[ContrastivePair]
    preferences: list[Preference]
    items: list[ABItem] | None


def _rows(path: Path) -> list[Any]:
    if path.suffix.lower() == ".csv":
        return read_csv_rows(path)
    if path.suffix.lower() == ".jsonl":
        return read_json_lines(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of pairs or of CAA A/B items")
    return data


def load_pair_file(
    path: str | Path,
    tokenizer: Any,
    chat: bool = True,
    balance: Balance | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
) -> PairFile:
    """Read ``path``: a CAA A/B file (read at the answer letter; ``balance`` as in ``ab_pairs``), or rows
    ``{prompt?, positive, negative}`` (``prompt`` is chat-formatted when ``chat``). ``max_pairs``: the
    first that many items or rows, before balancing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path}: the file holds no pairs")
    if max_pairs is not None:
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
        rows = rows[:max_pairs]
    if isinstance(rows[0], dict) and _AB_KEYS <= rows[0].keys():
        items = load_ab_dataset(path)[: len(rows)]
        items = balanced(items, balance, seed)
        pairs = [ab_pair(tokenizer, item, chat) for item in items]
        preferences = [
            Preference(ab_prompt(tokenizer, i.question, chat), i.matching + ")", i.not_matching + ")") for i in items
        ]
        return PairFile(pairs, preferences, items)
    if balance is not None:
        raise ValueError(f"{path}: balance applies to CAA A/B files (with answer letters), not to plain pairs")
    pairs, preferences = [], []
    for number, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("positive"), str)
            or not isinstance(row.get("negative"), str)
        ):
            raise ValueError(
                f"{path}: row {number} needs string 'positive' and 'negative' fields (and optionally 'prompt'), "
                "or the file must be CAA A/B items with 'question' and 'answer_matching_behavior'"
            )
        prompt = row.get("prompt") or ""
        if prompt and chat:
            prompt = chat_prompt(tokenizer, prompt)
        pairs.append(ContrastivePair(prompt + row["positive"], prompt + row["negative"]))
        preferences.append(Preference(prompt, row["positive"], row["negative"]))
    return PairFile(pairs, preferences, None)
