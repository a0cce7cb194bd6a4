"""The decoder stack: the module that runs the decoder layers (``LlamaModel``, ``GPT2Model``, ...).

Every forward passes through it, whether it comes from the top-level model, from ``generate``, or from
a trainer that calls the inner model directly. It is where a forward's step context (positions and
token masks) is made, once, and handed to the layers with the call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from steerable._runtime.class_swap import plain_reduction
from steerable._runtime.state import ModelState  # at run time: transformers evaluates the annotations
from steerable._runtime.step import CURRENT_STEP, IDLE, LENGTHS_KWARG, STEP_KWARG, StepContext


class SteerableStack(nn.Module):
    """Mixin placed before the decoder stack's class in the MRO."""

    _steerable_state: ModelState

    def __reduce_ex__(self, protocol: Any) -> Any:
        return plain_reduction(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        state = self._steerable_state
        passed = kwargs.pop(LENGTHS_KWARG, None)
        lengths = None if passed is None else passed[0]  # see steerable._runtime.generation
        if not state.swapped:  # idle: the layers are the model's own
            if torch.compiler.is_compiling():  # a compiled graph runs as traced: no layer can change under it
                return super().forward(*args, **kwargs)
            token = CURRENT_STEP.set(IDLE)  # layers another thread swaps in meanwhile stay idle for this forward
            try:
                return super().forward(*args, **kwargs)
            finally:
                CURRENT_STEP.reset(token)
        inputs = dict(zip(state.stack_arg_names, args, strict=False)) | kwargs
        first = next((t for t in (inputs.get("input_ids"), inputs.get("inputs_embeds")) if isinstance(t, Tensor)), None)
        if first is None:
            return super().forward(*args, **kwargs)
        step = state.step(first.shape[0], first.shape[1], first.device, inputs, lengths)
        tracked = not torch.compiler.is_compiling()
        if tracked:  # layers are not swapped back while a forward runs through them (see state.leave)
            state.enter()
        try:
            output = self._steerable_run(args, kwargs, step)
        finally:
            if tracked:
                state.leave()
        if step.memory is None and step.gates:  # a cache made inside this forward keeps the decisions too
            cache = getattr(output, "past_key_values", None)
            if cache is not None and not isinstance(cache, (tuple, list)):
                cache.__dict__["_steerable_conditions"] = dict(step.gates)
        return output

    def _steerable_run(self, args: tuple[Any, ...], kwargs: dict[str, Any], step: StepContext) -> Any:
        if self._steerable_state.kwargs_reach_layers:  # with the call: replayed by checkpointing, compiles
            return super().forward(*args, **kwargs, **{STEP_KWARG: step})
        token = CURRENT_STEP.set(step)
        try:
            return super().forward(*args, **kwargs)
        finally:
            CURRENT_STEP.reset(token)


def stack_of(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    """The module whose direct child is the decoder layer list."""
    for module in model.modules():
        if any(child is layers for child in module.children()):
            return module
    raise ValueError("could not find the module that holds the decoder layers")
