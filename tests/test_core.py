"""SteerableModel on every supported architecture: identity, steering values, positions, padding,
per-row multipliers, save/load, unwrap and state restoration."""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import hooked, left_pad, position_ids, right_pad, vanilla_layers
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


POSITION_MODES = {
    "all": {},
    "min_token_index": {"min_token_index": 5},
    "generated": {"positions": "generated"},
    "prompt": {"positions": "prompt"},
    "mask": {"positions": torch.tensor([[0, 1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 0, 0, 0]], dtype=torch.bool)},
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", list(POSITION_MODES))
def test_cache_matches_no_cache_for_every_position_mode(arch: str, mode: str) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids, mask = left_pad(PROMPTS)
    plain = _generate(model, ids, mask, use_cache=True)
    with model.steer(random_vector([0, 1, 2], scale=3.0), 2.0, **POSITION_MODES[mode]):
        cached = _generate(model, ids, mask, use_cache=True)
        uncached = _generate(model, ids, mask, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.logits, uncached.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # the steering changed something, and for "generated" it acts on decode steps only
    changed = [not torch.allclose(a, b, atol=1e-4) for a, b in zip(cached.logits, plain.logits, strict=True)]
    assert any(changed)
    if mode == "generated":
        assert not changed[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_generated_mode_steers_each_decode_step_like_a_full_forward(arch: str) -> None:
    """Steering generated tokens equals a full forward over prompt+generation steered from the prompt's end."""
    model = SteerableModel.wrap(tiny_model(arch))
    prompt = torch.tensor([PROMPTS[0]])
    vec = random_vector([1], scale=3.0)
    with model.steer(vec, 2.0, positions="generated"):
        out = _generate(model, prompt, torch.ones_like(prompt), use_cache=True)
    with model.steer(vec, 2.0, min_token_index=prompt.shape[1]):
        full = model(out.sequences[:, :-1]).logits
    torch.testing.assert_close(torch.stack(out.logits, 1), full[:, prompt.shape[1] - 1 :], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_padded_batch_equals_rows_alone(arch: str, padding: str) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids, mask = (left_pad if padding == "left" else right_pad)(PROMPTS)
    vec = random_vector([0, 2], scale=2.0)
    token_mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [0, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    for kwargs in ({}, {"min_token_index": 2}, {"positions": token_mask}):
        with model.steer(vec, 1.5, **kwargs):
            batched = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        for row, prompt in enumerate(PROMPTS):
            row_kwargs = {**kwargs, "positions": token_mask[row]} if "positions" in kwargs else kwargs
            with model.steer(vec, 1.5, **row_kwargs):
                alone = model(torch.tensor([prompt])).logits
            torch.testing.assert_close(batched[row][mask[row].bool()], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_row_multipliers_equal_separate_runs(arch: str) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids, mask = left_pad(PROMPTS)
    multipliers = torch.tensor([-2.0, 3.0])
    vec = random_vector([1, 2])
    with model.steer(vec, multipliers):
        batched = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    for row in range(2):
        with model.steer(vec, float(multipliers[row])):
            alone = model(
                input_ids=ids[row : row + 1],
                attention_mask=mask[row : row + 1],
                position_ids=position_ids(mask[row : row + 1]),
            ).logits
        torch.testing.assert_close(batched[row], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_row_vectors_equal_separate_runs(arch: str) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids = torch.tensor([PROMPTS[0], PROMPTS[0]])
    a, b = random_vector([1], seed=1), random_vector([1], seed=2)
    batch = SteeringVector({1: torch.stack([a[1], b[1]])})
    assert batch.rows == 2
    with model.steer(batch, torch.tensor([1.0, -2.0])):
        batched = model(ids).logits
    with model.steer(a, 1.0):
        first = model(ids[:1]).logits
    with model.steer(b, -2.0):
        second = model(ids[:1]).logits
    torch.testing.assert_close(batched, torch.cat([first, second]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_loads_in_plain_transformers(arch: str, tmp_path) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids = torch.tensor([PROMPTS[0]])
    with model.steer(random_vector([1]), 4.0):  # steering is never saved
        model.save_pretrained(tmp_path)
    expected = model(ids).logits
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert not isinstance(loaded, SteerableModel)
    assert type(loaded).__name__ == type(model).__name__
    assert loaded.config.architectures == [type(model).__name__]
    assert torch.equal(loaded(ids).logits, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_unwrap_restores_original_classes_and_outputs(arch: str) -> None:
    vanilla = tiny_model(arch)
    ids = torch.tensor([PROMPTS[1]])
    expected = vanilla(ids).logits
    classes = {name: type(m) for name, m in vanilla.named_modules()}
    model = SteerableModel.wrap(tiny_model(arch))
    assert SteerableModel.wrap(model) is model  # wrapping twice is a no-op
    vec = random_vector([0, 1, 2])
    model.steer(vec, 3.0, min_token_index=1)
    model.steer(SteeringVector({1: vec[1]}, site="mlp"), 1.0)
    restored = SteerableModel.unwrap(model)
    assert restored is model
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert not any(name.startswith("steering_") for name, _ in model.named_buffers())
    assert not hasattr(model, "steer")
    assert torch.equal(model(ids).logits, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_is_restored_after_an_exception_and_contexts_unwind_in_order(arch: str) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids = torch.tensor([PROMPTS[0]])
    idle = model(ids).logits
    a, b = random_vector([0], seed=3), random_vector([0, 2], seed=4)
    with model.steer(a, 1.0):
        only_a = model(ids).logits
        with pytest.raises(RuntimeError, match="boom"):
            with model.steer(b, 1.0, positions="prompt"):
                raise RuntimeError("boom")
        assert torch.equal(model(ids).logits, only_a)
        with model.steer(b, 2.0):
            both = model(ids).logits
        assert torch.equal(model(ids).logits, only_a)
    assert torch.equal(model(ids).logits, idle)
    assert model._steerable.selections == () and model._steerable.recordings == 0
    with model.steer(a + 2.0 * b, 1.0):
        combined = model(ids).logits
    torch.testing.assert_close(both, combined, rtol=0, atol=1e-5)
    handle = model.steer(a, 1.0)
    handle.remove()
    handle.remove()  # removing twice is harmless
    assert torch.equal(model(ids).logits, idle)
