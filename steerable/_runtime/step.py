"""Absolute token positions, carried with each forward call, and which tokens a steering selects.

A token's position is its index in its own row counted from the row's first non-padding token, so it
is the same whether the row is padded left or right, batched or alone, decoded with a KV cache or not.

Where the decoder stack is entered (the model's forward, or the inner model's when a trainer calls it
directly) the positions of the tokens about to be processed are computed once, into a
:class:`StepContext`, together with the token mask of every active token selection. The context
travels with the call: as a keyword argument that transformers passes on to every decoder layer (and
that gradient checkpointing replays with the layer), and, for layers that do not receive keyword
arguments and for sub-modules, as a context variable (per thread and per asyncio task). Nothing about
one forward is stored on the model, so forwards in different threads cannot see each other's.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange, repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerable._runtime.active import Active, ProbeOp

if TYPE_CHECKING:
    from steerable.spec import PositionMode

STEP_KWARG = "steerable_step"  # the keyword argument decoder layers receive the step context by
LENGTHS_KWARG = "steerable_prompt_lengths"  # the one ``generate`` passes prompt lengths to the model by

#: The step context of the forward running in this thread/task (for layers and sub-modules that get
#: no keyword argument). A ContextVar rather than model state: concurrent forwards never share it.
CURRENT_STEP: ContextVar[StepContext | None] = ContextVar("steerable_step", default=None)
#: Per-row prompt lengths while ``generate`` runs in this thread/task.
PROMPT_LENGTHS: ContextVar[Tensor | None] = ContextVar("steerable_prompt_lengths", default=None)


@dataclass(eq=False)
class StepContext:
    """What one forward's layers need to know: the active set it runs with, absolute positions (-1 for
    padding; None when nothing selects tokens), and the tokens each active selection steers
    (``masks[selection index]``, ``[batch, seq, 1]``)."""

    active: Active | None
    positions: Int[Tensor, "batch seq"] | None = None
    masks: dict[int, Bool[Tensor, "batch seq 1"]] = field(default_factory=dict)
    # inside generate: the number of prompts; the batch may hold each prompt's rows several times in a
    # row (num_return_sequences, beams), and per-row values are given per prompt
    prompts: int | None = None
    # conditional steering: each condition's decision per row (set at its layer), the decisions kept
    # with the sequence's KV cache, the prompt tokens decisions are made on, and for each conditional
    # selection the condition tree its row gate follows from (applied when the selection is first used)
    gates: dict[int, Bool[Tensor, " batch"]] = field(default_factory=dict)
    memory: dict[int, Tensor] | None = None
    prompt: Bool[Tensor, "batch seq"] | None = None
    conditional: dict[int, Any] = field(default_factory=dict)
    batched: dict[int, tuple[Tensor, ...]] = field(default_factory=dict)  # selection -> each layer's masked add
    _weights: dict[int, Tensor] = field(default_factory=dict)

    def mask(self, index: int, device: torch.device) -> Bool[Tensor, "batch seq 1"]:
        if index in self.conditional:
            self._gate(index)
        mask = self.masks[index]
        return mask if mask.device == device else mask.to(device)  # layers split over devices

    def weight(self, index: int, like: Tensor) -> Float[Tensor, "batch seq 1"]:
        """The mask as 1.0/0.0 in ``like``'s dtype and device, made once per forward (again only where
        a layer's dtype or device differs from the last one's): a masked add is one ``addcmul``."""
        if index in self.conditional:
            self._gate(index)
        weight = self._weights.get(index)
        if weight is None or weight.dtype != like.dtype or weight.device != like.device:
            weight = self._weights[index] = self.masks[index].to(like.device, like.dtype)
        return weight

    def _gate(self, index: int) -> None:
        """Restrict a conditional selection to the rows that meet its condition (decided by now: the
        behaviour's layers come after the condition's)."""
        from steerable._runtime.conditional import evaluate

        rows = evaluate(self.conditional.pop(index), self.gates)
        self.masks[index] = self.masks[index] & rearrange(rows.to(self.masks[index].device), "b -> b 1 1")

    def decide(self, probe: ProbeOp, hidden: Float[Tensor, "batch seq d_model"]) -> None:
        """A condition's decision for each row: held from this sequence's first forward if the KV cache
        keeps one, else made now on the prompt tokens of this forward (and kept)."""
        from steerable._runtime.conditional import decision

        held = self.memory.get(probe.index) if self.memory is not None else None
        if held is not None and held.shape[0] == hidden.shape[0]:
            self.gates[probe.index] = held
            return
        assert self.positions is not None
        prompt = self.prompt if self.prompt is not None else self.positions >= 0
        made = decision(probe, hidden, prompt.to(hidden.device))
        self.gates[probe.index] = made
        if self.memory is not None:
            self.memory[probe.index] = made


#: The step of a forward that entered an idle model: layers swapped in meanwhile do nothing for it.
IDLE = StepContext(None)


@dataclass(eq=False)
class Selection:
    """Which tokens of each row a steering applies to; all conditions given must hold.

    ``mode``: every token, only the prompt, or only generated tokens (the prompt length of each row is
    taken when ``generate`` is called; outside ``generate`` every token counts as prompt); or a chat
    role (``"assistant"``, ``"last_user_turn"``: see ``steerable.chat_roles``), found with ``markers``.
    ``min_token_index``: only tokens at this absolute position or later.
    ``mask``: an explicit ``[rows, prompt_len]`` (or ``[prompt_len]``, for every row) boolean mask over
    absolute positions; positions past its end are not steered.
    """

    mode: PositionMode = "all"
    min_token_index: int | None = None
    mask: Bool[Tensor, "*rows positions"] | None = None
    markers: dict[str, Tensor] | None = None  # a role's turn header and end-of-turn token ids
    rows: Bool[Tensor, " rows"] | None = None  # only these batch rows (per-request steering)
    condition: Any = None  # a steerable.conditions expression: only rows whose prompt meets it

    @property
    def everything(self) -> bool:
        return (
            self.mode == "all"
            and self.min_token_index is None
            and self.mask is None
            and self.rows is None
            and self.condition is None
        )

    def tensors(self) -> dict[str, Tensor]:
        """The selection's values as tensors (stored in stable buffers, so new values never recompile)."""
        tensors: dict[str, Tensor] = {}
        if self.min_token_index is not None:
            tensors["min_index"] = torch.tensor(self.min_token_index, dtype=torch.long)
        if self.mask is not None:
            tensors["mask"] = self.mask.detach().clone()
        if self.markers is not None:
            tensors |= self.markers
        if self.rows is not None:
            tensors["rows"] = self.rows.detach().clone()
        return tensors


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
    attention_mask: Any = None,
    position_ids: Any = None,
    cache_position: Any = None,
    cache: Any = None,
) -> Int[Tensor, "batch seq"]:
    """Positions of the ``seq_len`` tokens being processed.

    From a 2-D attention mask (padding gets -1); else from ``position_ids`` (``generate`` computes them
    from the mask when it passes a 4-D mask, as with static caches); else the cache length onwards."""
    if isinstance(attention_mask, Tensor) and attention_mask.ndim == 2 and attention_mask.shape[-1] >= seq_len:
        mask = attention_mask.to(device).long()
        # the count of real tokens so far, minus one; padding (mask 0) becomes 0 - 1 = -1
        return (mask.cumsum(-1)[:, -seq_len:] * mask[:, -seq_len:] - 1).expand(batch, seq_len)
    if isinstance(position_ids, Tensor) and position_ids.ndim == 2 and position_ids.shape[-1] == seq_len:
        return position_ids.to(device).long().expand(batch, seq_len)
    if isinstance(cache_position, Tensor) and cache_position.ndim == 1 and cache_position.shape[0] == seq_len:
        return repeat(cache_position.to(device).long(), "seq -> batch seq", batch=batch)
    start = past_length(cache)
    return repeat(torch.arange(start, start + seq_len, device=device), "seq -> batch seq", batch=batch)


