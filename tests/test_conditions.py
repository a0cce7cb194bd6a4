"""Conditional steering: condition algebra, decisions on the prompt, compile, gradients and bad conditions."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing
from row_cases import GENERATE, ROWS, alone, batched, behaviour, direction, median_condition

from steerable import Condition, SteerableModel, SteeringVector
from steerable.conditions import condition_scores
from steerable.testing.hooks import hooked, left_pad
from steerable.testing.tiny_models import tiny_model


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("comparator", [">", "<"])
def test_a_conditional_batch_equals_each_row_alone(model, use_cache, comparator) -> None:
    condition, chosen = median_condition(model, comparator=comparator)
    with model.steer(behaviour(), 1.0, condition=condition):
        logits, tokens, mask = batched(model, use_cache=use_cache, **GENERATE)
    for k, row in enumerate(ROWS):
        steer = dict(vector=behaviour(), multiplier=1.0) if chosen[k] else None
        want_logits, want_tokens = alone(model, row, steer, use_cache=use_cache, **GENERATE)
        torch.testing.assert_close(logits[k][mask[k].bool()], want_logits, rtol=0, atol=1e-5)
        assert torch.equal(tokens[k], want_tokens), k
    _, unsteered, _ = batched(model, **GENERATE)
    assert any(not torch.equal(tokens[k], unsteered[k]) for k in range(len(ROWS)) if chosen[k])


def test_conditions_compose_and_any_operator_and_positions_follow(model) -> None:
    first, rows_first = median_condition(model, layer=0, seed=3)
    second, rows_second = median_condition(model, layer=1, seed=4, score="cosine")
    for combined, rows in ((first & second, rows_first & rows_second), (first | second, rows_first | rows_second)):
        steering = dict(vector=behaviour(), multiplier=0.5, operator="clamp", positions="generated")
        with model.steer(**steering, condition=combined):
            _, tokens, _ = batched(model, **GENERATE)
        for k, row in enumerate(ROWS):
            _, want = alone(model, row, steering if rows[k] else None, **GENERATE)
            assert torch.equal(tokens[k], want), (combined, k)


def test_the_decision_is_made_on_the_prompt_and_held_while_decoding(model) -> None:
    """A decode token that alone would flip the condition does not: the cache holds the decision."""
    prompt, nxt = [5, 6, 7, 8, 9, 10], 60
    c = direction(9)
    with torch.no_grad(), model.record(layers=[0]) as recording:
        model(input_ids=torch.tensor([prompt + [nxt]]))
    acts = recording[0]
    prompt_score = condition_scores(acts[:, :-1], torch.ones(1, len(prompt), dtype=torch.bool), c)
    last_score = condition_scores(acts[:, -1:], torch.ones(1, 1, dtype=torch.bool), c)
    assert float(prompt_score) != float(last_score)
    threshold = (float(prompt_score) + float(last_score)) / 2
    comparator = ">" if float(prompt_score) > threshold else "<"  # the prompt meets it, the new token would not
    condition = Condition(c, 0, threshold, comparator)
    with torch.no_grad():
        with model.steer(behaviour(), 1.0):
            always = model(input_ids=torch.tensor([prompt + [nxt]])).logits[0, -1]
        never = model(input_ids=torch.tensor([prompt + [nxt]])).logits[0, -1]
        with model.steer(behaviour(), 1.0, condition=condition):
            first = model(input_ids=torch.tensor([prompt]), use_cache=True)
            step = model(input_ids=torch.tensor([[nxt]]), past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[0, -1], always, rtol=0, atol=1e-5)
    assert not torch.allclose(step.logits[0, -1], never, atol=1e-3)


def test_a_compiled_model_does_not_recompile_when_outcomes_change(model) -> None:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(model, backend=counter)
    condition, chosen = median_condition(model)
    ids, mask = left_pad(ROWS)
    flipped = ids.flip(0), mask.flip(0)  # same shapes, the rows' outcomes in another order
    with torch.no_grad(), model.steer(behaviour(), 1.0, condition=condition):
        for batch in ((ids, mask), flipped, (ids, mask)):
            got = compiled(input_ids=batch[0], attention_mask=batch[1]).logits
            assert torch.equal(got, model(input_ids=batch[0], attention_mask=batch[1]).logits)
    assert counter.frame_count == 1 and not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(vector=torch.randn(16)), ValueError, "the condition vector has hidden size 16 but the model's is 32"),
        (dict(layer=7), IndexError, "condition layer 7 is out of range: the model has 3 decoder layers"),
        (dict(threshold=float("nan")), ValueError, "a condition threshold must be finite, got nan"),
        (dict(comparator=">="), ValueError, "unknown comparator '>=': use '>' or '<'"),
        (dict(score="dot"), ValueError, "unknown score 'dot'"),
        (dict(layer=2), ValueError, r"the behaviour steers layers \[1\], before the condition is decided at layer 2"),
    ],
)
def test_bad_conditions_are_refused_and_leave_the_model_untouched(model, change, error, message) -> None:
    base = dict(vector=direction(3), layer=0, threshold=0.1, comparator=">", score="projection")
    with pytest.raises(error, match=message):
        model.steer(behaviour(), 1.0, condition=Condition(**(base | change)))
    assert not model.is_steering and model._steerable.active is None and not model._steerable.installed
    with pytest.raises(TypeError, match="conditions combine with conditions"):
        Condition(**base) & "rows"


@pytest.mark.parametrize("reentrant", [False, True])
def test_conditional_gradients_under_checkpointing_entering_the_inner_model_equal_a_hook(reentrant) -> None:
    """Where trainers run it: gradient checkpointing (the condition decided again on the replay) and
    the inner model called directly; the oracle is a hook that adds only to the rows that qualify."""
    plain = SteerableModel.wrap(tiny_model("llama"))
    condition, chosen = median_condition(plain)
    ids, mask = left_pad(ROWS)
    vanilla = tiny_model("llama").train()
    steerable = SteerableModel.wrap(tiny_model("llama")).train()
    steerable.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    gate = chosen.float()[:, None, None]
    probe = direction(21)
    edits = {layer: (lambda h, v=v: h + v * gate) for layer, v in behaviour().items()}

    def loss_and_grads(model, inner):
        model.zero_grad()
        hidden = inner(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        loss = ((hidden @ probe).pow(2) * mask).sum()  # not the norm: the final RMSNorm fixes that
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with hooked(vanilla, edits):
        want_loss, want = loss_and_grads(vanilla, vanilla.model)
    with steerable.steer(behaviour(), 1.0, condition=condition):
        got_loss, got = loss_and_grads(steerable, steerable.model)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-4)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
    unconditional_loss, _ = loss_and_grads(vanilla, vanilla.model)
    assert not torch.allclose(unconditional_loss, want_loss)  # the steered rows did change the loss


def test_a_half_precision_condition_scores_long_prompts_in_float32() -> None:
    """fp16 sums of a long prompt overflowed to inf, the score became NaN and the condition never
    fired; the score now equals the float32 model's within fp16's rounding."""
    half = SteerableModel.wrap(tiny_model("llama")).half()
    full = SteerableModel.wrap(tiny_model("llama"))
    ids = torch.randint(3, 90, (1, 1400), generator=torch.Generator().manual_seed(0))
    c = direction(7)
    with half.record(layers=[1]) as got, full.record(layers=[1]) as expected, torch.no_grad():
        half(input_ids=ids)
        full(input_ids=ids)
    prompt = torch.ones(1, 1400, dtype=torch.bool)
    score = condition_scores(got[1] * 300, prompt, c)  # large activations: an fp16 sum would be inf
    reference = condition_scores(expected[1].float() * 300, prompt, c)
    assert torch.isfinite(score).all()
    torch.testing.assert_close(score, reference, atol=2e-3, rtol=0)


def test_thresholds_are_never_rounded_to_the_models_dtype() -> None:
    """A threshold just below a row's score fires whatever the model's dtype (bf16 rounded 0.40135 to
    0.40039) and however close (half a float32 ulp)."""
    model = SteerableModel.wrap(tiny_model("llama"))
    ids, mask = left_pad(ROWS[:2])
    c = direction(9)
    with model.record(layers=[1]) as recording, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    scores = condition_scores(recording[1], mask.bool(), c)
    below = float(scores[0]) - 1e-9  # between the score and the float32 number under it
    condition = Condition(SteeringVector({1: c}), 1, below, ">")
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        with model.record(layers=[1]) as recording, torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        score = float(condition_scores(recording[1], mask.bool(), c)[0])
        threshold = score - 1e-9
        condition = Condition(SteeringVector({1: c}), 1, threshold, ">")
        with model.steer(behaviour(), 50.0, condition=condition), torch.no_grad():
            steered = model(input_ids=ids, attention_mask=mask).logits
        plain = model(input_ids=ids, attention_mask=mask).logits
        assert not torch.equal(steered[0], plain[0]), dtype  # fires: the threshold is below the score
        condition = Condition(SteeringVector({1: c}), 1, score + 1e-9, ">")
        with model.steer(behaviour(), 50.0, condition=condition), torch.no_grad():
            assert torch.equal(model(input_ids=ids, attention_mask=mask).logits[0], plain[0]), dtype
    assert below < float(scores[0])


def test_python_and_or_on_conditions_is_an_error_naming_and_or() -> None:
    a, b = Condition(direction(1), 1, 0.1), Condition(direction(2), 1, 0.2)
    with pytest.raises(TypeError, match=r"combine conditions with & \(all of\) and \| \(any of\)"):
        _ = a and b
    with pytest.raises(TypeError, match="no truth value"):
        _ = (a & b) or a


@pytest.mark.parametrize("site", ["mlp", "attn", "input_norm"])
def test_a_sub_module_site_of_the_condition_layer_is_refused_at_steer(site) -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    condition = Condition(direction(1), 1, 0.0)
    at_site = SteeringVector({1: direction(2)}, site=site)
    with pytest.raises(ValueError, match=f"steers site '{site}' of layer 1, where the condition is decided"):
        model.steer(at_site, 1.0, condition=condition)
    assert not model.is_steering
    with model.steer(SteeringVector({2: direction(2)}, site=site), 1.0, condition=condition):
        ids, mask = left_pad(ROWS[:2])
        model(input_ids=ids, attention_mask=mask)  # a later layer's site works
