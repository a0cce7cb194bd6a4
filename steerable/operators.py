"""What a steering does to the hidden states of the tokens it selects.

``add`` adds ``multiplier * v``. ``ablate`` removes the component along ``v``. ``ablate_then_add``
removes it, then adds ``multiplier * v``. ``clamp`` sets the component along the unit vector
``v / |v|`` to ``multiplier`` (a value in activation units). Any of them can be norm-preserving: each
token is rescaled back to the norm it had before steering.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

Operator = Literal["add", "ablate", "ablate_then_add", "clamp"]
OPERATORS: tuple[str, ...] = ("add", "ablate", "ablate_then_add", "clamp")


def apply_operator(
    hidden: Float[Tensor, "batch seq d_model"],
    operator: str,
    delta: Float[Tensor, "*rows d_model"] | None,
    unit: Float[Tensor, "*rows d_model"] | None,
    target: Float[Tensor, "*rows 1"] | None,
    norm_preserving: bool,
    token_mask: Bool[Tensor, "batch seq"] | None,
) -> Float[Tensor, "batch seq d_model"]:
    """Steer ``hidden``. ``delta`` is ``multiplier * v``, ``unit`` is ``v / |v|``, ``target`` the clamp
    value; per-row tensors have shape ``[batch, 1, ...]`` so they broadcast over the sequence."""
    if operator == "add" and not norm_preserving and token_mask is None:
        assert delta is not None
        return hidden + delta  # the common case: one add, nothing else
    steered = hidden
    if operator != "add":
        assert unit is not None
        projection = (steered * unit).sum(-1, keepdim=True)
        if operator == "clamp":
            assert target is not None
            steered = steered + (target - projection) * unit
        else:
            steered = steered - projection * unit
    if operator in ("add", "ablate_then_add"):
        assert delta is not None
        steered = steered + delta
    if norm_preserving:
        before = hidden.norm(dim=-1, keepdim=True)
        after = steered.norm(dim=-1, keepdim=True)
        steered = steered * (before / after.clamp_min(torch.finfo(after.dtype).tiny))
    if token_mask is not None:
        steered = torch.where(token_mask.unsqueeze(-1), steered, hidden)
    return steered
