"""Making a model steerable and giving it back: the model's class, its decoder stack's class and its
state, set and removed together.

``wrap`` swaps the model's class for a generated subclass of it that also derives from the given mixins
(``SteerableModel``; same class name, so ``isinstance``, ``save_pretrained``'s ``architectures`` and
pipelines see the original), and the decoder stack (the module that runs the layers) for one that
computes each forward's step context. Decoder layers are swapped while something steers or records.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from torch import nn

from steerable._runtime.class_swap import original_class, plain_reduction, posing_subclass, set_class
from steerable._runtime.layer import forget
from steerable._runtime.stack import SteerableStack, stack_of
from steerable._runtime.state import ModelState
from steerable.architectures import ArchitectureSpec, get_submodule, resolve_architecture


def wrap(model: nn.Module, mixins: tuple[type, ...]) -> Any:
    spec, layers = resolve_architecture(model)
    # keep only the sites this particular model has (Falcon's parallel variant has no post-attn norm)
    present = {site: path for site, path in spec.sites.items() if get_submodule(layers[0], path) is not None}
    spec = ArchitectureSpec(spec.layers, present, spec.layer_kwargs)
    stack = stack_of(model, layers)
    stack_forward = inspect.signature(type(stack).forward)
    reach = spec.layer_kwargs and any(p.kind is p.VAR_KEYWORD for p in stack_forward.parameters.values())
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    state = ModelState(
        spec,
        layers,
        stack,
        getattr(text_config, "hidden_size", None),
        reach,
        tuple(list(stack_forward.parameters)[1:]),
        forward_kwargs=_takes_kwargs(model),
        inject=not reach,
    )
    set_class(stack, posing_subclass((SteerableStack,), type(stack)))
    stack._steerable_state = state  # type: ignore[assignment]
    model.__class__ = posing_subclass(mixins, type(model))
    model._steerable = state  # type: ignore[assignment]
    return model


def unwrap(model: Any) -> Any:
    state: ModelState = model._steerable
    from steerable._runtime.install import uninstall

    for inst in list(state.installed):
        uninstall(state, inst)
    state.unwrapped = True
    for layer in state.layers:
        for module in layer.modules():
            forget(module)
    for name in [n for n in state.stack._buffers if n.startswith("steering_")]:
        state.stack._buffers.pop(name, None)
    state.stack.__dict__.pop("_steerable_state", None)
    set_class(state.stack, original_class(state.stack))
    del model.__dict__["_steerable"]
    model.__class__ = original_class(model)
    return model


def hand_over(wrapper: Any, base: nn.Module, mixins: tuple[type, ...]) -> Any:
    """Move the steerable state from a PEFT wrapper to the base model it returned (same layers)."""
    state = wrapper.__dict__.pop("_steerable")
    wrapper.__class__ = original_class(wrapper)
    base.__class__ = posing_subclass(mixins, type(base))
    state.forward_kwargs = _takes_kwargs(base)
    base._steerable = state  # type: ignore[assignment]
    return base


def plain_copy(model: Any, memo: dict[int, Any]) -> Any:
    """A deep copy of ``model`` as its plain classes, without steerable's state or buffers (wrap it to
    make the copy steerable: it starts idle; active steerings stay with the original)."""
    rebuild, args, state = plain_reduction(model)
    copied = rebuild(*args)
    memo[id(model)] = copied
    copied.__dict__.update(copy.deepcopy(state, memo))
    return copied


def _takes_kwargs(model: nn.Module) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(type(model).forward).parameters.values())
