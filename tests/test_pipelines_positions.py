"""Positions stay right wherever the decoder stack is entered and however a layer is re-run:
gradient checkpointing (reentrant and not), static caches, the inner model called directly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import hooked, left_pad
from steerable.testing.tiny_models import tiny_model

ROWS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
STEERINGS = {
    "ablate+min_token_index": dict(operator="ablate", min_token_index=2),
    "clamp+prompt": dict(operator="clamp", positions="prompt"),
    "add+mask": dict(positions=torch.tensor([False, True, True, False, True, True, True])),
    "norm_preserving+min_token_index": dict(norm_preserving=True, min_token_index=1),
}


def no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def vector(d: int = 32, layers: tuple[int, ...] = (0, 1, 2), seed: int = 7) -> SteeringVector:
    torch.manual_seed(seed)
    return SteeringVector({i: torch.randn(d) for i in layers})


def gradients(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    loss = (logits.log_softmax(-1)[..., 3] * mask).sum()  # padding tokens never count
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_checkpointing_changes_no_gradient(arch: str, vec: SteeringVector, reentrant: bool = False, **steer) -> None:
    """Gradients of a left-padded batch with the layers checkpointed equal those without; and the
    steering does change them (except positions="generated", which selects nothing outside generate)."""
    model = SteerableModel.wrap(no_dropout(tiny_model(arch))).train()
    ids, mask = left_pad(ROWS)
    unsteered = gradients(model, ids, mask)
    with model.steer(vec, **steer):
        plain = gradients(model, ids, mask)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        checkpointed = gradients(model, ids, mask)
        model.gradient_checkpointing_disable()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-5, msg=name)
    changed = any(not torch.allclose(plain[n], unsteered[n], atol=1e-6) for n in plain)
    assert changed == (steer.get("positions") != "generated")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon"])  # falcon: its stack passes no kwargs on
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("steering", list(STEERINGS))
def test_checkpointed_gradients_equal_plain_ones_on_left_padded_batches(arch, reentrant, steering) -> None:
    assert_checkpointing_changes_no_gradient(arch, vector(), reentrant, multiplier=2.0, **STEERINGS[steering])


@pytest.mark.parametrize("positions", ["generated", "prompt"])
def test_static_cache_generates_what_the_dynamic_cache_does(positions) -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    ids, mask = left_pad(ROWS)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with model.steer(vector(), 4.0, positions=positions):
        dynamic = model.generate(input_ids=ids, attention_mask=mask, **settings)
        static = model.generate(input_ids=ids, attention_mask=mask, cache_implementation="static", **settings)
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **settings)
    plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert torch.equal(uncached.sequences, dynamic.sequences)
    assert not torch.equal(plain.sequences, dynamic.sequences)  # the steering does something here
    for got, expected in zip(static.scores, dynamic.scores, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon", "gpt_neox"])
def test_entering_at_the_inner_model_equals_the_top_level_and_a_hook(arch) -> None:
    vanilla = tiny_model(arch)
    model = SteerableModel.wrap(tiny_model(arch))
    ids, mask = left_pad(ROWS)
    v = vector(layers=(1,))
    inner = model.base_model  # GPT2Model, LlamaModel, ...: what TRL and users call directly
    with model.steer(v, 3.0, min_token_index=2):
        top = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        below = inner(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(below[real], top[real], rtol=0, atol=1e-6)

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    selected = ((positions >= 2) & real)[..., None]
    with hooked(vanilla, {1: lambda h: torch.where(selected, h + 3.0 * v[1], h)}):
        reference = vanilla.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(below[real], reference[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("site", ["mlp", "input_norm"])
def test_checkpointed_gradients_equal_plain_ones_at_sub_module_sites(site) -> None:
    torch.manual_seed(3)
    v = SteeringVector({i: torch.randn(32) for i in (0, 2)}, site=site)
    assert_checkpointing_changes_no_gradient("llama", v, multiplier=2.0, operator="clamp", min_token_index=2)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])  # sliding-window layers (window 4)
def test_sliding_window_and_static_caches_generate_what_an_uncached_run_does(arch) -> None:
    model = SteerableModel.wrap(tiny_model(arch))
    ids, mask = left_pad(ROWS)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with model.steer(vector(), 4.0, positions="generated", operator="ablate_then_add"):
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **settings)
        dynamic = model.generate(input_ids=ids, attention_mask=mask, **settings)
        static = model.generate(input_ids=ids, attention_mask=mask, cache_implementation="static", **settings)
    plain = model.generate(input_ids=ids, attention_mask=mask, **settings)
    assert not torch.equal(plain, uncached)  # the steering does something here
    assert torch.equal(dynamic, uncached)
    assert torch.equal(static, uncached)


@pytest.mark.parametrize("operator", ["add", "ablate", "ablate_then_add", "clamp"])
@pytest.mark.parametrize(
    "mode",
    [
        dict(),
        dict(positions="prompt"),
        dict(positions="generated"),
        dict(min_token_index=3),
        dict(positions=torch.tensor([[True, False, True, True, False, True, True]] * 3)),
    ],
    ids=["all", "prompt", "generated", "min_token_index", "mask"],
)
def test_checkpointing_on_and_off_give_equal_gradients_for_every_operator_and_mode(operator, mode) -> None:
    assert_checkpointing_changes_no_gradient("llama", vector(), multiplier=1.5, operator=operator, **mode)
