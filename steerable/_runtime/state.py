"""What a steerable model keeps: its layers, its decoder stack, the installed steerings and the slots
they occupy, and the active set published from them (``steerable._runtime.active``). Nothing here
describes one forward call (that travels with the call, see ``steerable._runtime.step``); this is
changed only by installing, removing and tapping, under the lock.
"""

from __future__ import annotations

import dataclasses
import numbers
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from steerable._runtime.active import Active, Batch, Op, ProbeOp, SelectionOp
from steerable._runtime.layer import MASKED_ADD, SteerableLayer, make_steerable, restore
from steerable._runtime.pool import Pool, Probe, SelectionSlot, Slot, tensors_of
from steerable._runtime.step import (
    PROMPT_LENGTHS,
    StepContext,
    absolute_positions,
    past_length,
    selection_mask,
)
from steerable.architectures import ArchitectureSpec, canonical_site, get_submodule


@dataclass(eq=False)
class Installation:
    """One installed steering: the slots it occupies. ``rows``: the rows of a per-row steering, or None."""

    ops: list[tuple[SteerableLayer, Pool[Slot], Slot, tuple[Tensor, Tensor] | None]] = field(default_factory=list)
    probes: list[tuple[SteerableLayer, Probe]] = field(default_factory=list)
    selection: SelectionSlot | None = None
    rows: int | None = None
    active: bool = True
    owner: Any = None  # the ModelState it is installed in (it moves with a PEFT model's base on unload)


@dataclass(eq=False)
class ModelState:
    spec: ArchitectureSpec
    layers: nn.ModuleList
    stack: nn.Module  # the module that runs the decoder layers: where positions are computed
    hidden_size: int | None
    kwargs_reach_layers: bool  # the stack passes keyword arguments on to its layers
    stack_arg_names: tuple[str, ...]
    forward_kwargs: bool = False  # the model's forward takes **kwargs (generate can pass prompt lengths)
    inject: bool = False  # layers put the step context into their own keyword arguments (see layer.py)
    installed: list[Installation] = field(default_factory=list)
    active: Active | None = None  # published from `installed`; what each forward runs with
    pools: dict[tuple[int, str], Pool[Slot]] = field(default_factory=dict)  # (layer, site) -> its slots
    selections: Pool[SelectionSlot] = field(default_factory=lambda: Pool(SelectionSlot, "steering_selection"))
    probes: Pool[Probe] = field(default_factory=lambda: Pool(Probe, "steering_condition"))
    modules: list[nn.Module] = field(default_factory=list)  # steerable modules, by key
    recordings: int = 0  # active record blocks: they report positions
    taps: int = 0  # installed taps (recordings, training)
    generating: int = 0  # generate calls running (in any thread): only then are prompt lengths looked up
    lock: threading.RLock = field(default_factory=threading.RLock)
    unwrapped: bool = False
    swapped: bool = False  # the decoder layers are steerable now (else the model's own: idle)
    in_flight: int = 0  # eager forwards running through swapped layers
    restore_pending: bool = False  # modules to give back their class once no forward runs through them
    deferred: int = 0  # open one_change blocks: publish once, when the last closes

    # -- the active set ------------------------------------------------------------------------
    @contextmanager
    def one_change(self) -> Iterator[None]:
        """Several installs and removals that forwards see as one change (``steer_rows``)."""
        with self.lock:
            self.deferred += 1
            try:
                yield
            finally:
                self.deferred -= 1
                if not self.deferred:
                    self.publish()
                    self.refresh()

    def publish(self) -> None:
        """Make the installed steerings the active set (called under the lock after every change)."""
        if self.deferred:
            return
        ops: dict[int, list[Op]] = {}
        probes: dict[int, list[ProbeOp]] = {}
        selections: list[SelectionOp] = []
        for inst in self.installed:
            for module, _, slot, live in inst.ops:
                assert slot.operator is not None
                tensors = tensors_of(module, slot)
                op = Op(slot.operator, slot.selection, slot.kind, tensors, live, inst.rows)
                ops.setdefault(module._steerable_key, []).append(op)
            for module, probe in inst.probes:
                found = tensors_of(module, probe)
                decided = ProbeOp(probe.index, probe.score, found["direction"], found["threshold"], found["sign"])
                probes.setdefault(module._steerable_key, []).append(decided)
            chosen = inst.selection
            if chosen is not None:
                selections.append(SelectionOp(chosen.index, chosen.mode, tensors_of(self.stack, chosen), chosen.gate))
        if not ops and not probes:
            self.active = None
            return
        batches = _batched(ops, selections)
        self.active = Active(
            {k: tuple(v) for k, v in ops.items()},
            {k: tuple(v) for k, v in probes.items()},
            tuple(selections),
            batches,
        )

    # -- the step context ----------------------------------------------------------------------
    def step(
        self, batch: int, seq_len: int, device: torch.device, inputs: dict[str, Any], lengths: Tensor | None = None
    ) -> StepContext:
        """The step context of one forward: the active set in force now, and, where something selects
        tokens or records, positions and the mask of every selection. ``lengths``: the prompt lengths
        ``generate`` passed with the call, if they reached the decoder stack."""
        active = self.active
        if lengths is None and self.generating:
            lengths = PROMPT_LENGTHS.get()  # this thread's generate, if it is generating
        prompts = None if lengths is None else int(lengths.shape[0])
        if not self.recordings and not self.taps and (active is None or not active.needs_positions):
            return StepContext(active, prompts=prompts)  # adds everywhere: positions are not needed
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
        context = StepContext(active, positions, prompts=prompts)
        if active is None:
            return context
        if active.probes:  # conditions decide on each row's prompt; the KV cache keeps the decision
            context.prompt = selection_mask("prompt", positions, lengths, None, None)[..., 0]
            context.memory = _memory(cache)
        for selection in active.selections:
            found = selection.tensors
            markers = {k: found[k] for k in ("header", "end")} if "header" in found else None
            context.masks[selection.index] = selection_mask(
                selection.mode,  # type: ignore[arg-type]
                positions,
                lengths,
                found.get("min_index"),
                found.get("mask"),
                inputs.get("input_ids"),
                markers,
                found.get("rows"),
            )
            if selection.gate is not None:
                context.conditional[selection.index] = selection.gate
        if batch * seq_len <= BATCHED_TOKENS:  # decode steps: one op masks every layer's add
            for stacked in active.batches:
                weight = context.masks[stacked.selection].to(stacked.deltas.device, stacked.deltas.dtype)
                context.batched[stacked.selection] = (stacked.deltas * weight).unbind(0)
        return context

    def fallback_step(self, hidden: Tensor) -> StepContext:
        """For a layer run without its decoder stack: positions count from 0, no padding is known."""
        return self.step(hidden.shape[0], hidden.shape[1], hidden.device, {})

    # -- which modules are steerable ----------------------------------------------------------
    # Decoder layers are steerable only while the model steers or records (an idle model runs its own
    # layers: idle costs nothing), site modules only while something uses them.
    def key_of(self, module: nn.Module) -> int:
        for key, known in enumerate(self.modules):
            if known is module:
                return key
        self.modules.append(module)
        return len(self.modules) - 1

    def activate(self) -> None:
        for layer in self.layers:
            make_steerable(layer, self.key_of(layer), self.fallback_step, self.inject)
        self.swapped = True

    def checkpointing(self) -> bool:
        """Whether gradient checkpointing is on: a layer recomputed in backward runs its module's class
        of that time, so modules keep their steerable class while it is on (idle, they steer nothing)."""
        flags = (getattr(m, "gradient_checkpointing", False) for m in (self.stack, *self.layers))
        return any(flag is True for flag in flags)

    def deactivate_if_idle(self) -> None:
        if self.installed or self.taps or self.checkpointing():
            return
        if self.in_flight:  # another thread's forward is in these layers: swap back when it leaves
            self.restore_pending = True
            return
        for layer in self.layers:
            for module in layer.modules():
                restore(module)
        self.swapped = False

    # A forward that runs through the swapped layers counts itself in and out (eager forwards; a
    # compiled graph runs as traced). Modules are given back their class only when none runs, so a
    # forward never meets a layer swapped back under it.
    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1
            if self.in_flight == 0 and self.restore_pending:
                self.restore_pending = False
                self.refresh()
                self.deactivate_if_idle()

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
        return make_steerable(module, self.key_of(module), self.fallback_step)  # type: ignore[no-any-return]

    def pool(self, layer_index: int, site: str) -> Pool[Slot]:
        return self.pools.setdefault((layer_index, site), Pool(Slot, "steering"))

    def refresh(self) -> None:
        """After a change: tell each decoder layer whether a sub-module of it steers or records (then it
        hands the step context on), and give unused site modules their own class back (idle costs
        nothing). Giving back waits while a forward runs through the layers (see ``leave``)."""
        if self.deferred:
            return
        active = self.active
        for layer in self.layers:
            if not isinstance(layer, SteerableLayer):
                continue
            used, unused = False, []
            for module in layer.modules():
                if module is layer or not isinstance(module, SteerableLayer):
                    continue
                key = module._steerable_key
                if module._steerable_taps or (active is not None and (key in active.ops or key in active.probes)):
                    used = True
                else:
                    unused.append(module)
            if used:
                layer._steerable_sites_need_step = True
            if unused and (self.in_flight or self.checkpointing()):
                self.restore_pending = self.restore_pending or bool(self.in_flight)
            elif unused or not used:
                for module in unused:
                    restore(module)
                layer._steerable_sites_need_step = used


