"""Where a module's tensors live, found one way everywhere.

A model split by accelerate (``device_map``, offloading) keeps some weights on the ``meta`` device
until they are used, so "the device of the first parameter" can be ``meta`` or a device the inputs
must not go to. The rule here: the first floating-point parameter or buffer that is not on ``meta``;
for a whole model, where its input embeddings live (where token ids must go).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def reference_tensor(module: nn.Module) -> Tensor:
    """A floating-point parameter or buffer of ``module`` off the meta device (an empty CPU fp32 tensor
    when it has none): its device and dtype are the module's."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta":
            return tensor
    return torch.empty(0)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s tensors (CPU when all are offloaded to meta)."""
    return reference_tensor(module).device


def input_device(model: Any) -> torch.device:
    """Where a model's inputs (token ids, masks) go: its input embeddings' device."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Module):
        return module_device(embeddings)
    return module_device(model)
