"""Datasets the package ships (written for this project), formatted as contrastive pairs."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from steerable.chat_roles import chat_prompt
from steerable.train.pairs import ContrastivePair


def _load(name: str) -> Any:
    return json.loads(resources.files("steerable.data").joinpath(name).read_text(encoding="utf-8"))


def sentiment_pairs(tokenizer: Any) -> list[ContrastivePair]:
    """Chat-formatted (positive reply, negative reply) pairs, read as the mean over each reply's tokens."""
    pairs = []
    for item in _load("sentiment_pairs.json")["pairs"]:
        prompt = chat_prompt(tokenizer, item["prompt"])
        start = len(tokenizer(prompt)["input_ids"])  # the reply's first token
        pairs.append(
            ContrastivePair(
                prompt + item["positive"],
                prompt + item["negative"],
                read_positive_token_index=slice(start, None),
                read_negative_token_index=slice(start, None),
            )
        )
    return pairs


def sentiment_preferences(tokenizer: Any) -> list[Any]:
    """The same data as (chat prompt, positive reply, negative reply) preferences, for learned vectors."""
    from steerable.train.learned import Preference

    return [
        Preference(chat_prompt(tokenizer, item["prompt"]), item["positive"], item["negative"])
        for item in _load("sentiment_pairs.json")["pairs"]
    ]


def topic_prompts() -> tuple[list[str], list[str]]:
    """(prompts about food and cooking, prompts about other topics): for conditional steering."""
    data = _load("topic_prompts.json")
    return list(data["food"]), list(data["other"])


def sentiment_prompts() -> list[str]:
    """Held-out user prompts (not in the training pairs)."""
    return list(_load("sentiment_prompts.json")["prompts"])
