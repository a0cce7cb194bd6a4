"""Conditional steering (CAST, "Programming Refusal with Conditional Activation Steering", arXiv
2409.05504): steer only the rows whose prompt meets a condition.

A :class:`Condition` is a direction at one decoder layer, a threshold and a comparison. Its score for a
row is taken on the output of that layer, over the row's prompt tokens:

- ``score="projection"`` (CAST's, the default): the cosine between the row's mean hidden state ``h``
  and ``tanh(proj(h))``, its projection onto the direction squashed by ``tanh`` (as the reference
  implementation computes it);
- ``score="cosine"``: the cosine between ``h`` and the direction itself (signed).

The row meets the condition when ``score > threshold`` (``comparator=">"``) or ``score < threshold``
(``"<"``). Conditions compose with ``&`` and ``|``.

When it is decided: once per sequence, on the prompt, in the first forward of the sequence; with a KV
cache the decision is kept with the cache and held for the whole generation, so cached generation
equals uncached. The behaviour is applied at its layers, which must not come before the condition's
layers (the decision is made there). Everything is masks: no Python branching on data in the forward.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from steerable.vectors import SteeringVector

Comparator = Literal[">", "<"]
Score = Literal["projection", "cosine"]
COMPARATORS: tuple[Comparator, ...] = (">", "<")
SCORES: tuple[Score, ...] = ("projection", "cosine")


class _Composable:
    def __and__(self, other: Any) -> AllOf:
        return AllOf((self, _expression(other)))  # type: ignore[arg-type]

    def __or__(self, other: Any) -> AnyOf:
        return AnyOf((self, _expression(other)))  # type: ignore[arg-type]

    def __bool__(self) -> bool:
        # `c1 and c2` would silently be `c2`: Python's and/or ask for truth, which a condition has not
        raise TypeError("a condition has no truth value: combine conditions with & (all of) and | (any of)")


@dataclass(frozen=True, eq=False)
class Condition(_Composable):
    """Rows whose prompt scores ``comparator threshold`` on ``vector`` at ``layer`` (see the module)."""

    vector: SteeringVector | Tensor
    layer: int
    threshold: float
    comparator: Comparator = ">"
    score: Score = "projection"

    @classmethod
    def from_cast(
        cls, vector: SteeringVector | Tensor, cast_layer: int, threshold: float, comparator_threshold_is: str = "larger"
    ) -> Condition:
        """CAST's condition (``condition_layer_ids=[cast_layer]``, ``condition_comparator_threshold_is``): CAST
        checks the input of layer L, steerable's layer L - 1; ``"larger"`` fires below the threshold (``"<"``),
        ``"smaller"`` above it (``">"``). A ``SteeringVector`` keeps steerable's layer numbering."""
        comparators = {"larger": "<", "smaller": ">"}
        if comparator_threshold_is not in comparators:
            raise ValueError(f"CAST's comparator is 'larger' or 'smaller', got {comparator_threshold_is!r}")
        if cast_layer < 1:
            raise ValueError(f"CAST layer {cast_layer}: its input is the embeddings, which steerable does not read")
        return cls(vector, cast_layer - 1, threshold, comparators[comparator_threshold_is])  # type: ignore[arg-type]

    def direction(self) -> Float[Tensor, " d_model"]:
        if isinstance(self.vector, SteeringVector):
            if self.layer not in self.vector:
                raise ValueError(f"the condition vector has no layer {self.layer} (it has {self.vector.layers})")
            tensor = self.vector[self.layer]
        else:
            tensor = self.vector
        if not isinstance(tensor, Tensor) or tensor.ndim != 1 or not tensor.is_floating_point():
            raise ValueError("a condition's vector must be one floating-point direction [d_model] at its layer")
        return tensor.detach().float()


@dataclass(frozen=True, eq=False)
class AllOf(_Composable):
    parts: tuple[Condition | AllOf | AnyOf, ...]


@dataclass(frozen=True, eq=False)
class AnyOf(_Composable):
    parts: tuple[Condition | AllOf | AnyOf, ...]


Expression = Condition | AllOf | AnyOf


def _expression(value: Any) -> Expression:
    if not isinstance(value, (Condition, AllOf, AnyOf)):
        raise TypeError(f"conditions combine with conditions (& and |), got {type(value).__name__}")
    return value


def leaves(expression: Expression) -> list[Condition]:
    """The conditions of an expression, in order."""
    if isinstance(expression, Condition):
        return [expression]
    return [leaf for part in expression.parts for leaf in leaves(part)]


