"""Per-request steering: one batch, a different steering for each row (serving).

``model.steer_rows([Steering(v1, 4.0), None, Steering(v2, -2.0, operator="ablate"), ...])``: row ``i``
of every batch gets request ``i``'s steering (its own vector, layers, multiplier, operator, positions,
condition) or none, and equals that row run alone. Inside ``generate`` each row is a prompt, repeated
with its copies (``num_return_sequences``, beams).

Requests that add a fixed vector to every token (the common case) are fused into one per-row steering
per site (one add per layer, whatever the number of requests); the others each get a steering
restricted to their row. At a layer, the fused adds apply first, then the other requests' steerings in
row order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from steerable import _runtime
from steerable.handle import RowsHandle, SteeringHandle
from steerable.spec import Steering
from steerable.vectors import SteeringVector

#: The 0.1 name of a per-row steering: a ``Steering``.
RowSteering = Steering


def steer_rows(model: Any, requests: Sequence[Steering | SteeringVector | None]) -> RowsHandle:
    """Apply one steering per batch row (``None``: that row is not steered); see the module."""
    if len(requests) == 0:
        raise ValueError("requests is empty: give one entry (a Steering, a SteeringVector or None) per batch row")
    specs: list[Steering | None] = []
    for number, request in enumerate(requests):
        spec = Steering(request) if isinstance(request, SteeringVector) else request
        if spec is not None and not isinstance(spec, Steering):
            raise TypeError(f"request {number} must be a Steering, a SteeringVector or None, got {request!r}")
        if spec is not None and (spec.rows is not None or spec.row_count is not None):
            raise ValueError(f"request {number} is already per-row: give each request one vector and one multiplier")
        specs.append(spec)
    n = len(specs)
    handles: list[SteeringHandle] = []
    try:
        fused = [(i, s) for i, s in enumerate(specs) if s is not None and _fusable(s)]
        for site in dict.fromkeys(s.vector.site for _, s in fused):
            group = [(i, s) for i, s in fused if s.vector.site == site]
            handles.append(SteeringHandle(model, Steering(_fused(model, group, n, site))))
        for i, spec in enumerate(specs):
            if spec is None or _fusable(spec):
                continue
            only = torch.zeros(n, dtype=torch.bool)
            only[i] = True
            handles.append(SteeringHandle(model, spec.replace(rows=only)))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return RowsHandle(handles, specs)


def _fusable(spec: Steering) -> bool:
    """A fixed vector added to every token: one row of a fused per-row add."""
    return spec.operator == "add" and not spec.norm_preserving and spec.everywhere and not spec.trainable


def _fused(model: Any, group: list[tuple[int, Steering]], n: int, site: str) -> SteeringVector:
    """The requests that add one vector everywhere, as one per-row vector (zero for other rows)."""
    sizes = {s.vector.hidden_size for _, s in group}
    if len(sizes) != 1:
        raise ValueError(f"the requests' vectors have different hidden sizes {sorted(sizes)}")
    (d,) = sizes
    per_layer: dict[int, Tensor] = {}
    for i, spec in group:
        # the same validation as steer: layers in range, each named once
        for layer, index in _runtime.layer_indices(model, spec.vector.layers):
            per_layer.setdefault(index, torch.zeros(n, d))[i] = spec.vector[layer].detach().float().cpu() * float(
                spec.multiplier  # type: ignore[arg-type]
            )
    return SteeringVector(dict(sorted(per_layer.items())), site=site)
