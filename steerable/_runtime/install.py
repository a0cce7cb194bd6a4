"""Installing a steering: its plan's tensors into slots of the layers, its condition into probes, its
token selection into the decoder stack; then the active set is published. Removing and updating are the
reverse and a replace; every change happens under the model's lock and ends with a publish."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steerable import conditions
from steerable._runtime import conditional
from steerable._runtime.layer import FAST_ADD, GENERAL, MASKED_ADD
from steerable._runtime.plan import Plan, make_plan
from steerable._runtime.pool import fill
from steerable._runtime.state import Installation, ModelState, resolve_layers
from steerable.devices import reference_tensor
from steerable.operators import Add
from steerable.spec import Steering


def install(state: ModelState, spec: Steering) -> Installation:
    """Validate ``spec`` against the model, then apply it; a failure leaves the model as it was."""
    # Steering tensors are made outside inference mode even when steer is called inside it: inference
    # tensors would break every later forward that records gradients.
    with torch.inference_mode(False):
        plan = make_plan(state, spec)
        inst = Installation(rows=plan.rows, owner=state)
        with state.lock:
            state.installed.append(inst)
            try:
                _occupy(state, spec, plan, inst)
            except BaseException:
                uninstall(state, inst)
                raise
            state.publish()
            state.refresh()
    return inst


def _occupy(state: ModelState, spec: Steering, plan: Plan, inst: Installation) -> None:
    gate = None if spec.condition is None else _occupy_probes(state, spec.condition, inst)
    if not plan.selection.everything:
        tensors = plan.selection.tensors()
        device = reference_tensor(state.stack).device
        layout = tuple((k, tuple(t.shape)) for k, t in tensors.items())
        moved = {k: t.to(device) for k, t in tensors.items()}
        kind_of_selection: tuple[Any, ...] = (plan.selection.mode, gate, layout)
        inst.selection = state.selections.occupy(
            state.stack, kind_of_selection, moved, mode=plan.selection.mode, gate=gate
        )
    selection = None if inst.selection is None else inst.selection.index
    for index, (tensors, live) in plan.layers.items():
        module = state.site_module(index, spec.vector.site)
        cast = _cast_all(tensors, module, index)
        kind = GENERAL
        if isinstance(plan.operator, Add) and live is None:
            kind = FAST_ADD if selection is None else MASKED_ADD
        pool = state.pool(index, spec.vector.site)
        signature = (plan.operator, selection, kind, tuple((k, tuple(t.shape), t.dtype) for k, t in cast.items()))
        slot = pool.occupy(module, signature, cast, operator=plan.operator, selection=selection, kind=kind)
        inst.ops.append((module, pool, slot, live))


def _occupy_probes(state: ModelState, condition: conditions.Expression, inst: Installation) -> conditional.Tree:
    """One probe per leaf of the condition, at its layer; returns the gate tree over them."""
    probe_of: dict[int, int] = {}
    for leaf in conditions.leaves(condition):
        index = resolve_layers(state, [leaf.layer])[0][1]
        module = state.site_module(index, "block")
        tensors = conditional.probe_tensors(leaf, reference_tensor(module).device)
        signature = (index, leaf.score, tuple(tensors["direction"].shape))
        probe = state.probes.occupy(module, signature, tensors, score=leaf.score)
        inst.probes.append((module, probe))
        probe_of[id(leaf)] = probe.index
    return conditional.tree(condition, probe_of)


def uninstall(state: ModelState, inst: Installation) -> None:
    with state.lock:
        if not inst.active:
            return
        inst.active = False
        state.installed = [i for i in state.installed if i is not inst]
        state.publish()  # forwards from now on run without it; those running keep their active set
        for module, pool, slot, _ in reversed(inst.ops):
            pool.vacate(module, slot)
        if inst.selection is not None:
            state.selections.vacate(state.stack, inst.selection)
        for module, probe in reversed(inst.probes):
            state.probes.vacate(module, probe)
        state.refresh()
        state.deactivate_if_idle()


def update(state: ModelState, inst: Installation, old: Steering, new: Steering) -> None:
    """Replace ``old``'s values with ``new``'s: same layers, site, operator and shapes, so the slots (and
    a compiled graph) stay."""
    if not inst.active:
        raise RuntimeError("this steering was removed; apply a new one with model.steer(...)")
    if new.vector.layers != old.vector.layers or new.vector.site != old.vector.site:
        raise ValueError("update keeps the layers and site: apply a new steering for other layers or sites")
    with torch.inference_mode(False):
        plan = make_plan(state, new)
        pending: list[tuple[int, dict[str, Tensor], tuple[Tensor, Tensor] | None]] = []
        for number, ((module, _, slot, live), (index, (tensors, new_live))) in enumerate(
            zip(inst.ops, plan.layers.items(), strict=True)
        ):
            if (live is None) != (new_live is None):
                raise ValueError("update cannot switch between trainable and fixed tensors: apply a new steering")
            cast = _cast_all(tensors, module, index)
            for name, tensor in cast.items():
                current = module._buffers.get(slot.names[name])
                if current is not None and current.shape != tensor.shape:
                    raise ValueError(
                        f"layer {index}: the new {name} has shape {list(tensor.shape)}, the steering "
                        f"{list(current.shape)}; per-row sizes must stay the same"
                    )
            pending.append((number, cast, new_live))
    with state.lock:
        for number, cast, new_live in pending:
            module, pool, slot, _ = inst.ops[number]
            fill(module, slot, cast)  # new tensors: a forward in flight keeps the old ones
            inst.ops[number] = (module, pool, slot, new_live)
        state.publish()


def _cast_all(tensors: dict[str, Tensor], module: torch.nn.Module, layer: int) -> dict[str, Tensor]:
    reference = reference_tensor(module)
    dtype = reference.dtype if reference.numel() else torch.float32
    return {name: _cast(t, dtype, reference.device, layer) for name, t in tensors.items()}


def _cast(tensor: Tensor, dtype: torch.dtype, device: torch.device, layer: int) -> Tensor:
    """``tensor`` in the layer's dtype and device; an error if the cast overflows (e.g. to fp16)."""
    cast = tensor.to(device, dtype)
    if cast is tensor:
        cast = tensor.clone()
    if cast.is_floating_point() and not bool(torch.isfinite(cast).all()):
        raise ValueError(
            f"layer {layer}: the steering overflows the layer's {dtype}; use a smaller multiplier or vector"
        )
    return cast
