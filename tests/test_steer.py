"""The model.steer API: sites, composition, dtype/device, handles and update, multiplier types, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerable import (
    SITES,
    ArchitectureSpec,
    SteerableModel,
    SteeringVector,
    register_architecture,
    train_steering_vector,
)
from steerable.architectures import ARCHITECTURES
from steerable.testing.hooks import hooked, left_pad, position_ids
from steerable.testing.tiny_models import ARCHS, tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 61, 12]])


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def vec(layers=(1,), seed=0, site="block", d=32) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({i: torch.randn(d, generator=g) for i in layers}, site=site)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


OPERATOR_REFERENCES = {
    "ablate": lambda h, v, m: h - (h @ unit(v))[..., None] * unit(v),
    "ablate_then_add": lambda h, v, m: h - (h @ unit(v))[..., None] * unit(v) + m * v,
    "clamp": lambda h, v, m: h + (m - h @ unit(v))[..., None] * unit(v),
    "add": lambda h, v, m: h + m * v,
}


@pytest.mark.parametrize("operator", list(OPERATOR_REFERENCES))
@pytest.mark.parametrize("norm_preserving", [False, True])
def test_operators_equal_direct_computation(pair, operator: str, norm_preserving: bool) -> None:
    vanilla, model = pair
    v = vec((1,))
    reference = OPERATOR_REFERENCES[operator]

    def edit(h: torch.Tensor) -> torch.Tensor:
        out = reference(h, v[1], 1.7)
        return out * (h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True)) if norm_preserving else out

    with hooked(vanilla, {1: edit}):
        expected = vanilla(IDS).logits
    with model.steer(v, 1.7, operator=operator, norm_preserving=norm_preserving):
        got = model(IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ablate_removes_the_component(pair) -> None:
    _, model = pair
    v = vec((1,))
    seen = {}

    with model.steer(v, operator="ablate"), model.record(layers=[1]) as acts:
        model(IDS)
    seen["h"] = acts[1]
    torch.testing.assert_close(seen["h"] @ unit(v[1]), torch.zeros(1, IDS.shape[1]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2", "gpt_neox", "gptj", "falcon", "olmo2"])
def test_every_site_steers_like_a_hook_on_that_submodule(arch: str) -> None:
    vanilla = tiny_model(arch)
    model = SteerableModel.wrap(tiny_model(arch))
    sites = ["block", *model._steerable.spec.sites]
    assert len(sites) >= 3
    for site in sites:
        v = vec((0, 2), site=site)
        with hooked(vanilla, {i: (lambda h, d=v[i]: h + 1.3 * d) for i in v.layers}, site=site):
            expected = vanilla(IDS).logits
        with model.steer(v, 1.3):
            got = model(IDS).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"site {site}")
        assert not torch.allclose(got, vanilla(IDS).logits, atol=1e-4), site
    # idle again: sub-modules got their own classes back
    assert all(type(m).__name__ == type(m).__mro__[0].__name__ for m in model.modules())
    assert torch.equal(model(IDS).logits, vanilla(IDS).logits)


def test_vector_is_converted_to_layer_dtype_and_device() -> None:
    model = SteerableModel.wrap(tiny_model("llama", dtype=torch.bfloat16))
    v = vec((1,)).to(torch.float64)
    with model.steer(v, 1.0):
        buffers = {n: b for n, b in model.named_buffers() if "steering_" in n}
        assert buffers and all(b.dtype == torch.bfloat16 for b in buffers.values())
        model.float()  # buffers follow the layer
        assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if "steering_" in n)
        model(IDS)


def test_negative_layer_indices_count_from_the_end(pair) -> None:
    _, model = pair
    v = vec((2,))
    with model.steer(v, 1.0):
        expected = model(IDS).logits
    with model.steer(SteeringVector({-1: v[2]}), 1.0):
        assert torch.equal(model(IDS).logits, expected)


def assert_untouched(model, vanilla) -> None:
    assert not model.is_steering
    assert not any("steering_" in n for n, _ in model.named_buffers())
    assert model._steerable.active is None and model._steerable.recordings == 0
    assert torch.equal(model(IDS).logits, vanilla(IDS).logits)


BAD_INPUTS = [
    (dict(vector=SteeringVector({1: torch.randn(16)})), ValueError, "hidden size 16 but the model's is 32"),
    (
        dict(vector=SteeringVector({3: torch.randn(32)})),
        IndexError,
        "layer 3 is out of range: the model has 3",
    ),
    (dict(vector=SteeringVector({-4: torch.randn(32)})), IndexError, "layer -4 is out of range"),
    (dict(vector=SteeringVector({0: torch.randn(32), -3: torch.randn(32)})), ValueError, "name the same"),
    (dict(multiplier=torch.ones(2, 2)), ValueError, "must be 1-D with one value per batch row"),
    (dict(multiplier=float("nan")), ValueError, "must be finite"),
    (dict(multiplier=torch.tensor([1.0, float("inf")])), ValueError, "non-finite"),
    (dict(multiplier="2"), TypeError, "multiplier must be a number"),
    (dict(operator="multiply"), ValueError, "unknown operator 'multiply'"),
    (dict(positions="decode"), ValueError, "unknown positions 'decode'"),
    (dict(positions=torch.ones(2, 3)), ValueError, "must be a non-empty boolean tensor"),
    (dict(positions=torch.ones(1, 2, 3, dtype=torch.bool)), ValueError, "must be a non-empty boolean tensor"),
    (dict(multiplier=torch.ones(3), positions=torch.ones(2, 4, dtype=torch.bool)), ValueError, "has 2 rows"),
    (dict(min_token_index=-1), ValueError, "min_token_index must be an int >= 0"),
    (dict(operator="ablate", vector=SteeringVector({1: torch.zeros(32)})), ValueError, "zero vector"),
    (dict(vector={1: torch.randn(32)}), TypeError, "expected a SteeringVector"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_INPUTS)
def test_bad_input_errors_and_leaves_model_untouched(pair, kwargs, error, message) -> None:
    vanilla, model = pair
    kwargs = {"vector": vec((1,)), **kwargs}
    with pytest.raises(error, match=message):
        model.steer(**kwargs)
    assert_untouched(model, vanilla)


def test_site_missing_from_architecture_errors(pair) -> None:
    olmo = SteerableModel.wrap(tiny_model("olmo2"))
    with pytest.raises(ValueError, match="site 'input_norm' is not available for this architecture; available"):
        olmo.steer(vec((1,), site="input_norm"))
    assert not olmo.is_steering


def test_site_missing_in_one_layer_rolls_back(pair) -> None:
    vanilla, model = pair
    del model.model.layers[2].mlp  # a layer without the sub-module: fails after layers 0..1 were steered
    with pytest.raises(ValueError, match="site 'mlp' .* does not exist in decoder layer 2"):
        model.steer(vec((0, 1, 2), site="mlp"))
    with pytest.raises(ValueError, match="site 'mlp' .* does not exist in decoder layer 2"):
        model.steer(vec((0, 1, 2), site="mlp"), positions="prompt")
    assert model._steerable.active is None and model._steerable.recordings == 0
    assert not model.is_steering
    assert not any("steering_" in n for n, _ in model.named_buffers())
    assert all(type(m).__mro__[1].__name__ != type(m).__name__ for m in model.model.layers[0].modules())


def test_bad_vectors_error_at_construction_and_unknown_sites_at_steer(pair) -> None:
    _, model = pair
    custom = SteeringVector({1: torch.randn(32)}, site="resid")  # architectures may register their own sites
    with pytest.raises(ValueError, match="site 'resid' is not available for this architecture; available: block"):
        model.steer(custom)
    with pytest.raises(TypeError, match="a site must be a non-empty string"):
        SteeringVector({1: torch.randn(4)}, site="")
    with pytest.raises(ValueError, match="non-finite"):
        SteeringVector({1: torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector({})
    with pytest.raises(ValueError, match="expected shape"):
        SteeringVector({1: torch.randn(2, 2, 2)})
    with pytest.raises(ValueError, match="same shape"):
        SteeringVector({1: torch.randn(4), 2: torch.randn(5)})
    with pytest.raises(TypeError, match="floating-point"):
        SteeringVector({1: torch.ones(4, dtype=torch.long)})
    assert set(SITES) == {"block", "attn", "mlp", "input_norm", "post_attn_norm"}


def test_per_row_multiplier_of_wrong_length_errors_at_forward(pair) -> None:
    vanilla, model = pair
    with model.steer(vec((1,)), torch.tensor([1.0, 2.0, 3.0])):
        with pytest.raises(
            ValueError, match=r"the per-row steering \(multiplier or vectors\) has 3 rows but the batch has 1 rows"
        ):
            model(IDS)
    with model.steer(vec((1,)), positions=torch.ones(3, 6, dtype=torch.bool)):
        with pytest.raises(ValueError, match="the token mask has 3 rows but the batch has 2"):
            model(IDS.repeat(2, 1))
    assert_untouched(model, vanilla)


def test_handle_update_changes_values_in_place(pair) -> None:
    _, model = pair
    v, w = vec((0, 2), seed=1), vec((0, 2), seed=2)
    handle = model.steer(v, 1.0, operator="ablate_then_add")
    buffers = {n: b.clone() for n, b in model.named_buffers() if "steering_" in n}
    kept = {n: b for n, b in model.named_buffers() if "steering_" in n}
    handle.update(multiplier=3.0, vector=w)
    assert {n: b for n, b in model.named_buffers() if "steering_" in n}.keys() == buffers.keys()  # same slots
    # new tensors, the old ones untouched: a forward still running keeps the values it started with
    assert all(torch.equal(kept[n], buffers[n]) for n in buffers)
    assert any(not torch.equal(b, buffers[n]) for n, b in model.named_buffers() if "steering_" in n)
    updated = model(IDS).logits
    handle.remove()
    with model.steer(w, 3.0, operator="ablate_then_add"):
        torch.testing.assert_close(updated, model(IDS).logits, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="was removed"):
        handle.update(multiplier=2.0)
    rows = model.steer(v, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="per-row sizes must stay the same"):
        rows.update(multiplier=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="keeps the layers and site"):
        rows.update(vector=vec((1,)))
    rows.remove()


PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 70, 23, 4]]


def random_vector(layers: list[int], d: int = 32, seed: int = 1, scale: float = 1.0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({i: scale * torch.randn(d, generator=generator) for i in layers})


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
    assert model._steerable.active is None and model._steerable.recordings == 0
    with model.steer(a + 2.0 * b, 1.0):
        combined = model(ids).logits
    torch.testing.assert_close(both, combined, rtol=0, atol=1e-5)
    handle = model.steer(a, 1.0)
    handle.remove()
    handle.remove()  # removing twice is harmless
    assert torch.equal(model(ids).logits, idle)


BATCH_IDS, BATCH_MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]])


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=BATCH_IDS, attention_mask=BATCH_MASK, **kwargs).logits


def test_a_registered_custom_site_steers_records_and_trains(pair) -> None:
    vanilla, _ = pair
    register_architecture("llama_custom_site", ArchitectureSpec("model.layers", {"gate": "mlp.gate_proj"}))
    try:
        model = tiny_model("llama")
        model.config.model_type = "llama_custom_site"
        model = SteerableModel.wrap(model)
        v = SteeringVector({1: torch.randn(64)}, site="gate")  # gate_proj's width: the MLP's hidden size
        with model.steer(v, 1.0):
            got = logits(model)
        handle = vanilla.model.layers[1].mlp.gate_proj.register_forward_hook(lambda m, i, o: o + v[1])
        expected = logits(vanilla)
        handle.remove()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        with model.record(layers=[1], site="gate") as acts, torch.no_grad():
            model(input_ids=BATCH_IDS, attention_mask=BATCH_MASK)
        assert acts[1].shape == (3, 5, 64)
        from steerable.testing.tiny_models import tiny_tokenizer

        trained = train_steering_vector(model, tiny_tokenizer(), [("w5 w6", "w7 w8")], layers=[1], site="gate")
        assert trained.site == "gate" and trained[1].shape == (64,)
        calls = []
        model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
        with pytest.raises(ValueError, match="site 'nope' is not available"):
            train_steering_vector(model, tiny_tokenizer(), [("w5 w6", "w7 w8")], layers=[1], site="nope")
        assert not calls  # refused before any forward
    finally:
        ARCHITECTURES.pop("llama_custom_site", None)


def test_per_row_multipliers_follow_num_return_sequences_in_generate(pair) -> None:
    _, model = pair
    torch.manual_seed(2)
    v = SteeringVector({1: torch.randn(32)})
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, num_beams=2, num_return_sequences=2)
    multipliers = torch.tensor([4.0, -4.0, 0.0])
    with model.steer(v, multipliers):
        repeated = model.generate(input_ids=BATCH_IDS, attention_mask=BATCH_MASK, **settings)
    for row in range(3):
        with model.steer(v, float(multipliers[row])):
            alone = model.generate(input_ids=BATCH_IDS[row : row + 1, BATCH_MASK[row].bool()], **settings)
        assert torch.equal(repeated[2 * row : 2 * row + 2, -4:], alone[:, -4:]), row


def test_a_handle_made_in_inference_mode_works_with_grad_later(pair) -> None:
    _, model = pair
    with torch.inference_mode():
        handle = model.steer(SteeringVector({1: torch.randn(32)}), 2.0, operator="ablate_then_add", min_token_index=1)
    out = model(input_ids=BATCH_IDS, attention_mask=BATCH_MASK).logits
    out.sum().backward()  # inference tensors would refuse to be saved for backward
    with torch.inference_mode():
        handle.update(multiplier=3.0)
    handle.update(vector=SteeringVector({1: torch.randn(32)}))
    model(input_ids=BATCH_IDS, attention_mask=BATCH_MASK).logits.sum().backward()
    handle.remove()


# -- input that must be refused -------------------------------------------------------------------
def test_values_are_copied_on_the_way_in(pair) -> None:
    _, model = pair
    multiplier, mask = torch.tensor([1.0, 2.0, 3.0]), torch.ones(5, dtype=torch.bool)
    with model.steer(SteeringVector({1: torch.randn(32)}), multiplier, positions=mask):
        before = logits(model)
        multiplier.fill_(float("nan"))
        mask.fill_(False)
        assert torch.equal(logits(model), before)


def test_overflow_after_scaling_or_the_cast_is_an_error(pair) -> None:
    _, model = pair
    with pytest.raises(ValueError, match="multiplier x vector overflows"):
        model.steer(SteeringVector({1: torch.full((32,), 1e30)}), 1e30)
    half = SteerableModel.wrap(tiny_model("llama", dtype=torch.float16))
    with pytest.raises(ValueError, match="overflows the layer's torch.float16"):
        half.steer(SteeringVector({1: torch.full((32,), 100.0)}), 1000.0)
    assert not model.is_steering and not half.is_steering


def test_multiplier_types(pair) -> None:
    _, model = pair
    v = SteeringVector({1: torch.randn(32)})
    with pytest.raises(TypeError, match="a multiplier tensor must hold numbers, got torch.bool"):
        model.steer(v, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="the token mask is on the meta device"):
        model.steer(v, positions=torch.ones(5, dtype=torch.bool, device="meta"))
    with model.steer(v, np.float32(2.0)):
        numpy_scalar = logits(model)
    with model.steer(v, 2.0):
        assert torch.equal(logits(model), numpy_scalar)
    assert not model.is_steering


def half(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return (pos - neg).mean(0)[:16]


def test_numpy_numbers_are_numbers_everywhere(pair) -> None:
    _, model = pair
    v = SteeringVector({np.int64(1): torch.randn(32)})
    assert v.layers == [1] and torch.equal((v * np.float32(2.0))[1], v[1] * 2.0)
    with model.steer(v, np.float64(1.5), min_token_index=np.int64(1)):
        got = logits(model)
    with model.steer(v, 1.5, min_token_index=1):
        assert torch.equal(logits(model), got)
    with model.record(layers=[np.int64(0)]) as acts, torch.no_grad():
        model(input_ids=BATCH_IDS, attention_mask=BATCH_MASK)
    assert acts[0].shape == (3, 5, 32)


ROWS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


def test_numpy_vectors_and_list_or_array_multipliers_steer_like_tensors(model) -> None:
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(32).astype(np.float32)
    from_numpy = SteeringVector({1: direction})
    assert from_numpy[1].dtype == torch.float32 and torch.equal(from_numpy[1], torch.from_numpy(direction))
    direction[0] = 99.0  # copied on the way in
    assert from_numpy[1][0] != 99.0
    ids, mask = left_pad(ROWS)
    with torch.no_grad():
        with model.steer(from_numpy, torch.tensor([1.0, -2.0, 0.5])):
            reference = model(input_ids=ids, attention_mask=mask).logits
        for multipliers in ([1.0, -2.0, 0.5], (1, -2, 0.5), np.array([1.0, -2.0, 0.5])):
            with model.steer(from_numpy, multipliers):
                assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)
    with pytest.raises(TypeError, match="a multiplier list or array must hold numbers"):
        model.steer(from_numpy, ["a", "b", "c"])
    with pytest.raises(TypeError, match="expected a floating-point array"):
        SteeringVector({1: np.arange(4)})