def validate(expression: Any, num_layers: int | None = None, hidden_size: int | None = None) -> list[Condition]:
    """Every condition checked (its layer against ``num_layers`` and its width against ``hidden_size``
    when a model is known); an error says which part is wrong and how to fix it."""
    conditions = leaves(_expression(expression))
    for condition in conditions:
        layer = condition.layer
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"a condition layer must be an int, got {layer!r}")
        if num_layers is not None and not -num_layers <= layer < num_layers:
            raise IndexError(
                f"condition layer {layer} is out of range: the model has {num_layers} decoder layers "
                f"(use 0..{num_layers - 1})"
            )
        direction = condition.direction()
        if hidden_size is not None and direction.shape[0] != hidden_size:
            raise ValueError(
                f"the condition vector has hidden size {direction.shape[0]} but the model's is {hidden_size}"
            )
        if not bool(torch.isfinite(direction).all()) or float(direction.norm()) == 0.0:
            raise ValueError("the condition vector must be finite and non-zero")
        if isinstance(condition.threshold, bool) or not isinstance(condition.threshold, numbers.Real):
            raise TypeError(f"a condition threshold must be a number, got {condition.threshold!r}")
        if not math.isfinite(float(condition.threshold)):
            raise ValueError(f"a condition threshold must be finite, got {condition.threshold}")
        if condition.comparator in ("larger", "smaller"):  # CAST's condition_comparator_threshold_is
            ours = "<" if condition.comparator == "larger" else ">"
            raise ValueError(
                f"comparator {condition.comparator!r} is CAST's, where it names the threshold: CAST's "
                f"{condition.comparator!r} fires when the score is {'below' if ours == '<' else 'above'} the "
                f"threshold, comparator={ours!r} here (Condition.from_cast converts CAST's layer and comparator)"
            )
        if condition.comparator not in COMPARATORS:
            raise ValueError(f"unknown comparator {condition.comparator!r}: use '>' or '<'")
        if condition.score not in SCORES:
            raise ValueError(f"unknown score {condition.score!r}: use one of {', '.join(SCORES)}")
    return conditions


def to_dict(expression: Expression, name_of: Callable[[SteeringVector], str]) -> dict[str, Any]:
    """A JSON-able form: a condition's fields (its vector named by ``name_of``), or
    ``{"all_of": [...]}`` / ``{"any_of": [...]}``."""
    if isinstance(expression, Condition):
        if not isinstance(expression.vector, SteeringVector):
            raise ValueError("a condition on a raw tensor cannot be named: give it a SteeringVector")
        return {
            "vector": name_of(expression.vector),
            "layer": expression.layer,
            "threshold": float(expression.threshold),
            "comparator": expression.comparator,
            "score": expression.score,
        }
    key = "all_of" if isinstance(expression, AllOf) else "any_of"
    return {key: [to_dict(part, name_of) for part in expression.parts]}


def from_dict(data: Any, find: Callable[[Any], SteeringVector]) -> Expression:
    """The expression ``data`` describes (see :func:`to_dict`); ``find`` resolves vector names."""
    if not isinstance(data, dict):
        raise TypeError(f"a condition must be a dict, got {type(data).__name__}")
    for key, kind in (("all_of", AllOf), ("any_of", AnyOf)):
        if key in data:
            parts = data[key]
            if set(data) != {key} or not isinstance(parts, list) or not parts:
                raise ValueError(f"{key!r} takes a non-empty list of conditions and nothing beside it")
            return kind(tuple(from_dict(part, find) for part in parts))
    fields = {"vector", "layer", "threshold", "comparator", "score"}
    if not {"vector", "layer", "threshold"} <= set(data) <= fields:
        raise ValueError(
            f"a condition has keys vector, layer, threshold (and optionally comparator, score); got {sorted(data)}"
        )
    expression = Condition(**{**data, "vector": find(data["vector"])})
    validate(expression)
    return expression


def condition_scores(
    hidden: Float[Tensor, "batch seq d_model"],
    prompt: Bool[Tensor, "batch seq"],
    direction: Float[Tensor, " d_model"],
    score: Score = "projection",
) -> Float[Tensor, " batch"]:
    """Each row's score: its mean hidden state over its ``prompt`` tokens against ``direction``."""
    # in float32 whatever the model's dtype: an fp16 sum over a long prompt overflows to inf
    weight = rearrange(prompt.float(), "b s -> b s 1")
    mean = (hidden.float() * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    unit = direction.to(mean.device, mean.dtype)
    unit = unit / unit.norm()
    if score == "projection":
        target = torch.tanh(rearrange(mean @ unit, "b -> b 1") * unit)
    else:
        target = rearrange(unit, "d -> 1 d").expand_as(mean)
    return torch.nn.functional.cosine_similarity(mean, target, dim=-1, eps=1e-12)


def met(scores: Float[Tensor, " batch"], threshold: Tensor | float, comparator: str) -> Bool[Tensor, " batch"]:
    """Whether each score meets ``comparator threshold``, compared in float64 (a threshold is never
    rounded onto a score). A NaN score (non-finite hidden states) meets no condition."""
    threshold = torch.as_tensor(threshold, dtype=torch.float64, device=scores.device)
    return scores.double() > threshold if comparator == ">" else scores.double() < threshold


def met_signed(scores: Float[Tensor, " batch"], threshold: Float[Tensor, ""], sign: Tensor) -> Bool[Tensor, " batch"]:
    """:func:`met` with the comparator as a tensor (``sign`` +1 for ``>``, -1 for ``<``), so conditions
    that differ only in their comparator or threshold run the same compiled graph."""
    return (scores.double() - threshold.double()) * sign > 0


_MOVED_TO_SEARCH = ("find_best_condition_point", "ConditionSearch", "best_threshold", "prompt_scores", "classification")


def __getattr__(name: str) -> Any:
    """0.1 spellings: picking a condition moved to ``steerable.train.condition_search``."""
    if name in _MOVED_TO_SEARCH:
        import warnings

        from steerable.train import condition_search

        warnings.warn(
            f"steerable.conditions.{name} moved in steerable 0.2: import it from steerable.train.condition_search "
            "(or from steerable)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(condition_search, name)
    raise AttributeError(f"module 'steerable.conditions' has no attribute {name!r}")