#: A forward of at most this many tokens (batch x sequence) masks a selection's adds in one op.
BATCHED_TOKENS = 256


def _batched(ops: dict[int, list[Op]], selections: list[SelectionOp]) -> tuple[Batch, ...]:
    """Stack the fixed masked adds of each unconditional selection (see ``active.Batch``); their ops, in
    ``ops``, learn their row. Adds on several devices or dtypes, or per row, stay fused multiply-adds."""
    plain = {s.index for s in selections if s.gate is None}
    found: dict[int, list[tuple[int, int]]] = {}
    for key, module_ops in ops.items():
        for position, op in enumerate(module_ops):
            if op.kind == MASKED_ADD and op.rows is None and op.live is None and op.selection in plain:
                found.setdefault(op.selection, []).append((key, position))  # type: ignore[arg-type]
    batches = []
    for selection, places in found.items():
        deltas = [ops[key][position].tensors["delta"] for key, position in places]
        first = deltas[0]
        if any(d.dtype != first.dtype or d.device != first.device or d.shape != first.shape for d in deltas):
            continue
        with torch.inference_mode(False):
            batches.append(Batch(selection, torch.stack(deltas)))
        for row, (key, position) in enumerate(places):
            ops[key][position] = dataclasses.replace(ops[key][position], batched=row)
    return tuple(batches)


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
        earlier = next((given for given, seen in resolved if seen == index), None)
        if earlier is not None:
            raise ValueError(f"layer {earlier} and layer {layer} name the same decoder layer ({index}); give it once")
        resolved.append((layer, index))
    return resolved
