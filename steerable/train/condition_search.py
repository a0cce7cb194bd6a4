"""Picking a condition for conditional steering: a grid over layers, comparators and thresholds,
chosen by F1 on training prompts and reported on held-out ones (CAST's ``find_best_condition_point``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerable.conditions import COMPARATORS, Comparator, Condition, Score, condition_scores, met
from steerable.vectors import SteeringVector


@dataclass
class ConditionSearch:
    """What ``find_best_condition_point`` found: the condition, and its quality on the training and
    held-out prompts (precision, recall, F1 of "the condition fires" against "the prompt is positive")."""

    condition: Condition
    train: dict[str, float]
    held_out: dict[str, float]
    table: list[dict[str, Any]] = field(default_factory=list)  # the best threshold per (layer, comparator)


def classification(predicted: Tensor, actual: Tensor) -> dict[str, float]:
    tp = float((predicted & actual).sum())
    fp = float((predicted & ~actual).sum())
    fn = float((~predicted & actual).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def best_threshold(
    scores: Float[Tensor, " n"], labels: Bool[Tensor, " n"], comparators: Sequence[Comparator] = COMPARATORS
) -> tuple[float, Comparator, float]:
    """(threshold, comparator, F1): the split of ``scores`` that best recovers ``labels``; thresholds
    are midpoints between neighbouring scores."""
    values = torch.unique(scores.float())
    candidates = torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1:] + 1e-6])
    best: tuple[float, Comparator, float] = (float(candidates[0]), comparators[0], -1.0)
    for comparator in comparators:
        for threshold in candidates.tolist():
            f1 = classification(met(scores, threshold, comparator), labels)["f1"]
            if f1 > best[2]:
                best = (float(threshold), comparator, f1)
    return best


def prompt_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    vector: SteeringVector,
    layers: Sequence[int],
    score: Score = "projection",
    batch_size: int = 16,
) -> dict[int, Float[Tensor, " prompts"]]:
    """Each prompt's condition score at each of ``layers`` (the model as it is, unsteered if idle)."""
    out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            device = next(model.parameters()).device
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
            with torch.inference_mode(), model.record(layers=list(layers)) as recording:
                model(**inputs)
            for layer in layers:
                out[layer].append(
                    condition_scores(recording[layer], inputs["attention_mask"].bool(), vector[layer], score).cpu()
                )
    finally:
        tokenizer.padding_side = padding_side
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def find_best_condition_point(
    model: Any,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    vector: SteeringVector,
    layers: Sequence[int] | None = None,
    score: Score = "projection",
    comparators: Sequence[Comparator] = COMPARATORS,
    held_out: float = 0.25,
    seed: int = 0,
    test_positive: Sequence[str] | None = None,
    test_negative: Sequence[str] | None = None,
) -> ConditionSearch:
    """Grid search over ``layers`` (default: the vector's), comparators and thresholds for the condition
    that best tells ``positive`` prompts (the condition should fire) from ``negative`` ones, by F1 on a
    seeded training split; reports precision, recall and F1 on the held-out rest. Give
    ``test_positive``/``test_negative`` to search on all of ``positive``/``negative`` and report on those
    instead (e.g. when the condition vector was trained on a split of your own). Prompts are used as
    given (format them with the chat template first if the model will see them so)."""
    if not positive or not negative:
        raise ValueError("give at least one positive and one negative prompt")
    layer_list = list(layers) if layers is not None else vector.layers
    prompts = list(positive) + list(negative)
    labels = [True] * len(positive) + [False] * len(negative)
    if test_positive is not None or test_negative is not None:
        given = list(test_positive or []) + list(test_negative or [])
        train = torch.arange(len(prompts))
        test = torch.arange(len(prompts), len(prompts) + len(given))
        prompts += given
        labels += [True] * len(test_positive or []) + [False] * len(test_negative or [])
    else:
        order = list(range(len(prompts)))
        random.Random(seed).shuffle(order)
        n_held = round(held_out * len(prompts))
        test, train = torch.tensor(sorted(order[:n_held]), dtype=torch.long), torch.tensor(sorted(order[n_held:]))
    n_test = len(test)
    label_tensor = torch.tensor(labels)
    scores = prompt_scores(model, tokenizer, prompts, vector, layer_list, score)
    table: list[dict[str, Any]] = []
    for layer in layer_list:
        for comparator in comparators:
            threshold, _, f1 = best_threshold(scores[layer][train], label_tensor[train], [comparator])
            table.append({"layer": layer, "comparator": comparator, "threshold": threshold, "train_f1": f1})
    best = max(table, key=lambda row: row["train_f1"])
    condition = Condition(vector, int(best["layer"]), float(best["threshold"]), best["comparator"], score)
    fired = met(scores[condition.layer], condition.threshold, condition.comparator)
    return ConditionSearch(
        condition,
        classification(fired[train], label_tensor[train]),
        classification(fired[test], label_tensor[test]) if n_test else {},
        table,
    )
