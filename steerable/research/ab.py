"""CAA A/B data: items, prompts and training pairs, and the answer-letter confound with its two cures.

A/B data (the format of "Steering Llama 2 via Contrastive Activation Addition", arXiv 2312.06681) is a
JSON list of items ``{"question": "...(A) ...(B) ...", "answer_matching_behavior": "(A)",
"answer_not_matching_behavior": "(B)"}``.

A CAA A/B pair reads the model at the answer letter: ``question + "(A"`` against ``question + "(B"``.
If the matching answer is mostly one letter, the mean difference mostly encodes *which letter is
there*, not the behaviour. The CAA paper (arXiv 2312.06681) avoids it by design: every question
appears with both answer orders. ``check_letter_balance`` warns; ``balance_letters`` keeps an equal
number of each matching letter; ``swap_answer_order`` adds each question with its two options
swapped, so each letter matches the behaviour equally often and the letter direction cancels.
"""

from __future__ import annotations

import random
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from steerable.chat_roles import chat_prompt
from steerable.research.files import read_json
from steerable.train.pairs import ContrastivePair


@dataclass(frozen=True)
class ABItem:
    question: str
    matching: str  # the letter of the answer that matches the behaviour, e.g. "A"
    not_matching: str


def load_ab_dataset(path: str | Path) -> list[ABItem]:
    """Read an A/B JSON file; a malformed item is an error that names it."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of A/B items")
    items = []
    for number, item in enumerate(data):
        keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
        if not isinstance(item, dict) or any(not isinstance(item.get(k), str) for k in keys):
            raise ValueError(f"{path}: item {number} needs string fields {', '.join(keys)}")
        letters = [item[k].strip().strip("()").strip() for k in keys[1:]]
        if any(len(letter) != 1 or not letter.isalpha() for letter in letters) or letters[0] == letters[1]:
            raise ValueError(
                f"{path}: item {number} answers must be two different letters like '(A)' and '(B)', "
                f"got {item[keys[1]]!r} and {item[keys[2]]!r}"
            )
        items.append(ABItem(item["question"], letters[0], letters[1]))
    return items


def ab_prompt(tokenizer: Any, question: str, chat: bool = True) -> str:
    """The text up to the answer letter: the model's next token is the letter."""
    if chat and getattr(tokenizer, "chat_template", None):
        return chat_prompt(tokenizer, question) + "("
    return f"{question}\n\nAnswer: ("


def ab_pairs(
    tokenizer: Any, items: Sequence[ABItem], chat: bool = True, balance: Balance | None = None, seed: int = 0
) -> list[ContrastivePair]:
    """Training pairs: prompt + matching letter vs prompt + other letter, read at the letter.

    ``balance``: None (warn if the matching letter is unbalanced), ``"subsample"`` (equal counts) or
    ``"swap"`` (every question with both answer orders); see the module's notes."""
    return [ab_pair(tokenizer, item, chat) for item in balanced(items, balance, seed)]


def ab_pair(tokenizer: Any, item: ABItem, chat: bool = True) -> ContrastivePair:
    """One item as a pair: prompt + matching letter vs prompt + other letter."""
    prompt = ab_prompt(tokenizer, item.question, chat)
    return ContrastivePair(prompt + item.matching, prompt + item.not_matching)


Balance = Literal["subsample", "swap"]
BALANCES: tuple[Balance, ...] = ("subsample", "swap")


class LetterImbalanceWarning(UserWarning):
    """The matching answer letter is unbalanced: a vector trained on these items may encode the letter."""


def letter_counts(items: Sequence[ABItem]) -> dict[str, int]:
    """How many items have each letter as the matching answer."""
    return dict(sorted(Counter(item.matching for item in items).items()))


def check_letter_balance(items: Sequence[ABItem], max_difference: int = 1) -> bool:
    """Warn (``LetterImbalanceWarning``) and return False when the matching letters' counts differ by
    more than ``max_difference`` (43 A / 37 B is flagged: it was enough for a letter vector)."""
    counts = letter_counts(items)
    letters = sorted({i.matching for i in items} | {i.not_matching for i in items})
    if max(counts.get(x, 0) for x in letters) - min(counts.get(x, 0) for x in letters) <= max_difference:
        return True
    described = " / ".join(f"{counts.get(letter, 0)} {letter}" for letter in letters)
    warnings.warn(
        f"the matching answer letter is unbalanced ({described} of {len(items)} items): a vector trained on them "
        "can encode the letter rather than the behaviour. Balance them (balance='subsample') or add each "
        "question with its answers swapped (balance='swap', the CAA paper's design)",
        LetterImbalanceWarning,
        stacklevel=3,
    )
    return False


def balance_letters(items: Sequence[ABItem], seed: int = 0) -> list[ABItem]:
    """An equal number of items for each matching letter: the majority letters are subsampled (seeded),
    original order kept."""
    by_letter: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_letter.setdefault(item.matching, []).append(index)
    letters = sorted({i.matching for i in items} | {i.not_matching for i in items})
    keep = min(len(by_letter.get(letter, [])) for letter in letters)
    if keep == 0:
        raise ValueError(
            f"every item's matching answer is ({items[0].matching}): balancing would leave nothing; "
            "use swap_answer_order to give each question both orders"
        )
    rng = random.Random(seed)
    chosen = sorted(i for letter in letters for i in rng.sample(by_letter[letter], keep))
    return [items[i] for i in chosen]


_OPTION = re.compile(r"^[ \t]*\(([A-Z])\)[ \t]?", re.MULTILINE)


def swap_options(item: ABItem) -> ABItem:
    """The same question with the texts of its two options exchanged (so the other letter matches). An
    option is a line starting ``(A)``; its text runs to the next option's line, or to the end."""
    q = item.question
    markers = list(_OPTION.finditer(q))
    spans: dict[str, tuple[int, int]] = {}
    for k, marker in enumerate(markers):
        end = markers[k + 1].start() if k + 1 < len(markers) else len(q)
        text_end = marker.end() + len(q[marker.end() : end].rstrip())
        spans[marker.group(1)] = (marker.end(), text_end)
    if item.matching not in spans or item.not_matching not in spans:
        raise ValueError(
            f"cannot find the options ({item.matching}) and ({item.not_matching}) at the start of lines in "
            f"{q[:80]!r}: swapping needs '(A) text' and '(B) text' lines"
        )
    (a0, a1), (b0, b1) = sorted((spans[item.matching], spans[item.not_matching]))
    swapped = q[:a0] + q[b0:b1] + q[a1:b0] + q[a0:a1] + q[b1:]
    return ABItem(swapped, item.not_matching, item.matching)


def swap_answer_order(items: Sequence[ABItem]) -> list[ABItem]:
    """Each item, then the same question with its answers swapped: every question appears with both
    letters, so each letter matches the behaviour exactly half the time."""
    return [version for item in items for version in (item, swap_options(item))]


def balanced(items: Sequence[ABItem], balance: Balance | None, seed: int = 0) -> list[ABItem]:
    """``items`` as they are (with a warning if unbalanced), subsampled, or order-swapped."""
    if balance is None:
        check_letter_balance(items)
        return list(items)
    if balance == "subsample":
        return balance_letters(items, seed)
    if balance == "swap":
        return swap_answer_order(items)
    raise ValueError(f"unknown balance {balance!r}: use one of {', '.join(BALANCES)} or None")
