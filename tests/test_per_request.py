"""Per-request steering (steer_rows): each row equals its steering alone, in forward and generate."""

from __future__ import annotations

import pytest
import torch

from steerable import Condition, RowSteering, SteerableModel, SteeringVector
from steerable.conditions import condition_scores
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import tiny_model

ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21, 22], [23, 24]]


GENERATE = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


def direction(seed: int, d: int = 32) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def behaviour() -> SteeringVector:
    return SteeringVector({1: direction(1) * 3, 2: direction(2) * 3})


def prompt_scores(model, condition_direction: torch.Tensor, layer: int, score: str = "projection") -> torch.Tensor:
    """Each row's score, each row run alone: the oracle for which rows meet a condition."""
    out = []
    for row in ROWS:
        with torch.no_grad(), model.record(layers=[layer]) as recording:
            model(input_ids=torch.tensor([row]))
        out.append(
            condition_scores(recording[layer], torch.ones(1, len(row), dtype=torch.bool), condition_direction, score)
        )
    return torch.cat(out)


def median_condition(
    model, layer: int = 0, comparator: str = ">", seed: int = 3, score: str = "projection"
) -> tuple[Condition, torch.Tensor]:
    """A condition some rows meet and some do not, and the oracle's rows."""
    c = direction(seed)
    scores = prompt_scores(model, c, layer, score)
    ordered = scores.sort().values
    threshold = float(ordered[1] + ordered[2]) / 2  # well between two rows: padding cannot tip a row over
    chosen = scores > threshold if comparator == ">" else scores < threshold
    assert 0 < int(chosen.sum()) < len(ROWS)
    return Condition(c, layer, threshold, comparator, score), chosen


def alone(model, row: list[int], steer: dict | None, **generate) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``row`` run by itself: its logits and its greedy continuation, steered as ``steer`` says."""
    ids = torch.tensor([row])
    with torch.no_grad():
        if steer is None:
            return model(input_ids=ids).logits[0], model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **generate
            )[0, len(row) :]
        with model.steer(**steer):
            return model(input_ids=ids).logits[0], model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **generate
            )[0, len(row) :]


def batched(model, **generate) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = left_pad(ROWS)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        out = model.generate(input_ids=ids, attention_mask=mask, **generate)
    return logits, out[:, ids.shape[1] :], mask


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
