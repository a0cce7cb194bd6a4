"""The forward-hook baseline: the same steering as ``model.steer(vector, multiplier)``, done by
``steerable.testing.hooks.hooked`` (the reference the tests check steering against) on a plain model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch
from torch import Tensor

from steerable.testing.hooks import hooked
from steerable.vectors import SteeringVector


def hooks(model: Any, vector: SteeringVector, multiplier: float) -> AbstractContextManager[None]:
    """Add ``multiplier * vector[i]`` to the output of decoder layer i, with forward hooks."""
    parameter = next(model.parameters())
    # torch.add with the delta bound: the hook's edit is one C call, as cheap as a hand-written ``out + delta``
    edits: dict[int, Callable[[Tensor], Tensor]] = {
        index: partial(torch.add, other=(multiplier * direction).to(parameter)) for index, direction in vector.items()
    }
    return hooked(model, edits)


def live_hooks(model: Any, vector: SteeringVector, multiplier: Callable[[], float]) -> AbstractContextManager[None]:
    """Hooks that read the multiplier on every call (``multiplier()``): changing it needs no new hook."""

    def edit(direction: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda output: output + multiplier() * direction

    return hooked(model, {index: edit(direction) for index, direction in vector.items()})
