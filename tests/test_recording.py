"""model.record: recorded activations, positions per row, and forwards kept apart."""

from __future__ import annotations

import torch

from steerable import SteerableModel, record_activations
from steerable._runtime.layer import SteerableLayer
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
