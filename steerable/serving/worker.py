"""The model-runner side: steerable decoder layers, and the per-token slots written before each step.

``install(runner)`` runs after vLLM loads the model in a worker process: each decoder layer's class is
swapped for a subclass whose forward calls the original, then ``steerable_vllm::steer_block`` on its output
(one custom op, so compiled graphs keep it). ``Controller.prepare`` runs before every model step, from the
scheduler output and the runner's persistent batch: it gives each new request's steerings slots (one per
distinct vector, multiplier and operator), computes each scheduled token's absolute position
(``num_computed_tokens`` + offset: right across chunked prefill, prefix-cache hits and the recompute after
preemption), and writes the slot index of every token in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from steerable.serving import tables as tables_module
from steerable.serving.catalog import Catalog, VectorRef
from steerable.serving.request_spec import MAX_CONDITIONS, MAX_STEERINGS, ROLE_POSITIONS, ResolvedSteering
from steerable.serving.tables import FALSE_GATE, IDLE, TRUE_GATE, SteeringTables, StepPlan

SlotKey = tuple[VectorRef, float, str, bool]


@dataclass
class RequestSteering:
    """One request's steerings as the worker holds them until the request finishes."""

    steerings: list[ResolvedSteering]
    slots: list[int]
    probes: list[list[int]]  # per steering, its condition leaves' probe rows
    prompt_len: int
    summed: int = 0  # prompt tokens already added to the condition sums (never counted twice)
    decided: bool = False
    all_probes: list[int] = field(default_factory=list)
    probe_layers: frozenset[int] = frozenset()  # the layers its conditions are decided at


class StepArrays:
    """What one step writes into the tables, built on the CPU (one column per scheduled token)."""

    def __init__(self, total: int) -> None:
        self.slots = np.zeros((MAX_STEERINGS, total), dtype=np.int64)
        self.gates = np.full((MAX_STEERINGS, MAX_CONDITIONS, total), TRUE_GATE, dtype=np.int64)
        self.gate_all = np.ones((MAX_STEERINGS, total), dtype=bool)
        self.probes = np.zeros((MAX_CONDITIONS, total), dtype=np.int64)
        self.finish: list[int] = []
        self.lanes = self.probe_lanes = 0
        self.used: set[int] = set()  # slots some token of the step is steered with
        self.gated = False
        self.probe_layers: set[int] = set()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a vLLM causal LM (``model.model.layers``: Llama, Mistral, Qwen2, ...)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise RuntimeError(
            f"steerable cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)"
        )
    return layers


_CLASSES: dict[type, type] = {}


def _steered_class(base: Any) -> type:
    if base not in _CLASSES:

        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            output = base.forward(self, *args, **kwargs)
            hidden, residual = (output[0], output[1]) if isinstance(output, tuple) else (output, None)
            torch.ops.steerable_vllm.steer_block(hidden, residual, self.steerable_layer_index)
            return output

        _CLASSES[base] = type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__})
    return _CLASSES[base]


