"""Vectors of other steering libraries, mapped to this package's layer and site conventions.

Both mean "added to the output of decoder block i (0-based)":
- steering-vectors: ``layer_activations[i]``, with ``layer_type`` naming the site of block i;
- repeng: ``directions[i]``; its ``ControlModel`` adds them to the output of block i.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from steerable.vectors import SteeringVector

# steering-vectors' layer_type -> our site
SEED_SITES = {
    "decoder_block": "block",
    "self_attn": "attn",
    "mlp": "mlp",
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attn_norm",
}


def from_steering_vectors(obj: Any) -> SteeringVector:
    """Convert a ``steering_vectors.SteeringVector`` (``layer_activations``, ``layer_type``)."""
    layer_type = getattr(obj, "layer_type", "decoder_block")
    if layer_type not in SEED_SITES:
        raise ValueError(f"steering-vectors layer_type {layer_type!r} has no site here; known: {list(SEED_SITES)}")
    activations = getattr(obj, "layer_activations", None)
    if not isinstance(activations, dict):
        raise TypeError("expected a steering_vectors.SteeringVector with a layer_activations dict")
    return SteeringVector(
        {int(k): v.detach().clone() for k, v in activations.items()},
        site=SEED_SITES[layer_type],
        description="imported from steering-vectors",
    )


def from_repeng(obj: Any) -> SteeringVector:
    """Convert a ``repeng.ControlVector`` (``model_type``, ``directions: dict[int, ndarray]``)."""
    directions = getattr(obj, "directions", None)
    if not isinstance(directions, dict):
        raise TypeError("expected a repeng.ControlVector with a directions dict")
    return SteeringVector(
        {int(k): torch.as_tensor(np.asarray(v, dtype=np.float32)).clone() for k, v in directions.items()},
        site="block",
        model_type=getattr(obj, "model_type", None),
        description="imported from repeng",
    )


def foreign_vector_hint(obj: Any) -> str:
    """What to do with another library's vector passed where a steerable one is expected ('' if none)."""
    if hasattr(obj, "layer_activations") and hasattr(obj, "layer_type"):
        return (
            " (a steering-vectors vector): convert it with steerable.SteeringVector.from_steering_vectors(vector), "
            "or import SteeringVector from steerable.compat.steering_vectors"
        )
    if hasattr(obj, "directions") and hasattr(obj, "model_type"):
        return (
            " (a repeng ControlVector): convert it with steerable.SteeringVector.from_repeng(vector), or use "
            "steerable.compat.repeng"
        )
    return ""
