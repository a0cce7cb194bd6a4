"""Picking a condition for conditional steering: a grid over layers, comparators and thresholds,
chosen by F1 on training prompts and reported on held-out ones (CAST's ``find_best_condition_point``)."""

from __future__ import annotations

import numbers
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerable.chat_roles import chat_prompt
from steerable.conditions import COMPARATORS, SCORES, AnyOf, Comparator, Condition, Score, condition_scores, met
from steerable.devices import input_device
from steerable.train import cast_search
from steerable.train.batching import takes_position_ids, tokenize
from steerable.vectors import SteeringVector


@dataclass
class ConditionSearch:
    """What ``find_best_condition_point`` found: the condition, and its quality on the training and
    held-out prompts (precision, recall, F1 of "the condition fires" against "the prompt is positive")."""

    condition: Any  # a Condition, or an AnyOf of conditions on several layers (max_layers_to_combine)
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
    """Each prompt's condition score at each of ``layers`` (the model as it is, unsteered if idle):
    left-padded batches with ``position_ids``, so each score is the prompt's alone (what the steering
    computes); the tokenizer is not changed."""
    prompts = _prompts("prompts", prompts)
    score = _score(score)
    _check_layers(vector, layers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    out: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    device, with_positions = input_device(model), takes_position_ids(model)
    for start in range(0, len(prompts), batch_size):
        batch = tokenize(tokenizer, prompts[start : start + batch_size], padding_side="left").to(device)
        with torch.inference_mode(), model.record(layers=list(layers)) as recording:
            model(**batch.inputs(with_positions))
        for layer in layers:
            hidden, direction = recording[layer], vector[layer]
            if hidden.shape[-1] != direction.shape[-1]:
                raise ValueError(
                    f"the vector's layer {layer} has size {direction.shape[-1]} but the model's hidden size is "
                    f"{hidden.shape[-1]}: use a vector trained on this model"
                )
            out[layer].append(condition_scores(hidden, batch.attention_mask.bool(), direction, score).cpu())
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
    *,
    layer_range: tuple[int, int] | None = None,
    cast_layer_range: tuple[int, int] | None = None,
    threshold_range: tuple[float, float] | None = None,
    threshold_step: float | None = None,
    max_layers_to_combine: int = 1,
    file_path: str | Path | None = None,
    chat_template: bool = False,
) -> ConditionSearch:
    """Grid search over ``layers`` (default: the vector's), comparators and thresholds for the condition
    that best tells ``positive`` prompts (the condition should fire) from ``negative`` ones, by F1 on a
    seeded training split; reports precision, recall and F1 on the held-out rest. Give
    ``test_positive``/``test_negative`` to search on all of ``positive``/``negative`` and report on those
    instead (e.g. when the condition vector was trained on a split of your own). Prompts are used as
    given (format them with the chat template first if the model will see them so). Warns when a split
    has no positive or no negative prompt, or the best condition has F1 0 (it tells nothing apart).

    CAST's options (see ``steerable.train.cast_search`` for its layer numbering and comparators):
    ``layer_range`` (steerable numbering) or ``cast_layer_range`` (CAST's: layer L is steerable's L - 1),
    ``threshold_range`` / ``threshold_step`` (a grid, in place of midpoints), ``max_layers_to_combine``
    (a condition on several layers, firing when any does: an ``AnyOf``), ``file_path`` (write CAST's
    analysis JSON there), ``chat_template`` (format each prompt as a user turn, as CAST's ``respond``).
    CAST searches on all prompts: pass ``held_out=0`` for its split."""
    score, comparators = _score(score), _comparators(comparators)
    layer_list = cast_search.search_layers(layers, layer_range, cast_layer_range, vector.layers)
    _check_layers(vector, layer_list)
    if chat_template:
        positive, negative = (
            [chat_prompt(tokenizer, p) for p in positive],
            [chat_prompt(tokenizer, p) for p in negative],
        )
    prompts, label_tensor, train, test = _splits(positive, negative, test_positive, test_negative, held_out, seed)
    scores = prompt_scores(model, tokenizer, prompts, vector, layer_list, score)
    candidates = cast_search.thresholds(threshold_range, threshold_step) or _midpoints
    table = cast_search.combined_grid(
        scores, label_tensor, train, layer_list, comparators, candidates, max_layers_to_combine, _f1
    )
    best = max(table, key=lambda row: row["train_f1"])
    if file_path is not None:
        cast_search.save_analysis(file_path, best, table, scores, label_tensor)
    return _searched(vector, score, best, table, scores, label_tensor, train, test)


