"""From a ``Steering`` and a model to what each layer gets: the checks that need the model (site,
hidden size, layer range, where a condition is decided), the token selection, and every prepared tensor,
computed before the model is touched, so a bad steering raises and leaves the model as it was."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from steerable import conditions
from steerable._runtime.state import ModelState, resolve_layers
from steerable._runtime.step import Selection
from steerable.architectures import SITES
from steerable.operators import Operator, for_rows
from steerable.spec import Steering


@dataclass
class Plan:
    operator: Operator
    selection: Selection
    rows: int | None  # a per-row steering's rows
    # decoder layer index -> (prepared tensors in fp32, the live (vector, multiplier) when trainable)
    layers: dict[int, tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]]


def make_plan(state: ModelState, spec: Steering) -> Plan:
    """Validate ``spec`` against the model and compute every tensor."""
    vector = spec.vector
    site = state.check_site(vector.site)
    # the built-in sites carry the residual width; a registered custom site may have its own
    if state.hidden_size is not None and site in SITES and vector.hidden_size != state.hidden_size:
        raise ValueError(
            f"the steering vector has hidden size {vector.hidden_size} but the model's is "
            f"{state.hidden_size}: it was trained for a different model"
        )
    layer_indices = dict(resolve_layers(state, vector.layers))
    selection = Selection(
        "all" if isinstance(spec.positions, Tensor) else spec.positions,
        spec.min_token_index,
        spec.positions if isinstance(spec.positions, Tensor) else None,
        spec.markers,
        spec.rows,
    )
    if spec.condition is not None:
        _check_condition_layers(state, spec, layer_indices, site)
        selection.condition = spec.condition
    multiplier = (
        torch.as_tensor(spec.multiplier, dtype=torch.float32)
        if not isinstance(spec.multiplier, Tensor)
        else spec.multiplier
    )
    trainable = spec.trainable
    op = spec.resolved_operator
    layers: dict[int, tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]] = {}
    for layer, index in layer_indices.items():
        v = vector[layer]
        v_rows, m_rows = for_rows(v.detach().float(), multiplier.detach().float().to(v.device))
        try:
            tensors = op.prepare(v_rows, m_rows)
        except ValueError as error:
            raise ValueError(f"layer {layer}: {error}") from None
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"layer {layer}: multiplier x vector overflows ({name} has inf or nan); use a smaller multiplier"
                )
        layers[index] = (tensors, (v, multiplier) if trainable else None)
    return Plan(op, selection, spec.row_count, layers)


def _check_condition_layers(state: ModelState, spec: Steering, layer_indices: dict[int, int], site: str) -> None:
    """The behaviour must come after the decision: at the condition's layer only on the block output
    (sub-modules run before the block's output is known), and never at an earlier layer."""
    leaves = conditions.validate(spec.condition, len(state.layers), state.hidden_size)
    deepest = max(resolve_layers(state, [leaf.layer])[0][1] for leaf in leaves)
    early = [layer for layer, index in layer_indices.items() if index < deepest]
    if early:
        raise ValueError(
            f"the behaviour steers layers {early}, before the condition is decided at layer {deepest}: "
            "a condition is decided on its layer's output, so steer layers at or after it"
        )
    same = [layer for layer, index in layer_indices.items() if index == deepest]
    if same and site != "block":
        raise ValueError(
            f"the behaviour steers site {site!r} of layer {same[0]}, where the condition is decided on the block's "
            "output, which that site runs before: steer the block there, or sites of later layers"
        )
