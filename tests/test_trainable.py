"""Trainable steering: vectors and multipliers that require grad stay live through ``steer``, so
gradients reach them (checked against a forward-hook reference) and a learned vector lowers a loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import hooked, left_pad
from steerable.testing.tiny_models import tiny_model

IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12]])
TARGET = 7


def frozen(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def target_loss(logits: torch.Tensor) -> torch.Tensor:
    """Minus the log-probability of TARGET at each row's last token."""
    return -logits[:, -1].log_softmax(-1)[:, TARGET].mean()


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(operator="ablate_then_add", min_token_index=1), dict(norm_preserving=True, positions="prompt")],
)
def test_gradients_reach_a_vector_and_a_multiplier_like_a_hook_reference(kwargs) -> None:
    vanilla = frozen(tiny_model("llama"))
    model = SteerableModel.wrap(frozen(tiny_model("llama")))
    torch.manual_seed(0)
    start = torch.randn(32)

    vector = nn.Parameter(start.clone())
    multiplier = nn.Parameter(torch.tensor(1.5))
    with model.steer(SteeringVector({1: vector}), multiplier, **kwargs):
        target_loss(model(input_ids=IDS, attention_mask=MASK).logits).backward()
    assert vector.grad is not None and multiplier.grad is not None

    ref_vector = start.clone().requires_grad_(True)
    ref_multiplier = torch.tensor(1.5, requires_grad=True)
    positions = MASK.cumsum(-1) - 1
    selected = ((positions >= kwargs.get("min_token_index", 0)) & MASK.bool())[..., None]

    def edit(h: torch.Tensor) -> torch.Tensor:
        steered = h
        if kwargs.get("operator") == "ablate_then_add":
            unit = ref_vector / ref_vector.norm()
            steered = steered - (steered @ unit)[..., None] * unit
        steered = steered + ref_multiplier * ref_vector
        if kwargs.get("norm_preserving"):
            steered = steered * (h.norm(dim=-1, keepdim=True) / steered.norm(dim=-1, keepdim=True))
        return torch.where(selected, steered, h)

    with hooked(vanilla, {1: edit}):
        target_loss(vanilla(input_ids=IDS, attention_mask=MASK).logits).backward()
    torch.testing.assert_close(vector.grad, ref_vector.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(multiplier.grad, ref_multiplier.grad, rtol=1e-5, atol=1e-6)


def test_a_learned_vector_lowers_its_loss_and_raises_the_target_probability() -> None:
    model = SteerableModel.wrap(frozen(tiny_model("llama")))
    vector = nn.Parameter(torch.zeros(32))
    optimizer = torch.optim.Adam([vector], lr=0.1)
    losses = []
    with model.steer(SteeringVector({0: vector, 1: vector}), 1.0):
        for _ in range(30):
            optimizer.zero_grad()
            loss = target_loss(model(input_ids=IDS, attention_mask=MASK).logits)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        plain = target_loss(model(input_ids=IDS, attention_mask=MASK).logits)
        with model.steer(SteeringVector({0: vector, 1: vector}), 1.0):
            steered = target_loss(model(input_ids=IDS, attention_mask=MASK).logits)
    assert steered < plain - 1.0
    assert vector.grad is not None and float(vector.detach().norm()) > 0


def test_a_learned_vector_saves_detached_and_loads_to_the_same_steering(tmp_path) -> None:
    model = SteerableModel.wrap(frozen(tiny_model("llama")))
    vector = nn.Parameter(torch.randn(32))
    learned = SteeringVector({1: vector})
    learned.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(tmp_path / "v.safetensors")
    assert not loaded[1].requires_grad and torch.equal(loaded[1], vector.detach())
    with torch.no_grad():
        with model.steer(learned, 2.0):
            live = model(input_ids=IDS, attention_mask=MASK).logits
        with model.steer(loaded, 2.0):
            fixed = model(input_ids=IDS, attention_mask=MASK).logits
    assert torch.equal(live, fixed)


def test_update_swaps_a_trainable_vector_and_fixed_values_are_copied_on_the_way_in() -> None:
    model = SteerableModel.wrap(frozen(tiny_model("llama")))
    first, second = nn.Parameter(torch.randn(32)), nn.Parameter(torch.randn(32))
    with torch.no_grad():
        with model.steer(SteeringVector({1: second}), 1.0):
            expected = model(input_ids=IDS, attention_mask=MASK).logits
        with model.steer(SteeringVector({1: first}), 1.0) as handle:
            handle.update(vector=SteeringVector({1: second}))
            assert torch.equal(model(input_ids=IDS, attention_mask=MASK).logits, expected)

        fixed = torch.randn(32)
        with model.steer(SteeringVector({1: fixed.clone()}), 1.0):
            before = model(input_ids=IDS, attention_mask=MASK).logits
        mine = fixed.clone()
        with model.steer(SteeringVector({1: mine}), 1.0):
            mine.mul_(100.0)  # the caller's tensor changes: the steering does not
            assert torch.equal(model(input_ids=IDS, attention_mask=MASK).logits, before)


def test_in_bfloat16_a_trainable_vector_steers_exactly_as_the_same_vector_fixed() -> None:
    """One rounding rule for both: multiplier x vector in float32, then the layer's dtype (the trainable
    path used to round each factor to bf16 first: logits 0.0156 apart at multiplier 0.3)."""
    model = SteerableModel.wrap(tiny_model("llama")).to(torch.bfloat16)
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11, 12]])
    torch.manual_seed(5)
    values = {i: torch.randn(32) * 3 for i in range(3)}
    with torch.no_grad(), model.steer(SteeringVector(values), 0.3, min_token_index=1):
        fixed = model(input_ids=ids, attention_mask=mask).logits
    learned = SteeringVector({i: nn.Parameter(v.clone()) for i, v in values.items()})
    with model.steer(learned, 0.3, min_token_index=1):
        trainable = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(fixed, trainable.detach())
    with model.steer(learned, torch.tensor(0.3, requires_grad=True), operator="ablate_then_add"):
        live = model(input_ids=ids, attention_mask=mask).logits.detach()
    with torch.no_grad(), model.steer(SteeringVector(values), 0.3, operator="ablate_then_add"):
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, live)
