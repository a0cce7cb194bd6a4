"""steering-vectors' ``SteeringVector``: ``layer_activations`` and ``layer_type``, ``apply`` /
``patch_activations`` on a plain Hugging Face model. It *is* a steerable vector, so ``model.steer(vec)``
takes it too; applying it makes the model steerable in place (``SteerableModel.wrap``), which changes
nothing while no steering is applied.

Where steerable differs from the seed (on purpose): ``min_token_index`` and ``token_indices`` count
absolute positions from each row's first real token, in every forward of a generation (the seed counts
columns of each forward, so with a KV cache it steers every decode step, or none, whatever the index,
and a left-padded row is shifted by its padding).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from steerable.compat.steering_vectors.layer_matching import LAYER_TYPE_SITES, ModelLayerConfig, site_for
from steerable.compat.steering_vectors.steering_operators import PatchDeltaOperator
from steerable.handle import SteeringHandle
from steerable.model import SteerableModel
from steerable.vectors import SteeringVector as NativeSteeringVector


@dataclass
class SteeringPatchHandle:
    """Removes a steering applied with ``SteeringVector.patch_activations``."""

    handles: list[SteeringHandle] = field(default_factory=list)

    @property
    def model_hooks(self) -> list[SteeringHandle]:  # the seed's name; there are no hooks here
        return self.handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def steerable_model(model: Any) -> Any:
    """The steerable model for ``model``: itself, wrapped in place if it was a plain one."""
    try:
        return SteerableModel.of(model)
    except TypeError:
        return SteerableModel.wrap(model)


class SteeringVector(NativeSteeringVector):
    """``SteeringVector(layer_activations, layer_type="decoder_block")``, as in steering-vectors."""

    def __init__(
        self,
        layer_activations: Mapping[int, Tensor],
        layer_type: str = "decoder_block",
        *,
        num_layers: int | None = None,
        **metadata: Any,
    ) -> None:
        site = LAYER_TYPE_SITES.get(layer_type, layer_type)
        super().__init__(layer_activations, site, num_layers=num_layers, **metadata)

    def _with(self, vectors: Mapping[int, Tensor]) -> SteeringVector:
        metadata = self.metadata()
        metadata.pop("site")
        return SteeringVector(vectors, self.layer_type, **metadata)

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        return self._with({layer: v.to(*args, **kwargs) for layer, v in self.items()})

    def patch_activations(
        self,
        model: nn.Module,
        layer_config: ModelLayerConfig | None = None,
        operator: PatchDeltaOperator | None = None,
        multiplier: float = 1.0,
        min_token_index: int | None = None,
        token_indices: list[int] | slice | Tensor | None = None,
    ) -> SteeringPatchHandle:
        """Steer ``model`` until ``handle.remove()`` (``model.steer(vec, ...)`` in steerable)."""
        if min_token_index and token_indices is not None:
            raise ValueError("give min_token_index or token_indices, not both")
        steerable = steerable_model(model)
        site = site_for(steerable, self.layer_type, layer_config)
        vector = self if site == self.site else NativeSteeringVector(dict(self.items()), site)
        handle = steerable.steer(
            vector,
            multiplier,
            operator=getattr(operator, "steerable_operator", operator) if operator is not None else "add",
            min_token_index=None if token_indices is not None else (min_token_index or None),
            token_indices=token_indices,
        )
        return SteeringPatchHandle([handle])

    @contextmanager
    def apply(
        self,
        model: nn.Module,
        layer_config: ModelLayerConfig | None = None,
        operator: PatchDeltaOperator | None = None,
        multiplier: float = 1.0,
        min_token_index: int = 0,
        token_indices: list[int] | slice | Tensor | None = None,
    ) -> Iterator[None]:
        """Steer ``model`` inside the ``with`` block (``with model.steer(vec, ...):`` in steerable)."""
        handle = self.patch_activations(
            model,
            layer_config,
            operator,
            multiplier,
            None if token_indices is not None else min_token_index,
            token_indices,
        )
        try:
            yield
        finally:
            handle.remove()
