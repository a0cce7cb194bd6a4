"""Steerable layers: a decoder layer (or one of its sub-modules) whose class is swapped for a
generated subclass that steers and records its own output.

Swapping the class, rather than nesting the module in a wrapper or adding forward hooks, keeps every
parameter name, keeps ``isinstance`` checks true, survives ``torch.compile`` and adds one attribute
check to an idle forward. Steering tensors are non-persistent buffers, so ``.to()``/``.half()`` and
``device_map`` move them with the layer and ``state_dict()`` never sees them.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

from jaxtyping import Float
from torch import Tensor, nn

from steerable.operators import apply_operator
from steerable.positions import Runtime, TokenSelection

_buffer_ids = count()
_classes: dict[tuple[type, type], type] = {}


@dataclass(eq=False)
class LayerSteering:
    """One steering applied to one module; its tensors live in the module's buffers under these names."""

    operator: str
    selection: TokenSelection
    norm_preserving: bool
    delta: str | None = None
    unit: str | None = None
    target: str | None = None


Tap = Callable[[Float[Tensor, "batch seq d_model"], Runtime], None]


class SteerableLayer(nn.Module):
    """Mixin placed before the original class in the MRO; ``forward`` post-processes its output."""

    _steerable_base: type[nn.Module]
    _steerable_runtime: Runtime
    _steerable_ops: list[LayerSteering]
    _steerable_taps: list[Tap]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = super().forward(*args, **kwargs)
        if not self._steerable_ops and not self._steerable_taps:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        for op in self._steerable_ops:
            hidden = self._steerable_apply(op, hidden)
        for tap in self._steerable_taps:
            tap(hidden, self._steerable_runtime)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _steerable_apply(
        self, op: LayerSteering, hidden: Float[Tensor, "batch seq d_model"]
    ) -> Float[Tensor, "batch seq d_model"]:
        batch, seq_len = hidden.shape[0], hidden.shape[1]
        tensors: list[Tensor | None] = []
        for name in (op.delta, op.unit, op.target):
            tensor = self._buffers[name] if name is not None else None
            if tensor is not None:
                if tensor.ndim == 3 and tensor.shape[0] != batch:
                    raise ValueError(
                        f"the steering has {tensor.shape[0]} per-row values (multiplier or vectors) but "
                        f"the batch has {batch} rows: pass one value per row"
                    )
                if tensor.dtype != hidden.dtype or tensor.device != hidden.device:
                    tensor = tensor.to(hidden)  # e.g. a quantized layer whose params are not floats
            tensors.append(tensor)
        token_mask = self._steerable_runtime.token_mask(op.selection, batch, seq_len, hidden.device)
        delta, unit, target = tensors
        return apply_operator(hidden, op.operator, delta, unit, target, op.norm_preserving, token_mask)

    # -- managing steerings (called by the model) ----------------------------------------------
    def add_steering(self, op: LayerSteering, tensors: dict[str, Tensor]) -> None:
        for field_name, tensor in tensors.items():
            name = f"steering_{next(_buffer_ids)}_{field_name}"
            self.register_buffer(name, tensor, persistent=False)
            setattr(op, field_name, name)
        self._steerable_ops = [*self._steerable_ops, op]

    def remove_steering(self, op: LayerSteering) -> None:
        self._steerable_ops = [o for o in self._steerable_ops if o is not op]
        for name in (op.delta, op.unit, op.target):
            if name is not None:
                self._buffers.pop(name, None)

    @property
    def is_idle(self) -> bool:
        return not self._steerable_ops and not self._steerable_taps


def make_steerable(module: nn.Module, runtime: Runtime) -> SteerableLayer:
    """Swap ``module``'s class for its steerable subclass (same name, module and qualname)."""
    if isinstance(module, SteerableLayer):
        module._steerable_runtime = runtime
        return module
    base = type(module)
    key = (SteerableLayer, base)
    if key not in _classes:
        _classes[key] = type(
            base.__name__,
            (SteerableLayer, base),
            {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "_steerable_base": base,
                "forward": with_signature(SteerableLayer.forward, base.forward),
            },
        )
    _set_class(module, _classes[key])
    assert isinstance(module, SteerableLayer)
    module._steerable_runtime = runtime
    module._steerable_ops = []
    module._steerable_taps = []
    return module


def with_signature(method: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, presenting ``original``'s signature: transformers inspects ``forward``'s parameters
    (``position_ids``, ``logits_to_keep``, ...) to decide what to pass."""

    @functools.wraps(original)
    def delegate(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs)

    return delegate


def restore(module: nn.Module) -> None:
    """Give ``module`` back its original class, dropping every steering buffer and attribute."""
    if not isinstance(module, SteerableLayer):
        return
    for op in list(module._steerable_ops):
        module.remove_steering(op)
    for attribute in ("_steerable_runtime", "_steerable_ops", "_steerable_taps"):
        module.__dict__.pop(attribute, None)
    _set_class(module, module._steerable_base)


def _set_class(module: nn.Module, cls: type[nn.Module]) -> None:
    module.__class__ = cls
    # accelerate's hooks (device_map, offloading) call a bound `_old_forward` captured when they were
    # attached; rebind it so the hook calls the forward of the class the module has now.
    if "_old_forward" in module.__dict__:
        module.__dict__["_old_forward"] = types.MethodType(cls.forward, module)
