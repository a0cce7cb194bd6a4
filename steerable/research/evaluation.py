"""Evaluating steering: CAA-style A/B behaviour questions, open-ended generations (judge and fluency),
and multiplier/layer sweeps that put many multipliers into one batched forward (one per row).

A/B data (the format of "Steering Llama 2 via Contrastive Activation Addition", arXiv 2312.06681) is a
JSON list of items ``{"question": "...(A) ...(B) ...", "answer_matching_behavior": "(A)",
"answer_not_matching_behavior": "(B)"}``. The metric is p(matching letter) / (p(A) + p(B)) at the
answer-letter position, averaged over items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from steerable.chat_roles import chat_prompt
from steerable.devices import input_device
from steerable.research.ab import ABItem, ab_pairs, ab_prompt, load_ab_dataset
from steerable.research.arguments import nonempty
from steerable.research.undefined import undefined
from steerable.train.batching import tokenize
from steerable.vectors import SteeringVector

__all__ = ["ABItem", "ab_pairs", "ab_prompt", "load_ab_dataset"]  # A/B data lives in steerable.research.ab


def _letter_id(tokenizer: Any, prompt: str, letter: str) -> int:
    with_letter = tokenizer(prompt + letter)["input_ids"]
    without = tokenizer(prompt)["input_ids"]
    if len(with_letter) != len(without) + 1 or with_letter[: len(without)] != without:
        raise ValueError(f"the letter {letter!r} is not one token after the prompt for this tokenizer")
    return int(with_letter[-1])


def ab_scores(
    model: Any,
    tokenizer: Any,
    items: Sequence[ABItem],
    vector: SteeringVector | None = None,
    multipliers: Sequence[float] = (0.0,),
    chat: bool = True,
    batch_size: int = 16,
    show_progress: bool | None = None,
) -> Float[Tensor, "items multipliers"]:
    """p(matching) / (p(A) + p(B)) for every item at every multiplier. Each (item, multiplier) is one
    row of a batch, with its own multiplier: a grid costs forwards for its rows, not per multiplier.
    Progress bar: on for 4 batches or more, unless ``show_progress`` says otherwise."""
    items = nonempty(items, "items", "the A/B items to score (load_ab_dataset reads a CAA file)")
    multipliers = nonempty(multipliers, "multipliers", "the multipliers to score at, e.g. [0.0] or [-1, 0, 1]")
    prompts = [ab_prompt(tokenizer, i.question, chat) for i in items]
    letters = [
        (_letter_id(tokenizer, p, i.matching), _letter_id(tokenizer, p, i.not_matching))
        for p, i in zip(prompts, items, strict=True)
    ]
    rows = [(k, j) for k in range(len(items)) for j in range(len(multipliers))]
    scores = torch.zeros(len(items), len(multipliers))
    starts = range(0, len(rows), batch_size)
    progress = show_progress if show_progress is not None else len(starts) >= 4
    for start in tqdm(starts, desc="A/B evaluation", disable=not progress):
        chunk = rows[start : start + batch_size]
        # left-padded, with position_ids: each row's last token is its answer position, as alone
        batch = tokenize(tokenizer, [prompts[k] for k, _ in chunk], padding_side="left")
        inputs = batch.to(input_device(model)).inputs()
        row_multipliers = torch.tensor([float(multipliers[j]) for _, j in chunk])
        with torch.inference_mode():
            if vector is None:
                logits = model(**inputs).logits[:, -1].float()
            else:
                with model.steer(vector, row_multipliers):
                    logits = model(**inputs).logits[:, -1].float()
        probs = logits.softmax(-1).cpu()
        for row, (k, j) in enumerate(chunk):
            match, other = letters[k]
            scores[k, j] = probs[row, match] / (probs[row, match] + probs[row, other])
    return scores


def steerability(
    scores: Float[Tensor, "items multipliers"], multipliers: Sequence[float]
) -> tuple[Float[Tensor, " items"], float]:
    """Per-item slope of the metric over multipliers (least squares) and the fraction of items whose
    slope is negative (anti-steerable), as in arXiv 2407.12404. A slope needs two different
    multipliers and scores that are not NaN: otherwise it is NaN (and the fraction NaN), with an
    ``UndefinedStatisticWarning``, since ``(nan < 0)`` would count an undefined slope as steerable."""
    x = torch.tensor([float(m) for m in multipliers])
    x = x - x.mean()
    if float((x * x).sum()) == 0.0:
        nan = undefined("steerability", f"a slope needs at least two different multipliers, got {list(multipliers)}")
        return torch.full((scores.shape[0],), nan), nan
    slopes = ((scores - scores.mean(1, keepdim=True)) * x).sum(1) / (x * x).sum()
    nans = int(slopes.isnan().sum())
    if nans:
        return slopes, undefined("the anti-steerable fraction", f"{nans} of {slopes.numel()} items' slopes are NaN")
    return slopes, float((slopes < 0).float().mean())


# -- open-ended ----------------------------------------------------------------------------------
def vader_judge() -> Callable[[str], float]:
    """VADER's compound sentiment score in [-1, 1] (its lexicon ships in the package)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda text: float(analyzer.polarity_scores(text)["compound"])


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the whitespace tokens (1.0: no repetition)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def perplexity(model: Any, tokenizer: Any, prompt: str, continuation: str) -> float:
    """Perplexity of ``continuation`` after ``prompt`` under ``model`` as it is (unsteered, if idle)."""
    start = len(tokenizer(prompt)["input_ids"])
    ids = tokenizer(prompt + continuation, return_tensors="pt")["input_ids"].to(input_device(model))
    if ids.shape[1] <= start:
        return float("nan")
    with torch.inference_mode():
        logprobs = model(ids).logits[0, start - 1 : -1].float().log_softmax(-1)
    chosen = logprobs.gather(-1, ids[0, start:, None])
    return float(math.exp(-chosen.mean()))


@dataclass
class Generation:
    prompt: str
    multiplier: float
    text: str
    judge: float
    perplexity: float
    distinct2: float


def open_ended(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    vector: SteeringVector,
    multipliers: Sequence[float],
    judge: Callable[[str], float] | None = None,
    max_new_tokens: int = 40,
    chat: bool = True,
    show_progress: bool | None = None,
) -> list[Generation]:
    """Greedy generations for every prompt at every multiplier (one batched ``generate`` per prompt,
    one multiplier per row), scored by ``judge`` (default: VADER) and by fluency: one ``Generation``
    per (prompt, multiplier), the per-item scores. Progress bar: on for 2 prompts or more."""
    prompts = nonempty(prompts, "prompts", "the user prompts to generate from")
    multipliers = nonempty(multipliers, "multipliers", "the multipliers to generate at, e.g. [-4, 0, 4]")
    judge = judge or vader_judge()
    results = []
    progress = show_progress if show_progress is not None else len(prompts) >= 2
    for user in tqdm(prompts, desc="Open-ended generations", disable=not progress):
        prompt = chat_prompt(tokenizer, user) if chat else user
        ids = tokenizer([prompt] * len(multipliers), return_tensors="pt")
        ids = {k: v.to(input_device(model)) for k, v in ids.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode(), model.steer(vector, torch.tensor([float(m) for m in multipliers])):
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        texts = tokenizer.batch_decode(out[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        for m, text in zip(multipliers, texts, strict=True):
            results.append(
                Generation(
                    user, float(m), text, judge(text), perplexity(model, tokenizer, prompt, text), distinct_n(text)
                )
            )
    return results