class Controller:
    """CPU-side bookkeeping of one worker: request -> slots and probe rows; the per-step token writes."""

    def __init__(self, tables: SteeringTables, catalog: Catalog, dtype: torch.dtype) -> None:
        self.tables, self.catalog, self.dtype = tables, catalog, dtype
        self.requests: dict[str, RequestSteering | None] = {}
        self.slot_refs: dict[SlotKey, tuple[int, int]] = {}  # key -> (slot, requests using it)
        self.free_slots = list(range(tables.num_slots - 1, 0, -1))
        self.free_probes = list(range(tables.num_probes - 1, FALSE_GATE, -1))
        self.slot_needs: dict[int, tuple[frozenset[int], bool, bool]] = {}  # slot -> (layers, ablates, norm)
        self.written = 0  # tokens written by the last step (to clear)

    # -- slots ------------------------------------------------------------------------------------------
    def _take_slot(self, steering: ResolvedSteering) -> int:
        key: SlotKey = (steering.vector, steering.multiplier, steering.operator, steering.norm_preserving)
        if key in self.slot_refs:
            slot, users = self.slot_refs[key]
            self.slot_refs[key] = (slot, users + 1)
            return slot
        slot = self.free_slots.pop()
        self._write_slot(slot, steering)
        self.slot_refs[key] = (slot, 1)
        return slot

    def _write_slot(self, slot: int, steering: ResolvedSteering) -> None:
        t, vector = self.tables, self.catalog.load(steering.vector)
        for table in (t.unit, t.delta, t.ablate, t.target, t.present):
            table[:, slot].zero_()
        m, op = steering.multiplier, steering.operator
        layers = frozenset(key % t.num_layers for key in vector.layers)
        self.slot_needs[slot] = (layers, op != "add", steering.norm_preserving)
        for key in vector.layers:
            layer = key % t.num_layers
            v = vector[key].float()
            t.present[layer, slot] = True
            if op != "add":
                t.unit[layer, slot] = (v / v.norm()).to(self.dtype)
                t.ablate[layer, slot] = 1.0
            if op in ("add", "ablate_then_add"):
                t.delta[layer, slot] = (m * v).to(self.dtype)
            if op == "clamp":
                t.target[layer, slot] = m
        t.norm_preserving[slot] = steering.norm_preserving

    def _take_probe(self, condition: Any, prompt_len: int) -> int:
        t, probe = self.tables, self.free_probes.pop()
        vector = self.catalog.load(condition.vector)
        key = next(k for k in vector.layers if k % t.num_layers == condition.layer)
        direction = vector[key].float()
        t.probe_direction[probe] = direction / direction.norm()
        t.probe_threshold[probe] = condition.threshold
        t.probe_greater[probe] = condition.comparator == ">"
        t.probe_projection[probe] = condition.score == "projection"
        t.probe_layer[probe] = condition.layer
        t.probe_sum[probe].zero_()
        t.probe_count[probe] = float(prompt_len)
        t.gate[probe] = 0.0  # undecided: not steered
        return probe

    def _register(self, req_id: str, runner: Any) -> RequestSteering | None:
        state = runner.requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        resolved = (params.extra_args or {}).get("steering_resolved") if params is not None else None
        if not resolved:
            return None
        steerings = [ResolvedSteering.from_json(item) for item in resolved]
        prompt_len = int(state.num_prompt_tokens)
        slots = [self._take_slot(s) for s in steerings]
        probes = [[self._take_probe(c, prompt_len) for c in s.conditions] for s in steerings]
        layers = frozenset(c.layer for s in steerings for c in s.conditions)
        every = [p for ps in probes for p in ps]
        return RequestSteering(steerings, slots, probes, prompt_len, all_probes=every, probe_layers=layers)

    def release(self, req_id: str) -> None:
        entry = self.requests.pop(req_id, None)
        if entry is None:
            return
        for steering in entry.steerings:
            key: SlotKey = (steering.vector, steering.multiplier, steering.operator, steering.norm_preserving)
            slot, users = self.slot_refs[key]
            if users == 1:
                del self.slot_refs[key]
                self.free_slots.append(slot)
            else:
                self.slot_refs[key] = (slot, users - 1)
        for probe in entry.all_probes:
            self.tables.probe_layer[probe] = -1
            self.free_probes.append(probe)

    # -- each step ------------------------------------------------------------------------------------
    def prepare(self, runner: Any, scheduler_output: Any, num_scheduled: np.ndarray) -> None:
        for req_id in scheduler_output.finished_req_ids:
            self.release(req_id)
        batch = runner.input_batch
        req_ids = list(batch.req_ids)
        for req_id in req_ids:
            if req_id not in self.requests:
                self.requests[req_id] = self._register(req_id, runner)
        entries = [(i, self.requests[r]) for i, r in enumerate(req_ids) if self.requests[r] is not None]
        t = self.tables
        total = int(num_scheduled.sum())
        if not entries:
            if self.written:
                self._clear(self.written)
            t.plan = IDLE
            return
        starts = np.concatenate([[0], np.cumsum(num_scheduled)])
        step = StepArrays(total)
        for i, entry in entries:
            assert entry is not None
            lo, hi = int(starts[i]), int(starts[i + 1])
            first = int(batch.num_computed_tokens_cpu[i])
            self._fill(step, entry, np.arange(first, first + hi - lo), lo, hi)
        self._write(total, step.slots, step.gates, step.gate_all, step.probes, step.finish)
        t.plan = self._plan(step)

    def _plan(self, step: StepArrays) -> StepPlan:
        needs = [self.slot_needs[slot] for slot in step.used]
        return StepPlan(
            lanes=step.lanes,
            probe_lanes=step.probe_lanes,
            steer_layers=frozenset().union(*(layers for layers, _, _ in needs)),
            probe_layers=frozenset(step.probe_layers),
            ablates=any(ablates for _, ablates, _ in needs),
            norm_preserving=any(norm for _, _, norm in needs),
            gated=step.gated,
        )

    @staticmethod
    def _fill(step: StepArrays, entry: RequestSteering, position: np.ndarray, lo: int, hi: int) -> None:
        """One request's tokens ``lo:hi`` (absolute positions ``position``): their slots, gates and probes."""
        step.lanes = max(step.lanes, len(entry.steerings))
        for lane, (steering, slot) in enumerate(zip(entry.steerings, entry.slots, strict=True)):
            chosen = _chosen(steering, position, entry.prompt_len)
            step.slots[lane, lo:hi] = np.where(chosen, slot, 0)
            leaves = entry.probes[lane]
            if chosen.any():
                step.used.add(slot)
                step.gated |= bool(leaves)
            if leaves:
                step.gate_all[lane, lo:hi] = steering.condition_mode == "all"
                pad = TRUE_GATE if steering.condition_mode == "all" else FALSE_GATE
                for k in range(MAX_CONDITIONS):
                    step.gates[lane, k, lo:hi] = leaves[k] if k < len(leaves) else pad
        if entry.all_probes and not entry.decided:
            # each prompt position is summed once, also when a preempted prompt is computed again
            counted = (position >= entry.summed) & (position < entry.prompt_len)
            for k, probe in enumerate(entry.all_probes):
                step.probes[k, lo:hi] = np.where(counted, probe, 0)
            step.probe_lanes = max(step.probe_lanes, len(entry.all_probes))
            step.probe_layers |= entry.probe_layers
            end = int(position[-1]) + 1
            entry.summed = max(entry.summed, min(end, entry.prompt_len))
            if end >= entry.prompt_len:
                step.finish.extend(entry.all_probes)
                entry.decided = True

    def _write(self, total: int, slots: Any, gates: Any, gate_all: Any, probes: Any, finish: list[int]) -> None:
        t = self.tables
        if self.written > total:
            self._clear(self.written)
        t.slot_of_token[:, :total].copy_(torch.from_numpy(slots))
        t.gate_of_token[:, :, :total].copy_(torch.from_numpy(gates))
        t.gate_all[:, :total].copy_(torch.from_numpy(gate_all))
        t.probe_of_token[:, :total].copy_(torch.from_numpy(probes))
        t.probe_finish.zero_()
        if finish:
            t.probe_finish[torch.tensor(finish, dtype=torch.long, device=t.probe_finish.device)] = True
        self.written = total

    def _clear(self, upto: int) -> None:
        t = self.tables
        t.slot_of_token[:, :upto].zero_()
        t.gate_of_token[:, :, :upto].fill_(TRUE_GATE)
        t.gate_all[:, :upto].fill_(True)
        t.probe_of_token[:, :upto].zero_()
        t.probe_finish.zero_()
        self.written = 0


