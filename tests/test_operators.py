"""User-defined operators, as a plain callable and as a full Operator, get the same validation,
per-row multipliers and token selection as the built-in ones; checked against forward hooks."""

from __future__ import annotations

import pytest
import torch

from steerable import OPERATORS, Operator, SteerableModel, SteeringVector, register_operator
from steerable.operators import select
from steerable.testing.hooks import hooked, left_pad
from steerable.testing.tiny_models import tiny_model

IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]])
MULTIPLIERS = torch.tensor([0.5, -1.0, 2.0])


def tanh_delta(hidden: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    return torch.tanh(hidden) * scaled  # depends on the hidden states, unlike `add`


class Scale(Operator):
    """Multiply the component along v by the multiplier."""

    name = "scale"

    def prepare(self, vector: torch.Tensor, multiplier: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"unit": vector / vector.norm(dim=-1, keepdim=True), "factor": multiplier}

    def apply(self, hidden, tensors, mask):
        unit = tensors["unit"]
        projection = (hidden * unit).sum(-1, keepdim=True)
        return select(mask, hidden + (tensors["factor"] - 1) * projection * unit, hidden)


def selected(min_index: int) -> torch.Tensor:
    positions = MASK.cumsum(-1) - 1
    return ((positions >= min_index) & MASK.bool())[..., None]


@pytest.fixture
def models():
    torch.manual_seed(0)
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama")), torch.randn(32)


def compare(model, vanilla, steered_kwargs, edit) -> None:
    with torch.no_grad():
        with model.steer(**steered_kwargs):
            got = model(input_ids=IDS, attention_mask=MASK).logits
        with hooked(vanilla, {1: edit}):
            expected = vanilla(input_ids=IDS, attention_mask=MASK).logits
    real = MASK.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_a_callable_operator_with_per_row_multipliers_and_token_selection_equals_a_hook(models) -> None:
    vanilla, model, v = models
    m = MULTIPLIERS[:, None, None]
    compare(
        model,
        vanilla,
        dict(vector=SteeringVector({1: v}), multiplier=MULTIPLIERS, operator=tanh_delta, min_token_index=2),
        lambda h: torch.where(selected(2), h + torch.tanh(h) * (m * v), h),
    )


def test_a_full_operator_and_a_registered_name_equal_a_hook(models) -> None:
    vanilla, model, v = models
    unit = v / v.norm()

    def edit(h: torch.Tensor) -> torch.Tensor:
        return torch.where(selected(1), h + (3.0 - 1) * (h @ unit)[..., None] * unit, h)

    compare(
        model, vanilla, dict(vector=SteeringVector({1: v}), multiplier=3.0, operator=Scale(), min_token_index=1), edit
    )
    register_operator("scale_test", Scale())
    try:
        compare(
            model,
            vanilla,
            dict(vector=SteeringVector({1: v}), multiplier=3.0, operator="scale_test", min_token_index=1),
            edit,
        )
        register_operator("tanh_test", tanh_delta)
        compare(
            model,
            vanilla,
            dict(vector=SteeringVector({1: v}), multiplier=2.0, operator="tanh_test"),
            lambda h: h + torch.tanh(h) * (2.0 * v),
        )
    finally:
        OPERATORS.pop("scale_test", None)
        OPERATORS.pop("tanh_test", None)


def test_user_operators_get_the_built_in_validation(models) -> None:
    _, model, v = models
    with torch.no_grad():
        idle = model(input_ids=IDS, attention_mask=MASK).logits
    with pytest.raises(ValueError, match="the multiplier must be finite"):
        model.steer(SteeringVector({1: v}), float("nan"), operator=tanh_delta)
    with pytest.raises(ValueError, match="the multiplier has 2 rows but the vector has 3"):
        model.steer(SteeringVector({1: torch.randn(3, 32)}), torch.ones(2), operator=Scale())
    with pytest.raises(ValueError, match="unknown operator 'nope'"):
        model.steer(SteeringVector({1: v}), operator="nope")
    with pytest.raises(TypeError, match="operator must be a name, an Operator or a callable"):
        model.steer(SteeringVector({1: v}), operator=3)
    with pytest.raises(ValueError, match="'add' is a built-in operator"):
        register_operator("add", tanh_delta)
    with pytest.raises(ValueError, match="the batch has 3 rows"):
        with model.steer(SteeringVector({1: v}), torch.ones(2), operator=tanh_delta), torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
    with pytest.raises(ValueError, match="must return a delta that broadcasts"):
        with model.steer(SteeringVector({1: v}), operator=lambda h, s: h[..., :3]), torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
    assert not model.is_steering
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS, attention_mask=MASK).logits, idle)


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kwargs).logits


# -- valid input that used to fail ------------------------------------------------------------------
def test_clamp_with_per_row_vectors_and_a_plain_multiplier_equals_a_hook(pair) -> None:
    vanilla, model = pair
    torch.manual_seed(0)
    rows = torch.randn(3, 32)
    units = (rows / rows.norm(dim=-1, keepdim=True))[:, None, :]
    with model.steer(SteeringVector({1: rows}), 0.5, operator="clamp"):
        got = logits(model)
    with hooked(vanilla, {1: lambda h: h + (0.5 - (h * units).sum(-1, keepdim=True)) * units}):
        expected = logits(vanilla)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
