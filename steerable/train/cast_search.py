"""CAST's search options for ``find_best_condition_point``: a layer range, a threshold grid
(``threshold_range``, ``threshold_step``), conditions on several layers at once (the condition fires when
any of them does, as CAST's ``max_layers_to_combine``), and the analysis written as JSON.

Numbering: CAST steers and checks its condition at the *input* of layer L, which is the output of block
L - 1, where steerable reads: CAST layer L is steerable layer L - 1 (``cast_layer_range``, and
``Condition.from_cast``). CAST's comparator names the threshold: ``"larger"`` (the threshold is larger)
fires when the score is below it, steerable's ``"<"``; ``"smaller"`` is ``">"``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerable.conditions import Comparator, met

#: CAST's comparator -> steerable's
CAST_COMPARATORS: dict[str, Comparator] = {"larger": "<", "smaller": ">"}


def search_layers(
    layers: Sequence[int] | None,
    layer_range: tuple[int, int] | None,
    cast_layer_range: tuple[int, int] | None,
    default: list[int],
) -> list[int]:
    """The layers to search: ``layers``, ``range(*layer_range)`` (steerable numbering), or
    ``range(*cast_layer_range)`` shifted to steerable numbering (CAST layer L is layer L - 1)."""
    given = [x is not None for x in (layers, layer_range, cast_layer_range)]
    if sum(given) > 1:
        raise ValueError("give one of layers=, layer_range= and cast_layer_range=")
    if layer_range is not None:
        return list(range(*layer_range))
    if cast_layer_range is not None:
        if cast_layer_range[0] < 1:
            raise ValueError(
                f"cast_layer_range {cast_layer_range}: CAST layer 0's input is the embeddings, which steerable "
                "does not read; start at 1 (steerable layer 0)"
            )
        return [layer - 1 for layer in range(*cast_layer_range)]
    return list(layers) if layers is not None else default


def thresholds(
    threshold_range: tuple[float, float] | None, threshold_step: float | None
) -> Callable[[Tensor], list[float]] | None:
    """CAST's grid ``np.arange(*threshold_range, threshold_step)`` (None: midpoints between scores)."""
    if threshold_range is None and threshold_step is None:
        return None
    low, high = threshold_range if threshold_range is not None else (0.0, 1.0)
    step = threshold_step if threshold_step is not None else 0.01
    if step <= 0 or high <= low:
        raise ValueError(
            f"threshold_range {threshold_range} and threshold_step {threshold_step}: need low < high, step > 0"
        )
    grid = [float(t) for t in np.arange(low, high, step)]
    return lambda _scores: grid


def combined_grid(
    scores: dict[int, Float[Tensor, " prompts"]],
    labels: Bool[Tensor, " prompts"],
    train: Tensor,
    layers: list[int],
    comparators: Sequence[Comparator],
    candidates: Callable[[Tensor], list[float]],
    max_layers_to_combine: int,
    f1: Callable[[Tensor, Tensor], float],
) -> list[dict[str, Any]]:
    """One row per (layers combined, comparator): the threshold with the best training F1."""
    table: list[dict[str, Any]] = []
    for r in range(1, min(max_layers_to_combine, len(layers)) + 1):
        for combo in itertools.combinations(layers, r):
            pooled = torch.cat([scores[layer][train] for layer in combo])
            for comparator in comparators:
                best = (float("nan"), -1.0)
                for threshold in candidates(pooled):
                    fired = torch.stack([met(scores[layer][train], threshold, comparator) for layer in combo]).any(0)
                    value = f1(fired, labels[train])
                    if value > best[1]:
                        best = (threshold, value)
                table.append(
                    {"layers": list(combo), "comparator": comparator, "threshold": best[0], "train_f1": best[1]}
                )
    return table


def save_analysis(
    file_path: str | Path,
    best: dict[str, Any],
    table: list[dict[str, Any]],
    scores: dict[int, Tensor],
    labels: Tensor,
) -> Path:
    """CAST's analysis file: the best layers, threshold and comparator (both spellings), F1, each row of
    the search, and every prompt's score per layer (positive and negative apart). Returns the path."""
    path = Path(file_path)
    if path.is_dir() or str(file_path).endswith(("/", "\\")):
        path = path / "condition_point_analysis.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cast_name = {v: k for k, v in CAST_COMPARATORS.items()}
    summary = {
        "best_layers": best["layers"],
        "best_cast_layers": [layer + 1 for layer in best["layers"]],
        "best_threshold": best["threshold"],
        "best_comparator": best["comparator"],
        "best_direction": cast_name[best["comparator"]],
        "best_f1_score": best["train_f1"],
        "search": table,
        "scores": {
            str(layer): {"positive": s[labels].tolist(), "negative": s[~labels].tolist()} for layer, s in scores.items()
        },
    }
    path.write_text(json.dumps(summary, indent=2))
    return path
