"""repeng's ``DatasetEntry`` and ``ControlVector``, trained on steerable's reader.

The same vectors as repeng 0.4/0.5: the last token's block output of every text, one unit direction per
layer (``pca_diff``: the first principal component of the *centred* pair differences, as scikit-learn's
PCA centres; ``pca_center``: of the activations centred on each pair's midpoint), signed by repeng's rule
(positive when most pairs project higher on it than their negatives). As repeng, the last layer is read
after the model's final norm (``output_hidden_states[-1]`` is normed), though it steers the block's output.
Where it differs from repeng (on purpose): left-padded batches read what each text alone reads (repeng
passes no position ids).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerable.compat.steering_vectors.steering_vector import steerable_model
from steerable.train import aggregators, extraction
from steerable.vectors import SteeringVector


@dataclasses.dataclass
class DatasetEntry:
    positive: str
    negative: str


def _first_component(data: Float[Tensor, "m d"]) -> Float[Tensor, " d"]:
    """scikit-learn's ``PCA(n_components=1)`` direction: the data centred on its mean, first right singular vector."""
    centred = data.double() - data.double().mean(0)
    return torch.linalg.svd(centred, full_matrices=False)[2][0]


def direction(positive: Tensor, negative: Tensor, method: str) -> Float[Tensor, " d"]:
    """One layer's repeng direction (unit norm, repeng's sign) from per-pair reads ``[n, d]``."""
    if method == "pca_diff":
        unit = _first_component(positive - negative)
    elif method == "pca_center":
        unit = aggregators.pca_center(positive.double(), negative.double())
        unit = unit / unit.norm()
    else:
        raise ValueError(f"unknown method {method!r}: repeng's methods here are 'pca_diff' and 'pca_center'")
    unit = unit * torch.sign(unit[unit.abs().argmax()])  # scikit-learn's svd_flip: the largest entry positive,
    # the sign repeng keeps when its rule ties (as many pairs project higher as lower)
    higher = ((positive.double() - negative.double()) @ unit > 0).double().mean()
    lower = ((positive.double() - negative.double()) @ unit < 0).double().mean()
    return (-unit if lower > higher else unit).float()


def _model_of(model: Any) -> Any:
    from steerable.compat.repeng.control import ControlModel

    return model.model if isinstance(model, ControlModel) else model


@dataclasses.dataclass
class ControlVector:
    model_type: str
    directions: dict[int, np.ndarray]

    @classmethod
    def train(cls, model: Any, tokenizer: Any, dataset: list[Any], **kwargs: Any) -> ControlVector:
        """repeng's ``ControlVector.train``: ``hidden_layers`` (default ``range(-1, -n, -1)``), ``batch_size``
        (or ``max_batch_size``), ``method`` (``"pca_diff"``, default, or ``"pca_center"``)."""
        steerable = steerable_model(_model_of(model))
        return cls(steerable.config.model_type, read_representations(steerable, tokenizer, dataset, **kwargs))

    def to_steerable(self) -> SteeringVector:
        """This vector as a ``steerable.SteeringVector`` (``directions[i]`` steer block ``i``'s output)."""
        return SteeringVector.from_repeng(self)

    def export_gguf(self, path: os.PathLike[str] | str) -> None:
        """Write a llama.cpp control vector (``steerable.io.gguf.to_gguf``; it refuses ``direction.0``,
        which llama.cpp rejects)."""
        self.to_steerable().to_gguf(os.fspath(path), model_hint=self.model_type)

    @classmethod
    def import_gguf(cls, path: os.PathLike[str] | str) -> ControlVector:
        vector = SteeringVector.from_gguf(os.fspath(path))
        return cls(vector.model_type or "", {layer: v.numpy() for layer, v in vector.items()})

    def _helper_combine(self, other: ControlVector, other_coeff: float) -> ControlVector:
        if self.model_type != other.model_type:
            warnings.warn(
                "Trying to add vectors with mismatched model_types together, this may produce unexpected results.",
                stacklevel=3,
            )
        directions = dict(self.directions)
        for layer, value in other.directions.items():
            scaled = other_coeff * value
            directions[layer] = directions[layer] + scaled if layer in directions else scaled
        return ControlVector(self.model_type, directions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlVector):
            return NotImplemented
        return (
            self.model_type == other.model_type
            and self.directions.keys() == other.directions.keys()
            and all(np.array_equal(self.directions[k], other.directions[k]) for k in self.directions)
        )

    def __add__(self, other: ControlVector) -> ControlVector:
        if not isinstance(other, ControlVector):
            raise TypeError(f"Unsupported operand type(s) for +: 'ControlVector' and '{type(other).__name__}'")
        return self._helper_combine(other, 1)

    def __sub__(self, other: ControlVector) -> ControlVector:
        if not isinstance(other, ControlVector):
            raise TypeError(f"Unsupported operand type(s) for -: 'ControlVector' and '{type(other).__name__}'")
        return self._helper_combine(other, -1)

    def __neg__(self) -> ControlVector:
        return ControlVector(self.model_type, {k: -v for k, v in self.directions.items()})

    def __mul__(self, other: float) -> ControlVector:
        return ControlVector(self.model_type, {k: other * v for k, v in self.directions.items()})

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> ControlVector:
        return self.__mul__(1 / other)


def read_representations(
    model: Any,
    tokenizer: Any,
    inputs: list[Any],
    hidden_layers: Iterable[int] | None = None,
    batch_size: int = 32,
    method: str = "pca_diff",
    max_batch_size: int | None = None,
) -> dict[int, np.ndarray]:
    """repeng's ``read_representations``: ``{layer: unit direction}`` for absolute layers."""
    steerable = steerable_model(_model_of(model))
    n = len(steerable.steerable_layers)
    layers = list(hidden_layers) if hidden_layers else list(range(-1, -n, -1))
    layers = [layer % n if layer < 0 else layer for layer in layers]
    positive, negative = extraction.extract_activations(
        steerable,
        tokenizer,
        [(entry.positive, entry.negative) for entry in inputs],
        layers=layers,
        batch_size=max_batch_size or batch_size,
        show_progress=False,
    )
    if n - 1 in layers:  # repeng reads hidden_states[n], which transformers gives after the final norm
        norm = final_norm(steerable)
        with torch.no_grad():
            positive[n - 1], negative[n - 1] = norm(positive[n - 1]), norm(negative[n - 1])
    return {layer: direction(positive[layer], negative[layer], method).numpy() for layer in layers}


def final_norm(model: Any) -> Any:
    """The model's final norm (applied per token, so it can be applied to reads afterwards)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    for name in ("norm", "ln_f", "final_layer_norm", "final_layernorm"):
        for owner in (base, getattr(model, "transformer", None), getattr(model, "gpt_neox", None)):
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, torch.nn.Module):
                return lambda reads, module=module: module(reads.to(next(module.parameters()).device)).float().cpu()
    raise ValueError(f"no final norm found on {type(model).__name__}: repeng's last-layer read needs it")
