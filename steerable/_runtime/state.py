"""What a steerable model keeps: its layers, its decoder stack, the applied steerings and the token
selections they use. Nothing here describes one forward call (that travels with the call, see
``steerable._runtime.step``); this is changed only by ``steer``, ``remove`` and ``record``, under a lock.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from steerable._runtime.layer import Probe, Slot, SteerableLayer, make_steerable, restore
from steerable._runtime.step import (
    PROMPT_LENGTHS,
    Selection,
    StepContext,
    absolute_positions,
    past_length,
    selection_mask,
)
from steerable.architectures import ArchitectureSpec, canonical_site, get_submodule
from steerable.devices import module_device, reference_tensor

if TYPE_CHECKING:
    from steerable._runtime.steering import SteeringHandle


@dataclass(eq=False)
class SelectionSlot:
    """A token selection in use, stored in buffers of the decoder stack; reused like layer slots."""

    index: int
    mode: str
    names: dict[str, str]
    signature: tuple[Any, ...]
    active: bool = False
    gate: Callable[[dict[int, Tensor]], Tensor] | None = None  # conditional: the rows that meet it


@dataclass(eq=False)
class ModelState:
    spec: ArchitectureSpec
    layers: nn.ModuleList
    stack: nn.Module  # the module that runs the decoder layers: where positions are computed
    hidden_size: int | None
    kwargs_reach_layers: bool  # the stack passes keyword arguments on to its layers
    stack_arg_names: tuple[str, ...]
    handles: list[SteeringHandle] = field(default_factory=list)
    selection_slots: list[SelectionSlot] = field(default_factory=list)
    selections: tuple[SelectionSlot, ...] = ()  # active, read on every forward
    recordings: int = 0  # active record blocks: they report positions
    inject: bool = False  # layers put the step context into their own keyword arguments (see layers.py)
    slots: dict[tuple[int, str], list[Slot]] = field(default_factory=dict)  # (layer, site) -> its slots
    taps: int = 0  # installed taps (recordings, training)
    rowwise: int = 0  # active per-row steerings: inside generate they need to know it (repeated rows)
    generating: int = 0  # generate calls running (in any thread): only then are prompt lengths looked up
    forward_kwargs: bool = False  # the model's forward takes **kwargs (generate can pass prompt lengths)
    lock: threading.RLock = field(default_factory=threading.RLock)
    unwrapped: bool = False
    probes: list[Probe] = field(default_factory=list)  # condition probes, reused like slots
    deciding: int = 0  # active probes: forwards then find each row's prompt tokens and the cache's memory

    # -- conditions (conditional steering) ----------------------------------------------------
    def occupy_probe(
        self, layer_index: int, direction: Tensor, threshold: float, rule: Any
    ) -> tuple[SteerableLayer, Probe]:
        module = self.site_module(layer_index, "block")
        reference = reference_tensor(module)
        signature = (layer_index, rule.comparator, rule.score, tuple(direction.shape))
        probe = next((p for p in self.probes if not p.active and p.signature == signature), None)
        if probe is None:
            number = len(self.probes)
            names = {k: f"steering_condition_{number}_{k}" for k in ("direction", "threshold")}
            probe = Probe(number, names, rule, signature)
            self.probes.append(probe)
        probe.rule = rule
        device = reference.device if reference.numel() else torch.device("cpu")
        tensors = {
            "direction": direction.float().to(device),
            "threshold": torch.tensor(float(threshold), device=device),
        }
        module.add_probe(probe, tensors)
        self.deciding += 1
        self.refresh(module)
        return module, probe

    def vacate_probe(self, module: SteerableLayer, probe: Probe) -> None:
        module.remove_probe(probe)
        self.deciding -= 1
        self.refresh(module)

    # -- token selections ----------------------------------------------------------------------
    def occupy_selection(self, selection: Selection, gate: Callable[[dict[int, Tensor]], Tensor] | None = None) -> int:
        tensors = selection.tensors()
        signature = (selection.mode, gate is not None, tuple((k, tuple(t.shape)) for k, t in tensors.items()))
        slot = next((s for s in self.selection_slots if not s.active and s.signature == signature), None)
        if slot is None:
            number = len(self.selection_slots)
            slot = SelectionSlot(
                number, selection.mode, {k: f"steering_selection_{number}_{k}" for k in tensors}, signature
            )
            self.selection_slots.append(slot)
        device = module_device(self.stack)
        for key, tensor in tensors.items():
            self.stack.register_buffer(slot.names[key], tensor.to(device), persistent=False)
        slot.gate = gate
        slot.active = True
        self.selections = (*self.selections, slot)
        return slot.index

    def vacate_selection(self, index: int) -> None:
        slot = self.selection_slots[index]
        slot.active = False
        slot.gate = None
        self.selections = tuple(s for s in self.selections if s is not slot)
        for name in slot.names.values():
            self.stack._buffers.pop(name, None)

    # -- the step context ----------------------------------------------------------------------
    def step(
        self, batch: int, seq_len: int, device: torch.device, inputs: dict[str, Any], lengths: Tensor | None = None
    ) -> StepContext:
        """Positions of this forward's tokens and the mask of every active selection. ``lengths``: the
        prompt lengths ``generate`` passed with the call, if they reached the decoder stack."""
        cache = inputs.get("cache", inputs.get("past_key_values"))
        positions = absolute_positions(
            batch,
            seq_len,
            device,
            inputs.get("attention_mask"),
            inputs.get("position_ids"),
            inputs.get("cache_position"),
            cache,
        )
        if lengths is None and self.generating:
            lengths = PROMPT_LENGTHS.get()  # this thread's generate, if it is generating
        context = StepContext(positions, generating=lengths is not None)
        if self.deciding:  # conditions decide on each row's prompt; the KV cache keeps the decision
            context.prompt = selection_mask("prompt", positions, lengths, None, None)[..., 0]
            context.memory = _memory(cache)
        if self.selections:
            buffers = self.stack._buffers
            for slot in self.selections:
                found: dict[str, Tensor] = {k: buffers[name] for k, name in slot.names.items()}  # type: ignore[misc]
                markers = {k: found[k] for k in ("header", "end")} if "header" in found else None
                context.masks[slot.index] = selection_mask(
                    slot.mode,  # type: ignore[arg-type]
                    positions,
                    lengths,
                    found.get("min_index"),
                    found.get("mask"),
                    inputs.get("input_ids"),
                    markers,
                    found.get("rows"),
                )
                if slot.gate is not None:
                    context.conditional[slot.index] = slot.gate
        return context

    def fallback_step(self, hidden: Tensor) -> StepContext:
        """For a layer run without its decoder stack: positions count from 0, no padding is known."""
        return self.step(hidden.shape[0], hidden.shape[1], hidden.device, {})

    # -- which modules are steerable ----------------------------------------------------------
    # Decoder layers are steerable only while the model steers or records (an idle model runs its own
    # layers: idle costs nothing), site modules only while something uses them.
    def activate(self) -> None:
        for index, layer in enumerate(self.layers):
            make_steerable(layer, self.fallback_step, self.slots.setdefault((index, "block"), []), self.inject)

    def deactivate_if_idle(self) -> None:
        if self.handles or self.taps or self.deciding:
            return
        for layer in self.layers:
            for module in layer.modules():
                restore(module)

    def check_site(self, site: str) -> str:
        """``site`` (seed-library names mapped to ours) if this model has it, else a ValueError."""
        site = canonical_site(site)
        if site != "block" and site not in self.spec.sites:
            available = ", ".join(["block", *self.spec.sites])
            raise ValueError(f"site {site!r} is not available for this architecture; available: {available}")
        return site

    def site_module(self, layer_index: int, site: str) -> SteerableLayer:
        """The steerable module of ``site`` in decoder layer ``layer_index`` (swapped in on first use)."""
        site = self.check_site(site)
        self.activate()
        layer = self.layers[layer_index]
        if site == "block":
            assert isinstance(layer, SteerableLayer)
            return layer
        module = get_submodule(layer, self.spec.sites[site])
        if module is None:
            raise ValueError(
                f"site {site!r} ({self.spec.sites[site]}) does not exist in decoder layer {layer_index} of this model"
            )
        return make_steerable(module, self.fallback_step, self.slots.setdefault((layer_index, site), []))

    def refresh(self, module: SteerableLayer) -> None:
        """After a change at ``module``: give an idle site module its own class back (idle costs
        nothing), and tell its decoder layer whether a sub-module now reads the step context."""
        for layer in self.layers:
            if module is layer:
                return
            if any(m is module for m in layer.modules()):
                if module.is_idle:
                    restore(module)
                assert isinstance(layer, SteerableLayer)
                layer._steerable_sites_need_step = any(
                    isinstance(m, SteerableLayer) and m is not layer and m.needs_step for m in layer.modules()
                )
                return


def _memory(cache: Any) -> dict[int, Tensor] | None:
    """The condition decisions kept with a KV cache (a new sequence starts with none), or None for a
    forward without a cache object (every forward then decides on its own prompt)."""
    if cache is None or isinstance(cache, (tuple, list)):
        return None
    memory = cache.__dict__.setdefault("_steerable_conditions", {})
    if past_length(cache) == 0:  # an empty (or reset static) cache: a new sequence
        memory.clear()
    return memory  # type: ignore[no-any-return]


def resolve_layers(state: ModelState, layers: list[int]) -> list[tuple[int, int]]:
    """(as given, index into the layer list) for each layer; negative indices count from the end."""
    n_layers = len(state.layers)
    resolved: list[tuple[int, int]] = []
    for layer in layers:
        if isinstance(layer, numbers.Integral) and not isinstance(layer, bool):
            layer = int(layer)  # numpy integers too
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise IndexError(
                f"layer {layer} is out of range: the model has {n_layers} decoder layers "
                f"(use 0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
            )
        index = layer % n_layers
        if any(index == seen for _, seen in resolved):
            raise ValueError(f"layer {layer} and layer {index} name the same decoder layer; give it once")
        resolved.append((layer, index))
    return resolved
