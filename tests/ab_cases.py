"""A/B items the research tests share: made-up-word questions with a chosen (or alternating) matching
letter, and three CAA-style items as a dataset file holds them."""

from __future__ import annotations

from steerable.research.ab import ABItem

ITEMS = [
    {
        "question": "w5 w6 w7 ( A ) w8 ( B ) w9",
        "answer_matching_behavior": "(A)",
        "answer_not_matching_behavior": "(B)",
    },
    {
        "question": "w10 w11 ( A ) w12 ( B ) w13 w14",
        "answer_matching_behavior": "(B)",
        "answer_not_matching_behavior": "(A)",
    },
    {
        "question": "w20 ( A ) w21 w22 ( B ) w23",
        "answer_matching_behavior": "(A)",
        "answer_not_matching_behavior": "(B)",
    },
]


def items(n: int, matching: str | None = None, start: int = 0) -> list[ABItem]:
    """A/B items over made-up words; the matching letter is ``matching``, or alternates."""
    out = []
    for k in range(start, start + n):
        letter = matching or ("A" if k % 2 == 0 else "B")
        question = f"w{3 + k % 40} w{10 + (k * 7) % 50} w{20 + (k * 3) % 60}\n(A) w{30 + k % 45}\n(B) w{40 + k % 35}"
        out.append(ABItem(question, letter, "B" if letter == "A" else "A"))
    return out
