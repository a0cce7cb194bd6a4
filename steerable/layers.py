"""Steerable layers: a decoder layer (or one of its sub-modules) whose class is swapped for a
generated subclass that steers and records its own output.

Swapping the class, rather than nesting the module in a wrapper or adding forward hooks, keeps every
parameter name, keeps ``isinstance`` checks true, survives ``torch.compile`` and adds one attribute
check to an idle forward. Steering tensors are non-persistent buffers, so ``.to()``/``.half()`` and
``device_map`` move them with the layer and ``state_dict()`` never sees them.
"""

from __future__ import annotations

import inspect
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

    fast_add: bool = False  # set in __post_init__: checked on every forward

    def __post_init__(self) -> None:
        self.fast_add = self.operator == "add" and not self.norm_preserving and self.selection.everything


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
        if op.fast_add:  # the common case: add one vector to every token
            return hidden + self._steerable_tensor(op.delta, hidden)
        delta, unit, target = (
            self._steerable_tensor(name, hidden) if name is not None else None
            for name in (op.delta, op.unit, op.target)
        )
        token_mask = self._steerable_runtime.token_mask(op.selection, batch, seq_len, hidden.device)
        return apply_operator(hidden, op.operator, delta, unit, target, op.norm_preserving, token_mask)

    def _steerable_tensor(self, name: str | None, hidden: Tensor) -> Tensor:
        tensor = self._buffers[name]  # type: ignore[index]
        assert tensor is not None
        if tensor.ndim == 3 and tensor.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"the steering has {tensor.shape[0]} per-row values (multiplier or vectors) but "
                f"the batch has {hidden.shape[0]} rows: pass one value per row"
            )
        if tensor.dtype != hidden.dtype or tensor.device != hidden.device:
            tensor = tensor.to(hidden)  # e.g. a quantized layer whose params are not floats
        return tensor

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
    """A copy of ``method`` presenting ``original``'s signature: transformers inspects ``forward``'s
    parameters (``position_ids``, ``logits_to_keep``, ...) to decide what to pass. A copy rather than
    a wrapper, so the per-call cost stays one function call."""
    function = getattr(method, "__func__", method)
    clone = types.FunctionType(
        function.__code__, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )
    clone.__kwdefaults__ = function.__kwdefaults__
    clone.__doc__ = getattr(original, "__doc__", None)
    clone.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    return clone


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
