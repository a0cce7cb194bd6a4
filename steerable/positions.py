"""Absolute token positions, and which tokens a steering applies to.

A token's position is its index in its own row counted from the row's first non-padding token, so it
is the same whether the row is padded left or right, batched or alone, decoded with a KV cache or not.
The model's forward computes the positions of the tokens it is about to process (from the attention
mask, else from the cache length) and the layers read them from the :class:`Runtime` they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

PositionMode = Literal["all", "prompt", "generated"]


@dataclass(eq=False, frozen=True)
class TokenSelection:
    """Which tokens of each row a steering applies to. All conditions given must hold.

    ``mode``: every token, only the prompt, or only generated tokens (the prompt length of each row is
    taken when ``generate`` is called; outside ``generate`` every token counts as prompt).
    ``min_token_index``: only tokens at this absolute position or later.
    ``mask``: an explicit ``[rows, prompt_len]`` (or ``[prompt_len]``, for every row) boolean mask
    over absolute positions; positions past its end are not steered.
    """

    mode: PositionMode = "all"
    min_token_index: int | None = None
    mask: Bool[Tensor, "*rows positions"] | None = None

    @property
    def everything(self) -> bool:
        return self.mode == "all" and self.min_token_index is None and self.mask is None


def past_length(cache: Any) -> int:
    """Number of tokens already in a KV cache (a transformers ``Cache`` or the legacy tuple form)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and len(cache) > 0 and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    return 0


def absolute_positions(
    batch: int,
    seq_len: int,
    device: torch.device,
    attention_mask: Int[Tensor, "batch total"] | None,
    past: int,
) -> Int[Tensor, "batch seq"]:
    """Positions of the ``seq_len`` tokens being processed; padding tokens get -1."""
    if attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape[-1] >= seq_len:
        mask = attention_mask[:, -seq_len:].to(device) != 0
        counted = attention_mask.to(device).long().cumsum(-1)[:, -seq_len:] - 1
        return counted.masked_fill(~mask, -1).expand(batch, seq_len)
    return (torch.arange(seq_len, device=device) + past).expand(batch, seq_len)


class Runtime:
    """Per-forward facts that all steerable layers of one model share.

    ``begin`` is called by the model's forward with its inputs; positions and token masks are computed
    lazily, once per forward, only if a steering or a recording needs them.
    """

    def __init__(self) -> None:
        self.position_users = 0  # active steerings/recordings that select tokens
        self.prompt_lengths: Int[Tensor, " batch"] | None = None  # set while `generate` runs
        self._inputs: tuple[Tensor | None, int] | None = None
        self._positions: Tensor | None = None
        self._masks: dict[int, Tensor] = {}

    def begin(self, attention_mask: Tensor | None, past: int) -> None:
        self._inputs = (attention_mask, past)
        self._positions = None
        self._masks = {}

    def end(self) -> None:
        self._inputs = None
        self._positions = None
        self._masks = {}

    def positions(self, batch: int, seq_len: int, device: torch.device) -> Int[Tensor, "batch seq"]:
        if self._positions is None or self._positions.shape != (batch, seq_len):
            attention_mask, past = self._inputs if self._inputs is not None else (None, 0)
            self._positions = absolute_positions(batch, seq_len, device, attention_mask, past)
        return self._positions

    def token_mask(
        self, selection: TokenSelection, batch: int, seq_len: int, device: torch.device
    ) -> Bool[Tensor, "batch seq"] | None:
        """Which tokens ``selection`` steers in the current forward, or None for all of them."""
        if selection.everything:
            return None
        key = id(selection)
        cached = self._masks.get(key)
        if cached is not None and cached.shape == (batch, seq_len):
            return cached
        result = self._compute_mask(selection, batch, seq_len, device)
        self._masks[key] = result
        return result

    def _compute_mask(
        self, selection: TokenSelection, batch: int, seq_len: int, device: torch.device
    ) -> Bool[Tensor, "batch seq"]:
        positions = self.positions(batch, seq_len, device)
        selected = positions >= 0
        if selection.min_token_index is not None:
            selected = selected & (positions >= selection.min_token_index)
        if selection.mode != "all" and self.prompt_lengths is not None:
            lengths = _rows(self.prompt_lengths.to(device), batch, "prompt lengths")[:, None]
            selected = selected & (positions >= lengths if selection.mode == "generated" else positions < lengths)
        elif selection.mode == "generated":
            selected = torch.zeros_like(selected)  # outside generate, every token is prompt
        if selection.mask is not None:
            mask = selection.mask.to(device)
            mask = _rows(mask, batch, "the token mask") if mask.ndim == 2 else mask.expand(batch, -1)
            width = mask.shape[-1]
            inside = positions < width
            picked = mask.gather(1, positions.clamp(0, max(width - 1, 0)))
            selected = selected & inside & picked
        return selected


def _rows(tensor: Tensor, batch: int, what: str) -> Tensor:
    """``tensor`` with one entry per batch row; `generate` may repeat rows (num_return_sequences)."""
    rows = tensor.shape[0]
    if rows == batch:
        return tensor
    if rows > 0 and batch % rows == 0:
        return tensor.repeat_interleave(batch // rows, dim=0)
    raise ValueError(f"{what} has {rows} rows but the batch has {batch}: give one row per batch row")
