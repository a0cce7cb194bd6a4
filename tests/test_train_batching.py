"""The batching helper (steerable.train.batching): padded rows give each row's own logits on both
padding sides (GPT-2 included, through position_ids), the caller's tokenizer is not changed, and a
tokenizer without a pad token pads with its end-of-sequence token."""

from __future__ import annotations

import pytest
import torch

from steerable.testing.tiny_models import tiny_model, tiny_tokenizer
from steerable.train.batching import pad, pad_token_id, position_ids, takes_position_ids, tokenize

TEXTS = ["w5 w6 w7 w8 w9", "w10 w11", "w12 w13 w14"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_gives_each_row_its_logits_alone(arch, side) -> None:
    model = tiny_model(arch)
    tok = tiny_tokenizer()
    tok.padding_side = "right" if side == "left" else "left"  # the call's side wins, the tokenizer keeps its own
    before = tok.padding_side
    batch = tokenize(tok, TEXTS, padding_side=side)
    assert tok.padding_side == before
    with torch.no_grad():
        logits = model(**batch.inputs()).logits
        for row, (text, offset, length) in enumerate(zip(TEXTS, batch.offsets(), batch.lengths, strict=True)):
            alone = model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[row, offset : offset + length], alone, rtol=1e-4, atol=1e-5)


def test_pad_positions_and_the_pad_token_choice() -> None:
    batch = pad([[5, 6, 7], [8]], pad_id=0, padding_side="left")
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]] and batch.offsets() == [0, 2]
    right = pad([[5, 6, 7], [8]], pad_id=9, padding_side="right")
    assert right.input_ids.tolist() == [[5, 6, 7], [8, 9, 9]] and right.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert position_ids(torch.tensor([[0, 1, 1, 1]])).tolist() == [[0, 0, 1, 2]]
    tok = tiny_tokenizer()
    assert pad_token_id(tok) == 0
    tok.pad_token = None  # like GPT-2: no pad token; the end-of-sequence token pads, and no error
    assert pad_token_id(tok) == tok.eos_token_id == 2
    assert tokenize(tok, ["w5 w6", "w7"]).input_ids.tolist() == [[5, 6], [2, 7]]
    assert pad_token_id(object()) == 0
    assert takes_position_ids(tiny_model("gpt2")) and takes_position_ids(tiny_model("llama"))


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="not one string"):
        tokenize(tiny_tokenizer(), "w5 w6")
    with pytest.raises(ValueError, match="padding_side"):
        pad([[1]], 0, "middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no rows"):
        pad([], 0)
