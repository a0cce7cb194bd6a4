"""Per-request steering (steer_rows): each row equals its steering alone, in forward and generate."""

from __future__ import annotations

import pytest
import torch
from row_cases import GENERATE, ROWS, alone, batched, behaviour, direction, median_condition

from steerable import RowSteering, SteerableModel, SteeringVector
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import tiny_model


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


# -- per-request steering ---------------------------------------------------------------------
def requests(model) -> tuple[list, list]:
    """Five rows: two plain adds (fused), an ablation at another layer, nothing, a conditional clamp on
    generated tokens; and each row's own steering for the oracle."""
    condition, _ = median_condition(model)
    own = [
        dict(vector=SteeringVector({1: direction(11)}), multiplier=2.0),
        dict(vector=SteeringVector({0: direction(12), -1: direction(13)}), multiplier=-1.5),
        dict(vector=SteeringVector({2: direction(14)}), multiplier=1.0, operator="ablate"),
        None,
        dict(vector=behaviour(), multiplier=0.5, operator="clamp", positions="generated", condition=condition),
    ]
    rows = [RowSteering(**s) if s is not None else None for s in own]
    rows[0] = own[0]["vector"] * 2.0  # a bare vector is a request too
    return rows, own


@pytest.mark.parametrize("use_cache", [True, False])
def test_per_request_rows_equal_each_row_alone(model, use_cache) -> None:
    rows, own = requests(model)
    with model.steer_rows(rows) as handle:
        logits, tokens, mask = batched(model, use_cache=use_cache, **GENERATE)
        assert len(handle.handles) == 3  # the two adds share one fused steering
    assert not model.is_steering
    for k, row in enumerate(ROWS):
        want_logits, want_tokens = alone(model, row, own[k], use_cache=use_cache, **GENERATE)
        torch.testing.assert_close(logits[k][mask[k].bool()], want_logits, rtol=0, atol=1e-5)
        assert torch.equal(tokens[k], want_tokens), k


def test_per_request_rows_repeat_with_their_prompt_in_generate(model) -> None:
    rows, own = requests(model)
    ids, mask = left_pad(ROWS)
    beams = dict(GENERATE, num_beams=2, num_return_sequences=2)
    with torch.no_grad(), model.steer_rows(rows):
        out = model.generate(input_ids=ids, attention_mask=mask, **beams)
    for k, row in enumerate(ROWS):
        with torch.no_grad():
            ids_alone = torch.tensor([row])
            run = dict(input_ids=ids_alone, attention_mask=torch.ones_like(ids_alone), **beams)
            if own[k] is None:
                want = model.generate(**run)[:, len(row) :]
            else:
                with model.steer(**own[k]):
                    want = model.generate(**run)[:, len(row) :]
        got = out[2 * k : 2 * k + 2, ids.shape[1] :]
        assert torch.equal(got[:, : want.shape[1]], want), k


def test_bad_requests_name_the_problem(model) -> None:
    with pytest.raises(ValueError, match="requests is empty"):
        model.steer_rows([])
    with pytest.raises(TypeError, match="request 1 must be a RowSteering, a SteeringVector or None"):
        model.steer_rows([None, "vector"])
    with pytest.raises(ValueError, match="hidden size 16 but the model's is 32"):
        model.steer_rows(
            [SteeringVector({0: torch.randn(32)}), RowSteering(SteeringVector({0: torch.randn(16)}), operator="ablate")]
        )
    assert not model.is_steering


def test_rows_inside_generate_are_matched_to_prompts_never_by_divisibility(model) -> None:
    """Per-row values inside generate must be one per prompt (repeated for its copies); 3 requests over
    6 prompts, or 3 requests for 1 prompt's 3 copies, are errors naming both counts."""
    ids, mask = left_pad(ROWS[:2] * 3)  # 6 prompts
    v = behaviour()
    with model.steer_rows([RowSteering(v, 2.0), None, RowSteering(v, -2.0)]):
        with pytest.raises(ValueError, match="has 3 rows but generate was given 6 prompts"):
            model.generate(input_ids=ids, attention_mask=mask, **GENERATE)
    with model.steer(v, torch.tensor([3.0, 0.0, -3.0])):
        with pytest.raises(ValueError, match="has 3 rows but generate was given 6 prompts"):
            model.generate(input_ids=ids, attention_mask=mask, **GENERATE)
    one, one_mask = left_pad(ROWS[:1])
    with model.steer_rows([RowSteering(v, 2.0), None, RowSteering(v, -2.0)]):
        with pytest.raises(ValueError, match="has 3 rows but generate was given 1 prompts"):
            model.generate(
                input_ids=one,
                attention_mask=one_mask,
                num_return_sequences=3,
                do_sample=True,
                **{k: v for k, v in GENERATE.items() if k != "do_sample"},
            )
    # one row per prompt is repeated for its copies: equal to each prompt alone
    with model.steer(v, torch.tensor([3.0, -3.0])):
        both = model.generate(
            input_ids=ids[:2], attention_mask=mask[:2], num_return_sequences=2, **{**GENERATE, "num_beams": 2}
        )
    for row, m in enumerate((3.0, -3.0)):
        with model.steer(v, m):
            alone = model.generate(
                input_ids=ids[row : row + 1],
                attention_mask=mask[row : row + 1],
                **{**GENERATE, "num_beams": 2, "num_return_sequences": 2},
            )
        assert torch.equal(both[2 * row : 2 * row + 2, -5:], alone[:, -5:]), row


def test_a_one_row_per_row_steering_is_not_broadcast_to_the_batch(model) -> None:
    ids, mask = left_pad(ROWS[:4])
    with model.steer(behaviour(), torch.tensor([2.0])):
        with pytest.raises(ValueError, match="has 1 rows but the batch has 4 rows"):
            model(input_ids=ids, attention_mask=mask)


def test_the_fused_path_validates_as_steer_does_and_keeps_gradients(model) -> None:
    ids, mask = left_pad(ROWS[:2])
    twice = SteeringVector({1: direction(1), -2: direction(2)})  # layer 1 and -2 are one layer (of 3)
    with pytest.raises(ValueError, match="layer -2 and layer 1 name the same decoder layer"):
        model.steer_rows([RowSteering(twice, 1.0), None])
    with pytest.raises(TypeError, match="multiplier must be a number"):
        model.steer_rows([RowSteering(behaviour(), True), None])
    learned = SteeringVector({1: torch.nn.Parameter(direction(3))})
    with model.steer_rows([RowSteering(learned, 2.0), None]):
        model(input_ids=ids, attention_mask=mask).logits.pow(2).mean().backward()
    grad = learned[1].grad
    assert grad is not None and float(grad.abs().sum()) > 0
    learned[1].grad = None
    only = torch.tensor([True, False])
    with model.steer(learned, 2.0, rows=only):  # the reference: a row-masked steering
        model(input_ids=ids, attention_mask=mask).logits.pow(2).mean().backward()
    torch.testing.assert_close(grad, learned[1].grad)
