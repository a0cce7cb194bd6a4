"""Where steering lands: positions, min_token_index, padding, caches, checkpointing and where the stack is entered."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import hooked, left_pad, position_ids, right_pad
from steerable.testing.tiny_models import ARCHS, tiny_model

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


PROMPTS = [[5, 17, 33, 8, 61, 12, 40], [9, 70, 23, 4]]


def random_vector(layers: list[int], d: int = 32, seed: int = 1, scale: float = 1.0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({i: scale * torch.randn(d, generator=generator) for i in layers})


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


IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]])


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kwargs).logits


def test_a_token_mask_whose_rows_do_not_match_is_an_error_outside_generate(pair) -> None:
    _, model = pair
    with model.steer(SteeringVector({1: torch.randn(32)}), positions=torch.ones(1, 5, dtype=torch.bool)):
        with pytest.raises(ValueError, match="the token mask has 1 rows but the batch has 3.*only inside generate"):
            logits(model)
