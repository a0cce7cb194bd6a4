"""Steerable layers: a decoder layer (or one of its sub-modules) that steers and records its own output.

What it steers with comes from the active set its forward carries (``step.active``, see
``steerable._runtime.active``): the steerings at this module, in the order they were applied, and the
conditions decided here. Taps (recordings, training reads) are the module's own and see the steered
output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerable._runtime.active import Op, ProbeOp
from steerable._runtime.class_swap import plain_reduction, posing_subclass, set_class
from steerable._runtime.step import CURRENT_STEP, STEP_KWARG, StepContext, rows_for_batch
from steerable.operators import for_rows

Tap = Callable[[Float[Tensor, "batch seq d_model"], StepContext | None], None]
FAST_ADD, MASKED_ADD, GENERAL = 0, 1, 2


class SteerableLayer(nn.Module):
    """Mixin placed before the original class in the MRO; ``forward`` post-processes its output."""

    _steerable_base: type[nn.Module]
    _steerable_inner: Callable[..., Any]  # the original forward (see make_steerable)
    _steerable_key: int  # this module's key in the active set
    _steerable_taps: tuple[Tap, ...]
    _steerable_sites_need_step: bool  # a sub-module of this decoder layer steers or records
    _steerable_fallback: Callable[[Tensor], StepContext]

    def __reduce_ex__(self, protocol: Any) -> Any:
        return plain_reduction(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        step: StepContext | None = kwargs.pop(STEP_KWARG, None) or CURRENT_STEP.get()
        if step is not None and self._steerable_sites_need_step:  # sub-modules get no keyword arguments
            token = CURRENT_STEP.set(step)
            try:
                output = self._steerable_inner(self, *args, **kwargs)
            finally:
                CURRENT_STEP.reset(token)
        else:
            output = self._steerable_inner(self, *args, **kwargs)
        if step is None:  # run outside its decoder stack (a layer called on its own)
            step = self._steerable_fallback(output[0] if isinstance(output, tuple) else output)
        active = step.active
        ops = active.ops.get(self._steerable_key, ()) if active is not None else ()
        probes = active.probes.get(self._steerable_key, ()) if active is not None else ()
        if not ops and not probes and not self._steerable_taps:
            return output
        return steer_output(self, output, step, ops, probes)


def steer_output(
    module: SteerableLayer, output: Any, step: StepContext, ops: tuple[Op, ...], probes: tuple[ProbeOp, ...]
) -> Any:
    """Decide the conditions read at ``module`` (on the unsteered output), steer the output, then show
    it to the module's taps. A function, not a method: a checkpointed layer recomputed in backward runs
    this forward even if the module has been given back its own class meanwhile."""
    hidden = output[0] if isinstance(output, tuple) else output
    for probe in probes:
        step.decide(probe, hidden)
    for op in ops:
        if op.kind == FAST_ADD:  # the common case: add one vector to every token
            hidden = hidden + _fitted(op.tensors["delta"], hidden, step, op.rows)
        elif op.kind == MASKED_ADD:  # hidden + weight * delta: one fused op
            assert op.selection is not None
            delta = _fitted(op.tensors["delta"], hidden, step, op.rows)
            hidden = torch.addcmul(hidden, step.weight(op.selection, hidden), delta)
        else:
            mask = None if op.selection is None else step.mask(op.selection, hidden.device)
            hidden = op.operator.apply(hidden, _prepared(op, hidden, step), mask)
    for tap in module._steerable_taps:
        tap(hidden, step)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _fitted(tensor: Tensor, hidden: Tensor, step: StepContext, rows: int | None) -> Tensor:
    """A prepared tensor for this batch, in ``hidden``'s dtype: a per-row steering's tensors of its
    ``rows`` rows matched to the batch (its tensors made from shared values keep one row: they broadcast)."""
    if rows is not None and tensor.ndim == 3 and tensor.shape[0] == rows:
        tensor = rows_for_batch(tensor, hidden.shape[0], "the per-row steering (multiplier or vectors)", step.prompts)
    if tensor.dtype != hidden.dtype or tensor.device != hidden.device:
        tensor = tensor.to(hidden)  # e.g. a quantized layer whose params are not floats
    return tensor


def _prepared(op: Op, hidden: Tensor, step: StepContext) -> dict[str, Tensor]:
    if op.live is None:
        return {name: _fitted(tensor, hidden, step, op.rows) for name, tensor in op.tensors.items()}
    # trainable: prepared in float32 like fixed steerings (one rounding rule for both), then cast
    vector, multiplier = for_rows(*op.live)
    tensors = op.operator.prepare(vector.to(hidden.device, torch.float32), multiplier.to(hidden.device, torch.float32))
    return {name: _fitted(tensor, hidden, step, op.rows) for name, tensor in tensors.items()}


class InjectingLayer(nn.Module):
    """For decoder stacks that do not pass keyword arguments on to their layers: the step context is
    put into the layer's keyword arguments at the call, so gradient checkpointing replays it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if STEP_KWARG not in kwargs:
            step = CURRENT_STEP.get()
            if step is not None:
                kwargs[STEP_KWARG] = step
        return super().__call__(*args, **kwargs)


def make_steerable(module: nn.Module, key: int, fallback: Callable[[Tensor], StepContext], inject: bool = False) -> Any:
    """Swap ``module``'s class for its steerable subclass (same name, module and qualname)."""
    if isinstance(module, SteerableLayer):
        return module
    mixins: tuple[type, ...] = (SteerableLayer, InjectingLayer) if inject else (SteerableLayer,)
    base = type(module)
    inner = base.forward
    # transformers wraps every decoder layer's forward for gradient checkpointing; our subclass's forward
    # is wrapped too and is the one that checkpoints, so call the original beneath the base's wrapper
    # (the wrapper would only check that and step aside: one call less per layer).
    if getattr(inner, "__name__", "") == "forward_with_checkpointing" and hasattr(inner, "__wrapped__"):
        inner = inner.__wrapped__
    set_class(module, posing_subclass(mixins, base))
    assert isinstance(module, SteerableLayer)
    module.__dict__["_steerable_inner"] = inner  # on the instance: a call in flight in another thread
    module._steerable_key = key
    module._steerable_fallback = fallback  # outlives a swap back (see restore)
    module._steerable_taps = ()
    module._steerable_sites_need_step = False
    return module


def restore(module: nn.Module) -> None:
    """Give ``module`` back its original class. Its steerable attributes stay behind, inert, so that a
    forward another thread is running through the module right now finishes as a plain forward."""
    if not isinstance(module, SteerableLayer):
        return
    module._steerable_taps = ()
    module._steerable_sites_need_step = False
    set_class(module, module._steerable_base)


def forget(module: nn.Module) -> None:
    """``restore``, then remove every attribute steerable added (for ``unwrap``)."""
    restore(module)
    for attribute in ("_steerable_inner", "_steerable_key", "_steerable_fallback", "_steerable_taps"):
        module.__dict__.pop(attribute, None)
    module.__dict__.pop("_steerable_sites_need_step", None)
    for name in [n for n in module._buffers if n.startswith("steering_")]:
        module._buffers.pop(name, None)
