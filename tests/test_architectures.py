"""Every supported architecture: steering equals a hook reference, idle is identical, and architecture registration."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from steerable import ArchitectureSpec, SteerableModel, SteeringVector, register_architecture
from steerable.architectures import ARCHITECTURES
from steerable.testing.hooks import hooked, left_pad, vanilla_layers
from steerable.testing.tiny_models import ARCHS, tiny_model

PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 70, 23, 4]]


def random_vector(layers: list[int], d: int = 32, seed: int = 1, scale: float = 1.0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({i: scale * torch.randn(d, generator=generator) for i in layers})


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_idle_is_bit_identical(arch: str, dtype: torch.dtype) -> None:
    vanilla = tiny_model(arch, dtype=dtype)
    ids, mask = left_pad(PROMPTS)
    expected = vanilla(input_ids=ids, attention_mask=mask).logits
    keys = list(vanilla.state_dict())
    model = SteerableModel.wrap(tiny_model(arch, dtype=dtype))
    assert isinstance(model, type(vanilla)) and isinstance(model, SteerableModel)
    assert type(model).__name__ == type(vanilla).__name__
    assert list(model.state_dict()) == keys
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)
    with model.steer(random_vector([1]), 0.0, operator="add"):
        pass
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_idle_generate_and_signatures_equal_vanilla(arch: str) -> None:
    vanilla = tiny_model(arch)
    model = SteerableModel.wrap(tiny_model(arch))
    assert inspect.signature(model.forward) == inspect.signature(vanilla.forward)
    assert inspect.signature(model.generate) == inspect.signature(vanilla.generate)
    layer, vanilla_layer = model._steerable.layers[0], vanilla_layers(vanilla)[0]
    assert inspect.signature(layer.forward) == inspect.signature(vanilla_layer.forward)
    ids, mask = left_pad(PROMPTS)
    expected, got = _generate(vanilla, ids, mask, True), _generate(model, ids, mask, True)
    assert torch.equal(got.sequences, expected.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.logits, expected.logits, strict=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_steering_equals_hook_reference(arch: str) -> None:
    vanilla = tiny_model(arch)
    model = SteerableModel.wrap(tiny_model(arch))
    vec = random_vector([0, 2])
    ids = torch.tensor([PROMPTS[0]])
    with hooked(vanilla, {i: (lambda h, i=i: h + 2.5 * vec[i]) for i in vec.layers}):
        expected = vanilla(ids).logits
    with model.steer(vec, 2.5):
        steered = model(ids).logits
        assert len(model.state_dict()) == len(vanilla.state_dict())  # buffers are not persisted
    torch.testing.assert_close(steered, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(steered, vanilla(ids).logits, atol=1e-3)  # the steering did something


def _generate(model, ids, mask, use_cache: bool):
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        use_cache=use_cache,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def test_model_type_mismatch_warns(pair) -> None:
    _, model = pair
    v = SteeringVector({1: torch.randn(32)}, model_type="gpt2")
    with pytest.warns(UserWarning, match="trained on a 'gpt2' model and is applied to a 'llama' model"):
        model.steer(v).remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.steer(SteeringVector({1: torch.randn(32)}, model_type="llama")).remove()


def test_unknown_architecture_error_says_how_to_register() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="register_architecture"):
        SteerableModel.wrap(Odd())


def test_register_and_auto_detect(monkeypatch) -> None:
    model = tiny_model("llama")
    monkeypatch.setattr(model.config, "model_type", "my_llama")
    wrapped = SteerableModel.wrap(model)  # auto-detected: the longest homogeneous ModuleList
    assert wrapped._steerable.spec.layers == "model.layers"
    assert wrapped._steerable.spec.sites["attn"] == "self_attn"
    SteerableModel.unwrap(wrapped)
    try:
        register_architecture("my_llama", ArchitectureSpec("model.layers", {"mlp": "mlp"}))
        wrapped = SteerableModel.wrap(model)
        assert wrapped._steerable.spec.sites == {"mlp": "mlp"}
    finally:
        ARCHITECTURES.pop("my_llama")
    with pytest.raises(TypeError, match="ArchitectureSpec"):
        register_architecture("x", "model.layers")  # type: ignore[arg-type]
