"""steering-vectors' operators: ``(activation, multiplier * vector) -> delta`` callables. Each carries the
name of the steerable operator with the same effect, which ``SteeringVector.apply`` uses in its place."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

PatchDeltaOperator = Callable[[Tensor, Tensor], Tensor]


def _named(fn: PatchDeltaOperator, steerable_name: str) -> PatchDeltaOperator:
    fn.steerable_operator = steerable_name  # type: ignore[attr-defined]
    return fn


def addition_operator() -> PatchDeltaOperator:
    """Add the steering vector (the default)."""

    def _addition_operator(_original_activation: Tensor, steering_vector: Tensor) -> Tensor:
        return steering_vector

    return _named(_addition_operator, "add")


def ablation_operator() -> PatchDeltaOperator:
    """Remove the activation's component along the steering vector (the multiplier does not matter)."""

    def _ablation_operator(original_activation: Tensor, steering_vector: Tensor) -> Tensor:
        unit = steering_vector / torch.norm(steering_vector)
        return -1 * unit * (original_activation @ unit.squeeze()).unsqueeze(-1)

    return _named(_ablation_operator, "ablate")


def ablation_then_addition_operator() -> PatchDeltaOperator:
    """Remove the component along the steering vector, then add the steering vector."""
    ablate = ablation_operator()

    def _ablation_then_addition_operator(original_activation: Tensor, steering_vector: Tensor) -> Tensor:
        return ablate(original_activation, steering_vector) + steering_vector

    return _named(_ablation_then_addition_operator, "ablate_then_add")
