"""Operators, sites, composition, device/dtype conversion, and every bad input of `steer`."""

from __future__ import annotations

import warnings

import pytest
import torch

from steerable import SITES, ArchitectureSpec, SteerableModel, SteeringVector, register_architecture
from steerable.architectures import ARCHITECTURES
from steerable.testing.hooks import hooked
from steerable.testing.tiny_models import tiny_model

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


# -- bad input: a clear error, and the model is untouched ------------------------------------


def assert_untouched(model, vanilla) -> None:
    assert not model.is_steering
    assert not any("steering_" in n for n, _ in model.named_buffers())
    assert model._steerable.selections == () and model._steerable.recordings == 0
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
    assert model._steerable.selections == () and model._steerable.recordings == 0
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


def test_handle_update_changes_values_in_place(pair) -> None:
    _, model = pair
    v, w = vec((0, 2), seed=1), vec((0, 2), seed=2)
    handle = model.steer(v, 1.0, operator="ablate_then_add")
    buffers = {n: b for n, b in model.named_buffers() if "steering_" in n}
    handle.update(multiplier=3.0, vector=w)
    assert {n: b for n, b in model.named_buffers() if "steering_" in n}.keys() == buffers.keys()
    assert all(b is buffers[n] for n, b in model.named_buffers() if "steering_" in n)  # same tensors
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
