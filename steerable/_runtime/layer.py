"""Steerable layers: a decoder layer (or one of its sub-modules) that steers and records its own output.

Each steering occupies a :class:`Slot` of the module: the operator, the names of the buffers that hold
its prepared tensors, and the index of the token selection it uses. Slots are kept when a steering is
removed and reused by the next steering of the same kind (same operator, selection kind and shapes),
so buffer names and the objects ``torch.compile`` guards on stay the same: new steerings, and new
values, do not recompile. Buffers are non-persistent: ``.to()``/``.half()`` and ``device_map`` move
them with the layer and ``state_dict()`` never sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerable._runtime.class_swap import plain_reduction, posing_subclass, set_class
from steerable._runtime.step import CURRENT_STEP, STEP_KWARG, StepContext, rows_for_batch
from steerable.operators import Add, Operator, for_rows

Tap = Callable[[Float[Tensor, "batch seq d_model"], StepContext | None], None]
FAST_ADD, MASKED_ADD, GENERAL = 0, 1, 2


@dataclass(eq=False)
class Slot:
    """One steering's place in one module."""

    operator: Operator
    selection: int | None  # index of the model's token selection, None for every token
    names: dict[str, str]  # prepared tensor -> buffer name
    signature: tuple[Any, ...]
    kind: int = GENERAL
    # trainable steerings keep the caller's tensors and prepare them on every forward, so gradients
    # reach them: (vector [d] or [rows, d], multiplier [] or [rows])
    live: tuple[Tensor, Tensor] | None = None
    active: bool = False


@dataclass(eq=False)
class Probe:
    """A condition decided at this module's output (conditional steering): its buffers hold the
    direction and the threshold; ``rule`` carries the comparator and the score kind."""

    index: int  # the condition's index in the step context's gates
    names: dict[str, str]
    rule: Any
    signature: tuple[Any, ...]
    active: bool = False


