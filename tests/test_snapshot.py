"""A forward runs with the steerings in force when it started: a layer recomputed by gradient
checkpointing in backward sees exactly what its forward saw, even when the steering was updated or
removed in between. The oracle: the same steps without checkpointing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import tiny_model

IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12]])


def trainable_vector() -> SteeringVector:
    generator = torch.Generator().manual_seed(3)
    return SteeringVector({i: nn.Parameter(torch.randn(32, generator=generator)) for i in (0, 2)})


def gradients(step: Callable[[object, SteeringVector], None], checkpointing: bool, reentrant: bool) -> dict[str, object]:
    """Run ``step(model, vector)`` (a forward, a change, a backward) and return every gradient."""
    model = SteerableModel.wrap(tiny_model("llama"))
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    v = trainable_vector()
    step(model, v)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads |= {f"vector.{layer}": t.grad.clone() if t.grad is not None else None for layer, t in v.items()}
    return grads


def assert_same(got: dict[str, object], expected: dict[str, object]) -> None:
    assert got.keys() == expected.keys() and len(got) > 10
    for name, value in expected.items():
        assert value is not None and got[name] is not None, name
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


def loss_of(model) -> torch.Tensor:
    return model(input_ids=IDS, attention_mask=MASK).logits.float().pow(2).mean()


@pytest.mark.parametrize("reentrant", [False, True])
def test_an_update_between_forward_and_backward_does_not_reach_the_recompute(reentrant) -> None:
    fixed = SteeringVector({1: torch.linspace(-1, 1, 32)})

    def step(model, v) -> None:
        with model.steer(v, 2.0), model.steer(fixed, 1.5, min_token_index=2) as handle:
            loss = loss_of(model)
            handle.update(multiplier=-1.0)
            loss.backward()

    assert_same(gradients(step, True, reentrant), gradients(step, False, reentrant))


@pytest.mark.parametrize("reentrant", [False, True])
def test_backward_after_the_steering_was_removed_recomputes_with_it(reentrant) -> None:
    def step(model, v) -> None:
        with model.steer(v, 2.0, positions="prompt"):
            loss = loss_of(model)
        loss.backward()  # the steering is gone by now

    assert_same(gradients(step, True, reentrant), gradients(step, False, reentrant))


def test_a_steering_applied_between_forward_and_backward_is_not_in_the_recompute() -> None:
    late = SteeringVector({0: torch.full((32,), 0.5)})

    def step(model, v) -> None:
        with model.steer(v, 1.0):
            loss = loss_of(model)
            with model.steer(late, 3.0):
                loss.backward()

    assert_same(gradients(step, True, False), gradients(step, False, False))
