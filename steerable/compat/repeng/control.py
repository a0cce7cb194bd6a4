"""repeng's ``ControlModel``: ``set_control(vector, coeff)`` and ``reset()`` on a steerable model.

repeng's ``operator`` returns the new hidden state (``lambda current, control: current + control``);
steerable's callables return a delta. This class converts: give it repeng's form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from steerable.compat.steering_vectors.steering_vector import steerable_model
from steerable.handle import SteeringHandle
from steerable.model import SteerableModel
from steerable.vectors import SteeringVector


class ControlModel(nn.Module):
    """repeng's wrapper: control on ``layer_ids`` (negative ones count from the end)."""

    def __init__(self, model: Any, layer_ids: Iterable[int]) -> None:
        super().__init__()
        self.model = steerable_model(model)
        n = len(self.model.steerable_layers)
        self.layer_ids = [i if i >= 0 else n + i for i in layer_ids]
        bad = [i for i in self.layer_ids if not 0 <= i < n]
        if bad:
            raise IndexError(f"layer ids {bad} are out of range: the model has {n} decoder layers")
        self._handle: SteeringHandle | None = None

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def unwrap(self) -> Any:
        """Remove the control and give the model back as it was (its original classes)."""
        self.reset()
        return SteerableModel.unwrap(self.model)

    def set_control(self, control: Any, coeff: float = 1.0, **kwargs: Any) -> None:
        """Steer ``layer_ids`` with ``coeff * control.directions[layer]``; ``normalize=True`` keeps each
        token's norm, ``operator=(current, control) -> new`` combines (default ``current + control``)."""
        raw = {layer: torch.as_tensor(coeff * control.directions[layer]) for layer in self.layer_ids}
        self.set_raw_control(raw, **kwargs)

    def reset(self) -> None:
        self.set_raw_control(None)

    def set_raw_control(
        self,
        control: dict[int, Tensor] | None,
        normalize: bool = False,
        operator: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if control is None:
            return
        vector = SteeringVector({layer: control[layer].float() for layer in self.layer_ids})
        self._handle = self.model.steer(
            vector, 1.0, operator=_as_delta(operator) if operator is not None else "add", norm_preserving=normalize
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.forward(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


_DELTAS: dict[int, tuple[Any, Callable[[Tensor, Tensor], Tensor]]] = {}


def _as_delta(operator: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """repeng's ``(current, control) -> new`` as steerable's ``(hidden, vector) -> delta`` (one function
    per operator, so re-applying it reuses the layers' slots; the operator is kept, so its id stays its)."""
    if id(operator) not in _DELTAS:

        def delta(hidden: Tensor, vector: Tensor) -> Tensor:
            return operator(hidden, vector) - hidden

        delta.__name__ = getattr(operator, "__name__", "repeng_operator")
        _DELTAS[id(operator)] = (operator, delta)
    return _DELTAS[id(operator)][1]
