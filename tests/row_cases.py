"""What the conditional and per-request tests share: five prompts of different lengths, conditions some
of them meet, and each row run alone (the oracle)."""

from __future__ import annotations

import torch

from steerable import Condition, SteeringVector
from steerable.conditions import condition_scores
from steerable.testing.hooks import left_pad

ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21, 22], [23, 24]]


GENERATE = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


def direction(seed: int, d: int = 32) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def behaviour() -> SteeringVector:
    return SteeringVector({1: direction(1) * 3, 2: direction(2) * 3})


def prompt_scores(model, condition_direction: torch.Tensor, layer: int, score: str = "projection") -> torch.Tensor:
    """Each row's score, each row run alone: the oracle for which rows meet a condition."""
    out = []
    for row in ROWS:
        with torch.no_grad(), model.record(layers=[layer]) as recording:
            model(input_ids=torch.tensor([row]))
        out.append(
            condition_scores(recording[layer], torch.ones(1, len(row), dtype=torch.bool), condition_direction, score)
        )
    return torch.cat(out)


def median_condition(
    model, layer: int = 0, comparator: str = ">", seed: int = 3, score: str = "projection"
) -> tuple[Condition, torch.Tensor]:
    """A condition some rows meet and some do not, and the oracle's rows."""
    c = direction(seed)
    scores = prompt_scores(model, c, layer, score)
    ordered = scores.sort().values
    threshold = float(ordered[1] + ordered[2]) / 2  # well between two rows: padding cannot tip a row over
    chosen = scores > threshold if comparator == ">" else scores < threshold
    assert 0 < int(chosen.sum()) < len(ROWS)
    return Condition(c, layer, threshold, comparator, score), chosen


def alone(model, row: list[int], steer: dict | None, **generate) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``row`` run by itself: its logits and its greedy continuation, steered as ``steer`` says."""
    ids = torch.tensor([row])
    with torch.no_grad():
        if steer is None:
            return model(input_ids=ids).logits[0], model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **generate
            )[0, len(row) :]
        with model.steer(**steer):
            return model(input_ids=ids).logits[0], model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **generate
            )[0, len(row) :]


def batched(model, **generate) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = left_pad(ROWS)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        out = model.generate(input_ids=ids, attention_mask=mask, **generate)
    return logits, out[:, ids.shape[1] :], mask
