"""Per-request steering: one batch, a different steering for each row (serving).

``model.steer_rows([RowSteering(v1, 4.0), None, RowSteering(v2, -2.0, operator="ablate"), ...])``:
row ``i`` of every batch gets request ``i``'s steering (its own vector, layers, multiplier, operator,
positions, condition) or none, and equals that row run alone. Inside ``generate`` each row is
repeated with its prompt (``num_return_sequences``, beams).

Requests that add a vector to every token (the common case) are fused into one per-row steering per
layer (one masked add, whatever the number of requests); the others each get a steering restricted to
their row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steerable._runtime.steering import Multiplier, SteeringHandle
from steerable.vectors import SteeringVector


@dataclass(frozen=True)
class RowSteering:
    """One request's steering; the arguments mean what they mean in ``model.steer``."""

    vector: SteeringVector
    multiplier: Multiplier = 1.0
    operator: Any = "add"
    positions: Any = "all"
    min_token_index: int | None = None
    norm_preserving: bool = False
    condition: Any = None

    @property
    def fusable(self) -> bool:
        plain = self.operator == "add" and not self.norm_preserving and self.condition is None
        everywhere = isinstance(self.positions, str) and self.positions == "all" and self.min_token_index is None
        return plain and everywhere and isinstance(self.multiplier, (int, float)) and self.vector.rows is None


class RowsHandle:
    """The steerings of one ``steer_rows`` call; ``remove()`` (or leaving the ``with`` block) removes all."""

    def __init__(self, handles: list[SteeringHandle]) -> None:
        self.handles = handles

    @property
    def active(self) -> bool:
        return any(h.active for h in self.handles)

    def remove(self) -> None:
        for handle in reversed(self.handles):
            handle.remove()

    def __enter__(self) -> RowsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def steer_rows(model: Any, requests: Sequence[RowSteering | SteeringVector | None]) -> RowsHandle:
    """Apply one steering per batch row (``None``: that row is not steered); see the module."""
    if len(requests) == 0:
        raise ValueError("requests is empty: give one entry (a RowSteering, a SteeringVector or None) per batch row")
    normalized: list[RowSteering | None] = []
    for number, request in enumerate(requests):
        entry = RowSteering(request) if isinstance(request, SteeringVector) else request
        if entry is not None and not isinstance(entry, RowSteering):
            raise TypeError(f"request {number} must be a RowSteering, a SteeringVector or None, got {request!r}")
        normalized.append(entry)
    n = len(normalized)
    handles: list[SteeringHandle] = []
    try:
        fused = [(i, r) for i, r in enumerate(normalized) if r is not None and r.fusable]
        by_site: dict[str, list[tuple[int, RowSteering]]] = {}
        for i, r in fused:
            by_site.setdefault(r.vector.site, []).append((i, r))
        num_layers = len(model._steerable.layers)
        for site, group in by_site.items():  # zero rows add exactly nothing: no row mask needed
            handles.append(model.steer(_fused(group, n, site, num_layers), 1.0))
        for i, request in enumerate(normalized):
            if request is None or request.fusable:
                continue
            r = request
            only = torch.zeros(n, dtype=torch.bool)
            only[i] = True
            handles.append(
                model.steer(
                    r.vector,
                    r.multiplier,
                    operator=r.operator,
                    positions=r.positions,
                    min_token_index=r.min_token_index,
                    norm_preserving=r.norm_preserving,
                    condition=r.condition,
                    rows=only,
                )
            )
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return RowsHandle(handles)


def _fused(group: list[tuple[int, RowSteering]], n: int, site: str, num_layers: int) -> SteeringVector:
    """The requests that add one vector everywhere, as one per-row vector (zero for other rows)."""
    sizes = {r.vector.hidden_size for _, r in group}
    if len(sizes) != 1:
        raise ValueError(f"the requests' vectors have different hidden sizes {sorted(sizes)}")
    (d,) = sizes
    for _, r in group:
        outside = [layer for layer in r.vector.layers if not -num_layers <= layer < num_layers]
        if outside:
            raise IndexError(f"layers {outside} are out of range: the model has {num_layers} decoder layers")
    layers = sorted({layer % num_layers for _, r in group for layer in r.vector.layers})
    per_layer: dict[int, Tensor] = {layer: torch.zeros(n, d) for layer in layers}
    for i, r in group:
        for layer, v in r.vector.items():
            per_layer[layer % num_layers][i] = v.detach().float().cpu() * float(r.multiplier)
    return SteeringVector(per_layer, site=site)