def _searched(
    vector: SteeringVector,
    score: Score,
    best: dict[str, Any],
    table: list[dict[str, Any]],
    scores: dict[int, Tensor],
    labels: Tensor,
    train: Tensor,
    test: Tensor,
) -> ConditionSearch:
    """The search's result: the best condition (an ``AnyOf`` over several layers) and its quality."""
    leaves = [
        Condition(vector, int(layer), float(best["threshold"]), best["comparator"], score) for layer in best["layers"]
    ]
    condition: Any = leaves[0] if len(leaves) == 1 else AnyOf(tuple(leaves))
    fired = torch.stack([met(scores[leaf.layer], leaf.threshold, leaf.comparator) for leaf in leaves]).any(0)
    for row in table:  # one layer: the row says "layer", as before
        if len(row["layers"]) == 1:
            row["layer"] = row["layers"][0]
    result = ConditionSearch(
        condition,
        classification(fired[train], labels[train]),
        classification(fired[test], labels[test]) if len(test) else {},
        table,
    )
    if result.train["f1"] == 0.0:
        warnings.warn(
            "the best condition has F1 0 on the training prompts: no layer, comparator and threshold tells the "
            "positive prompts from the negative ones; check the prompts and the vector",
            stacklevel=2,
        )
    return result


def _midpoints(scores: Tensor) -> list[float]:
    """Thresholds between neighbouring scores, and just outside them."""
    values = torch.unique(scores.float())
    return torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1:] + 1e-6]).tolist()


def _f1(predicted: Tensor, actual: Tensor) -> float:
    return classification(predicted, actual)["f1"]


def _splits(
    positive: Sequence[str],
    negative: Sequence[str],
    test_positive: Sequence[str] | None,
    test_negative: Sequence[str] | None,
    held_out: float,
    seed: int,
) -> tuple[list[str], Bool[Tensor, " prompts"], Tensor, Tensor]:
    """All prompts, their labels, and the training and held-out indices into them; warns when a split
    has no positive or no negative prompt (its F1 says nothing then)."""
    positive, negative = _prompts("positive", positive), _prompts("negative", negative)
    if not positive or not negative:
        raise ValueError("give at least one positive and one negative prompt")
    prompts = positive + negative
    labels = [True] * len(positive) + [False] * len(negative)
    if test_positive is not None or test_negative is not None:
        given_positive = _prompts("test_positive", test_positive or [])
        given_negative = _prompts("test_negative", test_negative or [])
        train = torch.arange(len(prompts))
        test = torch.arange(len(prompts), len(prompts) + len(given_positive) + len(given_negative))
        prompts += given_positive + given_negative
        labels += [True] * len(given_positive) + [False] * len(given_negative)
    else:
        if isinstance(held_out, bool) or not isinstance(held_out, numbers.Real) or not 0 <= held_out < 1:
            raise ValueError(
                f"held_out must be a fraction in [0, 1), got {held_out!r}: the share of prompts kept back to "
                "report on (0 to search on all of them; give test_positive/test_negative to report on others)"
            )
        order = list(range(len(prompts)))
        random.Random(seed).shuffle(order)
        n_held = round(float(held_out) * len(prompts))
        test, train = torch.tensor(sorted(order[:n_held]), dtype=torch.long), torch.tensor(sorted(order[n_held:]))
    label_tensor = torch.tensor(labels)
    for name, split in (("training", train), ("held-out", test)):
        if len(split) and (bool(label_tensor[split].all()) or not bool(label_tensor[split].any())):
            missing = "negative" if bool(label_tensor[split].all()) else "positive"
            warnings.warn(
                f"the {name} split has no {missing} prompt, so its precision, recall and F1 say nothing: give "
                f"more prompts, change held_out or seed, or pass test_positive and test_negative",
                stacklevel=3,
            )
    return prompts, label_tensor, train, test


def _prompts(name: str, prompts: Any) -> list[str]:
    """``prompts`` as a list of strings; one string is refused (it would be read as its characters)."""
    if isinstance(prompts, str):
        raise TypeError(f"{name} must be a list of prompts, not one string: wrap it in a list ([{prompts!r}])")
    listed = list(prompts)
    bad = next((p for p in listed if not isinstance(p, str)), None)
    if bad is not None:
        raise TypeError(f"{name} must hold prompt strings, got {type(bad).__name__}: {bad!r}")
    return listed


def _score(score: Any) -> Score:
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}: use one of {', '.join(map(repr, SCORES))}")
    return score  # type: ignore[no-any-return]


def _comparators(comparators: Any) -> list[Comparator]:
    listed = [comparators] if isinstance(comparators, str) else list(comparators)
    bad = [c for c in listed if c not in COMPARATORS]
    if bad or not listed:
        raise ValueError(
            f"unknown comparators {bad!r}: use some of {', '.join(map(repr, COMPARATORS))}"
            if bad
            else "comparators is empty: give some of '>' and '<'"
        )
    return cast(list[Comparator], listed)


def _check_layers(vector: SteeringVector, layers: Sequence[int]) -> None:
    if not layers:
        raise ValueError("layers is empty: give at least one layer the vector has")
    missing = [layer for layer in layers if layer not in vector]
    if missing:
        raise ValueError(f"the vector has no layers {missing} (it has {vector.layers}): search only layers it has")
