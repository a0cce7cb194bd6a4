"""Class swapping: a module keeps its identity, parameters and ``isinstance`` checks, and gains
behaviour, because its class is replaced by a generated subclass that poses as the original.

Swapping the class, rather than nesting the module in a wrapper or adding forward hooks, keeps every
parameter name and ``state_dict`` key, survives ``torch.compile`` and costs one Python call.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from torch import nn

_classes: dict[tuple[type, ...], type] = {}


def posing_subclass(mixins: tuple[type, ...], base: type, **namespace: Any) -> type:
    """``class Base(*mixins, base)`` with ``base``'s name, module and qualname (cached per combination).

    ``forward`` (and ``generate``, when given) present ``base``'s signature: transformers inspects
    them to decide what to pass (``position_ids``, ``logits_to_keep``, ...)."""
    key = (*mixins, base)
    if key not in _classes:
        body: dict[str, Any] = {
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "_steerable_base": base,
        }
        for name in ("forward", "generate"):
            method = next((vars(m)[name] for m in mixins if name in vars(m)), None)
            if method is not None and hasattr(base, name):
                body[name] = with_signature(method, getattr(base, name))
        body.update(namespace)
        _classes[key] = type(base.__name__, (*mixins, base), body)
    return _classes[key]


def with_signature(method: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``method`` presenting ``original``'s signature. A copy rather than a wrapper, so the
    per-call cost stays one function call."""
    function = getattr(method, "__func__", method)
    clone = types.FunctionType(
        function.__code__, function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )
    clone.__kwdefaults__ = function.__kwdefaults__
    clone.__doc__ = getattr(original, "__doc__", None)
    clone.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    return clone


def set_class(module: nn.Module, cls: type[nn.Module]) -> None:
    previous = type(module)
    module.__class__ = cls
    # transformers 4.x restores the forwards it patched for output capture as bound methods on the
    # instance, which would hide the class's forward from now on: point them at the new class's.
    bound = module.__dict__.get("forward")
    if isinstance(bound, types.MethodType) and bound.__self__ is module and bound.__func__ is previous.forward:
        module.__dict__["forward"] = types.MethodType(cls.forward, module)
    # accelerate's hooks (device_map, offloading) call a bound `_old_forward` captured when they were
    # attached; rebind it so the hook calls the forward of the class the module has now.
    if "_old_forward" in module.__dict__:
        module.__dict__["_old_forward"] = types.MethodType(cls.forward, module)


def original_class(module: nn.Module) -> type[nn.Module]:
    return base_class(type(module))


def base_class(cls: type) -> type:
    """The class a generated subclass poses as (``cls`` itself when it is not one)."""
    return getattr(cls, "_steerable_base", cls)


def plain_reduction(module: nn.Module) -> tuple[Any, ...]:
    """How to pickle a swapped module: as its original class, without steerable's attributes and
    steering buffers. The generated classes pose as the originals by name, so pickle could not find
    them; ``torch.save(model)`` therefore saves the plain model (re-wrap it after loading)."""
    base = original_class(module)
    state = {k: v for k, v in module.__dict__.items() if not k.startswith("_steerable")}
    steering = {name for name in module._buffers if name.startswith("steering_")}
    state["_buffers"] = {k: v for k, v in module._buffers.items() if k not in steering}
    state["_non_persistent_buffers_set"] = module._non_persistent_buffers_set - steering
    for name in ("forward", "_old_forward"):  # methods bound on the instance point to the original class
        bound = state.get(name)
        if isinstance(bound, types.MethodType) and bound.__self__ is module:
            state[name] = types.MethodType(base.forward, module)
    return (new_plain, (base,), state)


def new_plain(cls: type[nn.Module]) -> nn.Module:
    """Unpickling: an empty instance of the original class (its state is set next)."""
    return cls.__new__(cls)
