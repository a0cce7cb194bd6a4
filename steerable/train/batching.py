"""Texts to one padded batch, written once: the pad token, the padding side and the positions.

Three things every batched forward over texts of different lengths needs, and that are easy to get
subtly wrong:

- the pad token: a tokenizer may have none (GPT-2, SmolLM2 read from GGUF); padded positions are
  masked, so any id works, and the choice is ``pad_token_id``, else ``eos_token_id``, else 0;
- the padding side, chosen per call: the caller's tokenizer is never changed (its ``padding_side``
  belongs to the caller, and another thread may be using it);
- ``position_ids`` from the attention mask: absolute-position models (GPT-2) otherwise give a
  left-padded row the positions of its padding, and its scores differ from the row run alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

Side = Literal["left", "right"]


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token, else 0 (padded
    positions are masked out, so the id only has to be a valid token)."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            return candidate
    return 0


def position_ids(attention_mask: Int[Tensor, "batch seq"]) -> Int[Tensor, "batch seq"]:
    """Each token's position counted over its row's real tokens (padding gets 0), so a padded row has
    the positions it has alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Padded:
    """A padded batch of token rows: ids, attention mask and positions, and each row's length."""

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    position_ids: Int[Tensor, "batch seq"]
    lengths: list[int]
    padding_side: Side

    def to(self, device: torch.device | str) -> Padded:
        return Padded(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.lengths,
            self.padding_side,
        )

    def offsets(self) -> list[int]:
        """Where each row's first real token is (non-zero only when padded on the left)."""
        width = self.input_ids.shape[1]
        return [width - n if self.padding_side == "left" else 0 for n in self.lengths]

    def inputs(self, with_positions: bool = True) -> dict[str, Tensor]:
        """Keyword arguments for a model's forward (``position_ids`` unless ``with_positions`` is False:
        a forward that takes none)."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if with_positions:
            out["position_ids"] = self.position_ids
        return out


def pad(rows: Sequence[Sequence[int]], pad_id: int, padding_side: Side = "left") -> Padded:
    """Token rows padded to the longest on ``padding_side`` with ``pad_id``."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not rows:
        raise ValueError("no rows to pad: give at least one sequence of token ids")
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        span = slice(width - len(tokens), width) if padding_side == "left" else slice(0, len(tokens))
        ids[row, span] = torch.tensor(list(tokens), dtype=torch.long)
        mask[row, span] = 1
    return Padded(ids, mask, position_ids(mask), lengths, padding_side)


def tokenize(
    tokenizer: Any, texts: Sequence[str], padding_side: Side = "left", add_special_tokens: bool = True
) -> Padded:
    """``texts`` tokenised one by one (as each would be alone) and padded on ``padding_side``; the
    tokenizer is not changed and needs no pad token."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it in a list ([text])")
    rows = [token_ids(tokenizer, text, add_special_tokens) for text in texts]
    return pad(rows, pad_token_id(tokenizer), padding_side)


def token_ids(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    """``text``'s token ids, as the tokenizer gives them for the text alone."""
    if not isinstance(text, str):
        raise TypeError(f"expected a text (str), got {type(text).__name__}: {text!r}")
    return [int(i) for i in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]]


def takes_position_ids(model: Any) -> bool:
    """Whether ``model``'s forward names a ``position_ids`` argument (``**kwargs`` alone does not count:
    they may go where positions are not expected)."""
    import inspect

    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: give none
        return False
