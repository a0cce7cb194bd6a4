"""Role positions in a request: the prompt tokens of a chat role, found once, when the request arrives.

``positions="assistant"`` / ``"last_user_turn"`` mean what they mean in ``SteerableModel.steer(...,
tokenizer=...)``: ``steerable.chat_roles`` finds the turns from the turn markers of the model's chat
template, and generated tokens are the assistant's. The frontend writes each such steering's prompt
positions as ``[start, end)`` runs into the resolved steering, which the worker reads per token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from steerable.chat_roles import ChatMarkers, role_mask
from steerable.serving.catalog import SteeringSpecError
from steerable.serving.request_spec import ROLE_POSITIONS, ResolvedSteering


def runs(mask: Bool[Tensor, " seq"]) -> tuple[tuple[int, int], ...]:
    """The ``[start, end)`` runs of True in a 1-D mask."""
    edges = torch.diff(torch.nn.functional.pad(mask.int(), (1, 1)))
    starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    return tuple(zip(starts, ends, strict=True))


class RoleFinder:
    """The chat markers of each tokenizer, read off its template once."""

    def __init__(self) -> None:
        self._markers: dict[int, ChatMarkers] = {}

    def markers(self, tokenizer: Any, role: str) -> ChatMarkers:
        if tokenizer is None:
            raise SteeringSpecError(
                f"positions {role!r} are found with the model's tokenizer, and this server runs without one "
                "(skip_tokenizer_init): start it with its tokenizer, or use all/prompt/generated"
            )
        if id(tokenizer) not in self._markers:
            try:
                self._markers[id(tokenizer)] = ChatMarkers.from_tokenizer(tokenizer)
            except ValueError as error:
                raise SteeringSpecError(f"positions {role!r}: {error}") from None
        return self._markers[id(tokenizer)]

    def resolve(self, steerings: list[ResolvedSteering], prompt: list[int], tokenizer: Any) -> list[ResolvedSteering]:
        """``steerings`` with each role steering's prompt positions found in ``prompt``."""
        out = []
        for steering in steerings:
            if steering.positions in ROLE_POSITIONS:
                tensors = self.markers(tokenizer, steering.positions).tensors(steering.positions)  # type: ignore[arg-type]
                ids = torch.tensor([prompt], dtype=torch.long)
                mask = role_mask(ids, tensors["header"], tensors["end"], steering.positions)  # type: ignore[arg-type]
                steering = dataclasses.replace(steering, prompt_runs=runs(mask[0]))
            out.append(steering)
        return out