def selection_mask(
    mode: PositionMode,
    positions: Int[Tensor, "batch seq"],
    prompt_lengths: Int[Tensor, " rows"] | None,
    min_index: Int[Tensor, ""] | None,
    token_mask: Bool[Tensor, "*rows width"] | None,
    input_ids: Int[Tensor, "batch seq"] | None = None,
    markers: dict[str, Tensor] | None = None,
    rows: Bool[Tensor, " rows"] | None = None,
) -> Bool[Tensor, "batch seq 1"]:
    """Which tokens a selection steers in this forward."""
    batch = positions.shape[0]
    prompts = None if prompt_lengths is None else prompt_lengths.shape[0]  # inside generate
    if rows is not None:  # per-request: only these rows (repeated with their prompt inside generate)
        keep = rows_for_batch(rows.to(positions.device), batch, "the rows of a per-request steering", prompts)
        unrestricted = selection_mask(mode, positions, prompt_lengths, min_index, token_mask, input_ids, markers)
        return unrestricted & rearrange(keep, "b -> b 1 1")
    if mode in ("assistant", "last_user_turn"):
        return _role_selection(mode, positions, prompt_lengths, min_index, token_mask, input_ids, markers)
    # min_index >= 0, so comparing with it also leaves out padding (position -1): one op, not two
    selected = positions >= min_index.to(positions.device) if min_index is not None else positions >= 0
    if mode != "all" and prompt_lengths is not None:
        lengths = rearrange(
            rows_for_batch(prompt_lengths.to(positions.device), batch, "prompt lengths", prompts), "b -> b 1"
        )
        selected = selected & (positions >= lengths if mode == "generated" else positions < lengths)
    elif mode == "generated":
        selected = torch.zeros_like(selected)  # outside generate, every token is prompt
    if token_mask is not None:
        mask = token_mask.to(positions.device)
        mask = (
            rows_for_batch(mask, batch, "the token mask", prompts)
            if mask.ndim == 2
            else repeat(mask, "width -> batch width", batch=batch)
        )
        width = mask.shape[-1]
        picked = mask.gather(1, positions.clamp(0, width - 1))
        selected = selected & (positions < width) & picked
    return rearrange(selected, "batch seq -> batch seq 1")