def _chosen(steering: ResolvedSteering, position: np.ndarray, prompt_len: int) -> np.ndarray:
    """Which of these absolute positions the steering selects."""
    chosen = position >= steering.min_token_index
    if steering.positions == "prompt":
        chosen &= position < prompt_len
    elif steering.positions == "generated":
        chosen &= position >= prompt_len
    elif steering.positions in ROLE_POSITIONS:  # the role's prompt tokens; generated ones are the assistant's
        in_role = np.zeros(position.shape, dtype=bool)
        for start, end in steering.prompt_runs:
            in_role |= (position >= start) & (position < end)
        chosen &= np.where(position < prompt_len, in_role, steering.positions == "assistant")
    return chosen


CONTROLLER: Controller | None = None


def install(runner: Any) -> None:
    """Make the runner's model steerable (after it is loaded) and set up this process's tables."""
    global CONTROLLER
    config = runner.vllm_config
    text = config.model_config.hf_text_config
    layers = decoder_layers(runner.model)
    inner = runner.model.model
    local = range(getattr(inner, "start_layer", 0), getattr(inner, "end_layer", len(layers)))
    for index, layer in enumerate(layers):
        if index not in local:  # another pipeline stage's layer
            continue
        layer.__class__ = _steered_class(type(layer))
        layer.__dict__["steerable_layer_index"] = index  # a plain int attribute (torch.compile: a constant)
    from vllm.config import CUDAGraphMode

    # CUDA graphs replay whatever was captured: then every step runs the full (branch-free) arithmetic
    mode = config.compilation_config.cudagraph_mode
    branchless = getattr(runner, "use_cuda_graph", True) is not False and mode not in (None, CUDAGraphMode.NONE)
    tables = SteeringTables(
        num_layers=len(layers),
        hidden_size=int(text.hidden_size),
        dtype=config.model_config.dtype,
        device=runner.device,
        max_tokens=int(config.scheduler_config.max_num_batched_tokens),
        max_requests=int(config.scheduler_config.max_num_seqs),
        branchless=branchless,
    )
    tables_module.ACTIVE = tables
    CONTROLLER = Controller(tables, Catalog.from_env(), config.model_config.dtype)
