"""Independent references for the tests: steering done with forward hooks on a vanilla model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from steerable.architectures import ARCHITECTURES, get_submodule


def vanilla_layers(model: Any) -> nn.ModuleList:
    layers = get_submodule(model, ARCHITECTURES[model.config.model_type].layers)
    assert isinstance(layers, nn.ModuleList)
    return layers


@contextmanager
def hooked(model: Any, edits: dict[int, Callable[[Tensor], Tensor]], site: str = "block") -> Iterator[None]:
    """Edit the output of decoder layer (or its ``site`` sub-module) i with edits[i], via forward hooks."""
    handles = []
    for index, edit in edits.items():
        module = vanilla_layers(model)[index]
        if site != "block":
            found = get_submodule(module, ARCHITECTURES[model.config.model_type].sites[site])
            assert found is not None
            module = found

        def hook(_m: nn.Module, _i: Any, output: Any, edit: Callable[[Tensor], Tensor] = edit) -> Any:
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def right_pad(rows: list[list[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def position_ids(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