def _role_selection(
    mode: PositionMode,
    positions: Int[Tensor, "batch seq"],
    prompt_lengths: Int[Tensor, " rows"] | None,
    min_index: Int[Tensor, ""] | None,
    token_mask: Bool[Tensor, "*rows width"] | None,
    input_ids: Int[Tensor, "batch seq"] | None,
    markers: dict[str, Tensor] | None,
) -> Bool[Tensor, "batch seq 1"]:
    """A chat role's tokens: found in the token ids; inside ``generate`` generated tokens are the
    assistant's (and no user turn's), whatever their ids."""
    from steerable.chat_roles import role_mask

    if input_ids is None or markers is None:
        raise ValueError(
            f"positions={mode!r} finds the turn in the token ids, and this forward was given inputs_embeds: "
            "pass input_ids, or select tokens with a boolean mask"
        )
    role = role_mask(input_ids.to(positions.device), markers["header"], markers["end"], mode)  # type: ignore[arg-type]
    if prompt_lengths is not None:
        lengths = rearrange(
            rows_for_batch(
                prompt_lengths.to(positions.device), positions.shape[0], "prompt lengths", prompt_lengths.shape[0]
            ),
            "b -> b 1",
        )
        role = torch.where(positions >= lengths, mode == "assistant", role)
    rest = selection_mask("all", positions, prompt_lengths, min_index, token_mask)
    return rest & rearrange(role, "batch seq -> batch seq 1")


def rows_for_batch(tensor: Tensor, batch: int, what: str, prompts: int | None = None) -> Tensor:
    """``tensor`` with one entry per batch row. Inside ``generate`` (``prompts`` given) per-row values
    are given per prompt, and a batch holds each prompt's rows ``batch // prompts`` times in a row
    (``num_return_sequences``, beams): each row is repeated to match. Anywhere else the rows must
    match the batch."""
    rows = tensor.shape[0]
    if prompts is None and rows == batch:
        return tensor
    if prompts is not None and rows == prompts and batch % prompts == 0:
        return tensor if batch == rows else tensor.repeat_interleave(batch // prompts, dim=0)
    where = (
        f"generate was given {prompts} prompts (the batch has {batch} rows): give one row per prompt"
        if prompts is not None
        else f"the batch has {batch} rows: give one row per batch row (rows are repeated only inside generate, one "
        "per prompt for its num_return_sequences or beams)"
    )
    raise ValueError(f"{what} has {rows} rows but {where}")


def row_columns(positions: Int[Tensor, "batch seq"], wanted: list[int]) -> Int[Tensor, "batch k"]:
    """For each row, the columns of its ``wanted`` tokens, counted among the row's non-padding tokens of
    this forward (negative: from the row's last one), so left and right padding read the same tokens."""
    real = positions >= 0
    counts = rearrange(real.sum(1), "b -> b 1")
    ordinal = real.cumsum(1) - 1  # index among the row's real tokens
    target = torch.tensor(wanted, device=positions.device)
    target = torch.where(target < 0, target + counts, target)  # [batch, k]
    short = ((target < 0) | (target >= counts)).any(1)
    if bool(short.any()):
        row = int(short.nonzero()[0])
        raise ValueError(
            f"record positions {wanted} are outside row {row}, which has {int(counts[row])} non-padding tokens in "
            "this forward (indices count each row's own tokens; negative from its last)"
        )
    hits = (rearrange(ordinal, "b s -> b 1 s") == rearrange(target, "b k -> b k 1")) & rearrange(real, "b s -> b 1 s")
    return hits.int().argmax(-1)
