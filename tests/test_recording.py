"""model.record: recorded activations, positions per row, and forwards kept apart."""

from __future__ import annotations

import pytest
import torch

from steerable import SteerableModel, record_activations
from steerable._runtime.layer import SteerableLayer
from steerable.testing.hooks import left_pad, right_pad
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


def tokenizer(side: str = "left"):
    tok = tiny_tokenizer()
    tok.padding_side = side
    return tok


def test_record_equals_output_hidden_states_and_follows_generate() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    tok = tokenizer()
    encoded = tok(["w5 w6 w7 w8", "w9 w10"], return_tensors="pt", padding=True)
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    with model.record(layers=[0, -2]) as acts:
        with torch.no_grad():
            model(**batch)
    assert acts.keys() == [0, -2]
    assert torch.equal(acts[0], hidden[1]) and torch.equal(acts[-2], hidden[2])  # hidden[3] is normed
    assert acts.positions[0].tolist() == [[0, 1, 2, 3], [-1, -1, 0, 1]]
    mlp = record_activations(model, dict(batch), layers=[1], site="mlp", positions=[-1], to_cpu=True)
    assert mlp[1].shape == (2, 1, 32)
    with model.record(layers=[1]) as steps:
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert len(steps.steps) == 3  # the prompt, then one forward per generated token after the first
    assert [p.tolist() for p in steps.positions[1:]] == [[[4], [2]], [[5], [3]]]
    full_mask = torch.cat([batch["attention_mask"], torch.ones(2, 2, dtype=torch.long)], 1)
    with torch.no_grad():
        full = model(
            out[:, :-1],
            attention_mask=full_mask,
            position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
        ).hidden_states[2]
    real = full_mask.bool()  # padding activations are meaningless
    torch.testing.assert_close(steps[1][real], full[real], rtol=0, atol=1e-5)
    assert not any(isinstance(layer, SteerableLayer) for layer in model.steerable_layers)


IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]])


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kwargs).logits


def test_a_recording_iterates_counts_and_keeps_forwards_apart(pair) -> None:
    _, model = pair
    with model.record(layers=[0, -1]) as acts, torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
        model(input_ids=IDS[:1], attention_mask=MASK[:1])
    assert list(acts) == [0, -1] and len(acts) == 2
    assert [t.shape[0] for t in acts.forwards(0)] == [3, 1]
    assert torch.equal(acts.forwards(2)[0], acts.forwards(-1)[0])  # -1 and n-1 name one layer
    with pytest.raises(ValueError, match=r"batch sizes \[3, 1\].*recording.forwards\(layer\)"):
        acts[0]
    with pytest.raises(ValueError, match="layers is empty"):
        with model.record(layers=[]):
            pass


def test_unwrapping_inside_a_record_block_is_clean(pair) -> None:
    vanilla, model = pair
    with model.record(layers=[1]) as acts:
        with torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
        SteerableModel.unwrap(model)
    assert acts[1].shape == (3, 5, 32)
    assert type(model) is type(vanilla) and torch.equal(logits(model), logits(vanilla))


def test_record_positions_outside_the_forward_are_a_clear_error(pair) -> None:
    _, model = pair
    with pytest.raises(
        ValueError, match=r"record positions \[-1, 7\] are outside row 0, which has 5 non-padding tokens"
    ):
        with model.record(layers=[0], positions=[-1, 7]), torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
    assert not model.is_steering and model._steerable.taps == 0


ROWS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


@pytest.mark.parametrize("wanted", [[-1], [0, -2], [1]])
def test_record_positions_count_each_rows_own_tokens_with_either_padding(model, wanted) -> None:
    got = {}
    for side, pad in (("left", left_pad), ("right", right_pad)):
        ids, mask = pad(ROWS)
        with torch.no_grad(), model.record(layers=[0, 2], positions=wanted) as recording:
            model(input_ids=ids, attention_mask=mask)
        got[side] = recording
    for layer in (0, 2):
        torch.testing.assert_close(got["left"][layer], got["right"][layer], rtol=0, atol=1e-5)
    assert torch.equal(got["left"].positions[0], got["right"].positions[0])
    # the oracle: each row run alone, unpadded
    for row, tokens in enumerate(ROWS):
        with torch.no_grad(), model.record(layers=[2]) as alone:
            model(input_ids=torch.tensor([tokens]))
        torch.testing.assert_close(got["right"][2][row], alone[2][0, wanted], rtol=0, atol=1e-5)
    expected = torch.tensor([[p % len(r) for p in wanted] for r in ROWS])
    assert torch.equal(got["right"].positions[0], expected)


def test_record_positions_past_a_short_row_name_the_row(model) -> None:
    ids, mask = right_pad(ROWS)
    with pytest.raises(ValueError, match=r"record positions \[3\] are outside row 1, which has 3 non-padding"):
        with torch.no_grad(), model.record(layers=[0], positions=[3]):
            model(input_ids=ids, attention_mask=mask)