class SteerableLayer(nn.Module):
    """Mixin placed before the original class in the MRO; ``forward`` post-processes its output."""

    _steerable_base: type[nn.Module]
    _steerable_inner: Callable[..., Any]  # the original forward (see make_steerable)
    _steerable_slots: list[Slot]
    _steerable_ops: tuple[Slot, ...]
    _steerable_taps: tuple[Tap, ...]
    _steerable_probes: tuple[Probe, ...]
    _steerable_sites_need_step: bool  # a sub-module of this decoder layer selects tokens or records
    _steerable_fallback: Callable[[Tensor], StepContext]

    def __reduce_ex__(self, protocol: Any) -> Any:
        return plain_reduction(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        step = kwargs.pop(STEP_KWARG, None)
        if step is not None and self._steerable_sites_need_step:  # sub-modules get no keyword arguments
            token = CURRENT_STEP.set(step)
            try:
                output = self._steerable_inner(self, *args, **kwargs)
            finally:
                CURRENT_STEP.reset(token)
        else:
            output = self._steerable_inner(self, *args, **kwargs)
        if not self._steerable_ops and not self._steerable_taps and not self._steerable_probes:
            return output
        return self._steerable_output(output, step)

    def _steerable_output(self, output: Any, step: StepContext | None) -> Any:
        """Decide the conditions read here (on the unsteered output), steer the output, then show it
        to the taps."""
        hidden = output[0] if isinstance(output, tuple) else output
        if self._steerable_probes:
            step = step or CURRENT_STEP.get() or self._steerable_fallback(hidden)
            for probe in self._steerable_probes:
                direction, threshold = (self._buffers.get(probe.names[k]) for k in ("direction", "threshold"))
                if probe.active and direction is not None and threshold is not None:
                    step.decide(probe.index, hidden, direction, threshold, probe.rule)
        for slot in self._steerable_ops:
            if not slot.active:  # removed by another thread while this forward runs
                continue
            if slot.kind == FAST_ADD:  # the common case: add one vector to every token
                hidden = hidden + self._steerable_tensor(slot.names["delta"], hidden, step)
                continue
            if step is None and slot.selection is not None:
                step = CURRENT_STEP.get() or self._steerable_fallback(hidden)
            if slot.kind == MASKED_ADD:  # hidden + weight * delta: one fused op
                assert step is not None and slot.selection is not None
                delta = self._steerable_tensor(slot.names["delta"], hidden, step)
                hidden = torch.addcmul(hidden, step.weight(slot.selection, hidden), delta)
                continue
            mask = None if step is None or slot.selection is None else step.mask(slot.selection, hidden.device)
            hidden = slot.operator.apply(hidden, self._steerable_tensors(slot, hidden, step), mask)
        if self._steerable_taps:
            if step is None:
                step = CURRENT_STEP.get() or self._steerable_fallback(hidden)
            for tap in self._steerable_taps:
                tap(hidden, step)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _steerable_tensor(self, name: str, hidden: Tensor, step: StepContext | None) -> Tensor:
        tensor = self._buffers.get(name)
        if tensor is None:  # removed by another thread while this forward runs: steer with nothing
            return torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        if tensor.ndim == 3 and tensor.shape[0] not in (1, hidden.shape[0]):
            tensor = fit_rows(tensor, hidden, step)
        if tensor.dtype != hidden.dtype or tensor.device != hidden.device:
            tensor = tensor.to(hidden)  # e.g. a quantized layer whose params are not floats
        return tensor

    def _steerable_tensors(self, slot: Slot, hidden: Tensor, step: StepContext | None) -> dict[str, Tensor]:
        if slot.live is None:
            return {field: self._steerable_tensor(name, hidden, step) for field, name in slot.names.items()}
        vector, multiplier = for_rows(*slot.live)
        tensors = slot.operator.prepare(vector.to(hidden), multiplier.to(hidden))
        return {
            field: fit_rows(tensor, hidden, step) if tensor.ndim == 3 and tensor.shape[0] != 1 else tensor
            for field, tensor in tensors.items()
        }

    # -- slots (managed by steerable._runtime.steering) -------------------------------------------------
    def occupy(
        self, operator: Operator, selection: int | None, tensors: dict[str, Tensor], live: tuple[Tensor, Tensor] | None
    ) -> Slot:
        """Put a steering into a free slot of the same kind, or a new one; returns the slot."""
        signature = (
            operator,
            selection,
            live is not None,
            tuple((k, tuple(t.shape), t.dtype) for k, t in tensors.items()),
        )
        slot = next((s for s in self._steerable_slots if not s.active and s.signature == signature), None)
        if slot is None:
            number = len(self._steerable_slots)
            names = {field: f"steering_{number}_{field}" for field in tensors}
            slot = Slot(operator, selection, names, signature)
            if isinstance(operator, Add) and live is None:
                slot.kind = FAST_ADD if selection is None else MASKED_ADD
            self._steerable_slots.append(slot)
        for field, tensor in tensors.items():
            self.register_buffer(slot.names[field], tensor, persistent=False)
        slot.live = live
        slot.active = True
        self._steerable_ops = (*self._steerable_ops, slot)
        return slot

    def vacate(self, slot: Slot) -> None:
        """Remove a steering; its slot stays, empty, for the next steering of the same kind."""
        self._steerable_ops = tuple(s for s in self._steerable_ops if s is not slot)
        slot.active = False
        slot.live = None
        for name in slot.names.values():
            self._buffers.pop(name, None)

    def add_probe(self, probe: Probe, tensors: dict[str, Tensor]) -> None:
        for field, tensor in tensors.items():
            self.register_buffer(probe.names[field], tensor, persistent=False)
        probe.active = True
        self._steerable_probes = (*self._steerable_probes, probe)

    def remove_probe(self, probe: Probe) -> None:
        self._steerable_probes = tuple(p for p in self._steerable_probes if p is not probe)
        probe.active = False
        for name in probe.names.values():
            self._buffers.pop(name, None)

    @property
    def is_idle(self) -> bool:
        return not self._steerable_ops and not self._steerable_taps and not self._steerable_probes

    @property
    def needs_step(self) -> bool:
        """Whether this module reads the step context (token selections, recordings, conditions)."""
        return (
            bool(self._steerable_taps)
            or bool(self._steerable_probes)
            or any(s.selection is not None for s in self._steerable_ops)
        )


class InjectingLayer(nn.Module):
    """For decoder stacks that do not pass keyword arguments on to their layers: the step context is
    put into the layer's keyword arguments at the call, so gradient checkpointing replays it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if STEP_KWARG not in kwargs:
            step = CURRENT_STEP.get()
            if step is not None:
                kwargs[STEP_KWARG] = step
        return super().__call__(*args, **kwargs)


def fit_rows(tensor: Tensor, hidden: Tensor, step: StepContext | None) -> Tensor:
    """A per-row tensor (``[rows, 1, ...]``) for this batch; inside ``generate`` each row is repeated for
    the copies of its prompt (``num_return_sequences``, beams)."""
    if tensor.ndim != 3:
        return tensor
    step = step or CURRENT_STEP.get()
    generating = step is not None and step.generating
    return rows_for_batch(tensor, hidden.shape[0], "the per-row steering (multiplier or vectors)", generating)


def make_steerable(
    module: nn.Module, fallback: Callable[[Tensor], StepContext], slots: list[Slot], inject: bool = False
) -> SteerableLayer:
    """Swap ``module``'s class for its steerable subclass (same name, module and qualname).

    ``slots`` is kept by the model, not the module, so that a module swapped back and forth keeps the
    same slot objects (``torch.compile`` guards on them)."""
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
    module._steerable_fallback = fallback  # outlives a swap back (see restore)
    module._steerable_slots = slots
    module._steerable_ops = ()
    module._steerable_taps = ()
    module._steerable_probes = ()
    module._steerable_sites_need_step = False
    return module


def restore(module: nn.Module) -> None:
    """Give ``module`` back its original class and drop its steering buffers.

    Its steerable attributes stay behind, inert (no steerings, no taps), so that a forward that
    another thread is running through the module right now finishes as a plain forward."""
    if not isinstance(module, SteerableLayer):
        return
    module._steerable_ops = ()
    module._steerable_taps = ()
    for probe in module._steerable_probes:
        module.remove_probe(probe)
    module._steerable_sites_need_step = False
    for slot in module._steerable_slots:
        slot.active, slot.live = False, None
        for name in slot.names.values():
            module._buffers.pop(name, None)
    set_class(module, module._steerable_base)


def forget(module: nn.Module) -> None:
    """``restore``, then remove every attribute steerable added (for ``unwrap``)."""
    restore(module)
    for attribute in (
        "_steerable_inner",
        "_steerable_fallback",
        "_steerable_slots",
        "_steerable_ops",
        "_steerable_taps",
        "_steerable_probes",
        "_steerable_sites_need_step",
    ):
        module.__dict__.pop(attribute, None)
