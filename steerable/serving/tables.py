"""Fixed-size steering tables, and what one decoder layer's output gets from them.

Every steering of a request occupies a *slot*: per layer, a unit vector ``u``, a delta ``d``, an ablation
coefficient ``a`` and a clamp target ``c``, so that each built-in operator is one formula,
``h + (c - a * (h . u)) * u + d`` (add: a=0, c=0, d=m v; ablate: a=1, c=0, d=0; ablate_then_add: a=1,
c=0, d=m v; clamp: a=1, c=m, d=0), which is exactly the operator's own arithmetic in steerable.operators.
Slot 0 is all zeros: unsteered. Each token has up to ``MAX_STEERINGS`` slot indices (a request's
steerings, applied in order), written in place before each step, and condition gates read from a
per-request gate buffer that the condition's layer fills during the request's prefill.

When ``branchless`` (CUDA graphs replay what was captured), every layer runs the whole arithmetic for
every lane: no shape and no Python branch depends on which requests are steered. Otherwise each step's
:class:`StepPlan` says what that step needs, so a layer no steering of the step covers does nothing, and a
step whose steerings are all plain ungated adds does one gathered add per lane, as a hook would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from steerable.serving.request_spec import MAX_CONDITIONS, MAX_STEERINGS

TRUE_GATE, FALSE_GATE = 0, 1  # the two constant gates; probe rows start after them


@dataclass(frozen=True)
class StepPlan:
    """What the steerings of one step need, read by every layer of that step (never when branchless)."""

    lanes: int = 0  # steering lanes any token of the step uses
    probe_lanes: int = 0  # condition lanes any prompt token of the step feeds
    steer_layers: frozenset[int] = frozenset()  # layers a slot used by the step has a vector at
    probe_layers: frozenset[int] = frozenset()  # condition layers the step sums or decides at
    ablates: bool = False  # some slot of the step projects (ablate, ablate_then_add, clamp)
    norm_preserving: bool = False
    gated: bool = False  # some steered token of the step waits on a condition

    @property
    def additive(self) -> bool:
        return not (self.ablates or self.norm_preserving or self.gated)


IDLE = StepPlan()
FULL = StepPlan(MAX_STEERINGS, MAX_CONDITIONS, ablates=True, norm_preserving=True, gated=True)


class SteeringTables:
    """Device buffers for one model: slot tables per layer, per-token slot and gate indices, probes."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device,
        max_tokens: int,
        max_requests: int,
        branchless: bool,
    ) -> None:
        lanes, conditions = MAX_STEERINGS, MAX_CONDITIONS
        self.num_layers, self.hidden_size, self.branchless = num_layers, hidden_size, branchless
        self.num_slots = max_requests * lanes + 1
        self.num_probes = max_requests * conditions + 2
        n, p, d = self.num_slots, self.num_probes, hidden_size

        def zeros(*shape: int, kind: torch.dtype = dtype) -> Tensor:
            return torch.zeros(shape, dtype=kind, device=device)

        self.unit, self.delta = zeros(num_layers, n, d), zeros(num_layers, n, d)
        self.ablate, self.target = zeros(num_layers, n, 1), zeros(num_layers, n, 1)
        self.present = zeros(num_layers, n, 1, kind=torch.bool)  # the slot's vector has this layer
        self.norm_preserving = zeros(n, 1, kind=torch.bool)
        self.slot_of_token = zeros(lanes, max_tokens, kind=torch.long)
        self.gate_of_token = zeros(lanes, conditions, max_tokens, kind=torch.long)
        self.gate_all = torch.ones((lanes, max_tokens), dtype=torch.bool, device=device)
        self.probe_of_token = zeros(conditions, max_tokens, kind=torch.long)
        self.probe_layer = torch.full((p,), -1, dtype=torch.long, device=device)
        self.probe_direction = zeros(p, d, kind=torch.float32)
        self.probe_threshold = zeros(p, kind=torch.float32)
        self.probe_greater = torch.ones((p,), dtype=torch.bool, device=device)
        self.probe_projection = torch.ones((p,), dtype=torch.bool, device=device)
        self.probe_sum = zeros(p, d, kind=torch.float32)
        self.probe_count = torch.ones((p,), dtype=torch.float32, device=device)
        self.probe_finish = zeros(p, kind=torch.bool)
        self.gate = zeros(p, kind=torch.float32)
        self.gate[TRUE_GATE] = 1.0
        self.plan = IDLE  # this step's needs, set before each step (the CPU fast path)

    # -- the forward side --------------------------------------------------------------------------------
    def apply(self, hidden: Float[Tensor, "tokens d"], residual: Float[Tensor, "tokens d"] | None, layer: int) -> None:
        """Steer one decoder layer's output in place. Its block output is ``hidden + residual`` (vLLM's fused
        form), and only ``hidden`` is rewritten, only at steered tokens (others keep their exact bits)."""
        tokens = hidden.shape[0]
        if self.branchless:
            block = hidden if residual is None else hidden + residual
            self._decide(block, layer, tokens, MAX_CONDITIONS)
            self._steer(hidden, residual, block, layer, FULL)
            return
        plan = self.plan
        steers, decides = layer in plan.steer_layers, layer in plan.probe_layers
        general = steers and not plan.additive
        block = hidden if residual is None or not (decides or general) else hidden + residual  # once per layer
        if decides:
            self._decide(block, layer, tokens, plan.probe_lanes)
        if general:
            self._steer(hidden, residual, block, layer, plan)
        elif steers:  # the next layer adds r: (h + d) + r is the block output plus d, to rounding
            for lane in range(plan.lanes):  # unsteered tokens add slot 0's zeros
                hidden.add_(self.delta[layer].index_select(0, self.slot_of_token[lane, :tokens]))

    def _steer(self, hidden: Tensor, residual: Tensor | None, block: Tensor, layer: int, plan: StepPlan) -> None:
        tokens = hidden.shape[0]
        h = block
        steered = torch.zeros((tokens, 1), dtype=torch.bool, device=hidden.device)
        for lane in range(plan.lanes):
            h, taken = self._lane(h, layer, lane, tokens, plan)
            steered = steered | taken
        out = h if residual is None else h - residual
        hidden.copy_(torch.where(steered, out, hidden))

    def _lane(self, h: Tensor, layer: int, lane: int, tokens: int, plan: StepPlan) -> tuple[Tensor, Tensor]:
        slot = self.slot_of_token[lane, :tokens]
        steered = h
        if plan.ablates:
            unit = self.unit[layer].index_select(0, slot)
            ablate, target = self.ablate[layer].index_select(0, slot), self.target[layer].index_select(0, slot)
            projection = (h * unit).sum(-1, keepdim=True)
            steered = h + (target - ablate * projection) * unit
        steered = steered + self.delta[layer].index_select(0, slot)
        if plan.norm_preserving:
            before, after = h.norm(dim=-1, keepdim=True), steered.norm(dim=-1, keepdim=True)
            rescaled = steered * (before / after.clamp_min(torch.finfo(after.dtype).tiny))
            steered = torch.where(self.norm_preserving.index_select(0, slot), rescaled, steered)
        taken = self.present[layer].index_select(0, slot)  # [tokens, 1]; slot 0 is never present
        if plan.gated:
            gates = self.gate[self.gate_of_token[lane, :, :tokens]]  # [conditions, tokens]
            gate = torch.where(self.gate_all[lane, :tokens], gates.amin(0), gates.amax(0))
            taken = taken & (gate > 0.5).unsqueeze(-1)
        return torch.where(taken, steered, h), taken

    def _decide(self, block: Tensor, layer: int, tokens: int, probe_lanes: int) -> None:
        """Add this step's prompt tokens to their requests' sums at this layer (the unsteered output), and
        decide the conditions whose prompt ends in this step (CAST's score, as conditions.condition_scores)."""
        values = block.float()
        for lane in range(probe_lanes):
            probe = self.probe_of_token[lane, :tokens]
            take = (self.probe_layer[probe] == layer).unsqueeze(-1)
            self.probe_sum.index_add_(0, probe, torch.where(take, values, torch.zeros_like(values)))
        finish = self.probe_finish & (self.probe_layer == layer)
        mean = self.probe_sum / self.probe_count.unsqueeze(-1)
        unit = self.probe_direction
        projected = torch.tanh((mean * unit).sum(-1, keepdim=True) * unit)
        target = torch.where(self.probe_projection.unsqueeze(-1), projected, unit)
        score = torch.nn.functional.cosine_similarity(mean, target, dim=-1, eps=1e-12)
        met = torch.where(self.probe_greater, score > self.probe_threshold, score < self.probe_threshold)
        self.gate.copy_(torch.where(finish, met.float(), self.gate))


ACTIVE: SteeringTables | None = None  # this process's tables (one model per worker process)


@torch.library.custom_op("steerable_vllm::steer_block", mutates_args=("hidden",))
def steer_block(hidden: Tensor, residual: Tensor | None, layer: int) -> None:
    """One decoder layer's steering, opaque to torch.compile (its buffers are this process's tables)."""
    if ACTIVE is not None:
        ACTIVE.apply(hidden, residual, layer)


@steer_block.register_fake
def _steer_block_fake(hidden: Tensor, residual: Tensor | None, layer: int) -> None:
    return None
