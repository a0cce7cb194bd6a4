"""The vLLM plugin's per-layer arithmetic (steerable.serving.tables and the worker's per-step writes), without
vLLM: one prefill step of several requests, each with its own steering, through every layer. The CPU path
(each step's plan: plain adds gathered, layers no steering covers skipped) and the branch-free path a CUDA
graph replays must both give each token exactly what steerable's own operators give that token; unsteered
tokens and layers keep their bits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from steerable import SteeringVector
from steerable.operators import for_rows, resolve_operator
from steerable.serving.catalog import VectorRef
from steerable.serving.request_spec import ResolvedCondition, ResolvedSteering
from steerable.serving.tables import SteeringTables
from steerable.serving.worker import Controller

LAYERS, HIDDEN = 4, 16


class Vectors:
    """The catalog's one method the worker uses: a vector by its reference."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.vectors = {
            name: SteeringVector({layer: torch.randn(HIDDEN, generator=generator) for layer in layers})
            for name, layers in (("a", [1, 2]), ("b", [2]), ("c", [0, 3]))
        }

    def load(self, ref: VectorRef) -> SteeringVector:
        return self.vectors[ref.path]


def ref(name: str) -> VectorRef:
    return VectorRef(name, 0, 0, 0)


def condition(threshold: float) -> ResolvedCondition:
    return ResolvedCondition(ref("c"), layer=0, threshold=threshold, comparator=">", score="cosine")


REQUESTS: dict[str, list[ResolvedSteering]] = {
    "plain": [],
    "add": [ResolvedSteering(ref("a"), 3.0)],
    "add twice": [ResolvedSteering(ref("a"), 2.0), ResolvedSteering(ref("b"), -1.5)],
    "prompt tail": [ResolvedSteering(ref("b"), 4.0, min_token_index=2)],
    "ablate": [ResolvedSteering(ref("a"), 1.0, operator="ablate")],
    "ablate_then_add": [ResolvedSteering(ref("b"), 2.5, operator="ablate_then_add")],
    "clamp": [ResolvedSteering(ref("a"), 0.75, operator="clamp", norm_preserving=True)],
    "met": [ResolvedSteering(ref("a"), 3.0, conditions=(condition(-1.0),))],  # a cosine is always > -1
    "unmet": [ResolvedSteering(ref("a"), 3.0, conditions=(condition(1.0),))],  # and never > 1
}
PROMPT = 5


def runner(names: list[str]) -> Any:
    requests = {
        name: SimpleNamespace(
            sampling_params=SimpleNamespace(extra_args={"steering_resolved": [s.to_json() for s in REQUESTS[name]]}),
            num_prompt_tokens=PROMPT,
        )
        for name in names
    }
    batch = SimpleNamespace(req_ids=names, num_computed_tokens_cpu=np.zeros(len(names), dtype=np.int64))
    return SimpleNamespace(requests=requests, input_batch=batch)


def expected(block: torch.Tensor, name: str, layer: int, vectors: Vectors) -> torch.Tensor:
    """One request's prompt at one layer, through steerable's own operators (None: unchanged)."""
    out = block
    for steering in REQUESTS[name]:
        vector = vectors.load(steering.vector)
        if layer not in vector.layers or name == "unmet":
            continue
        op = resolve_operator(steering.operator, steering.norm_preserving)
        tensors = op.prepare(*for_rows(vector[layer], torch.tensor(steering.multiplier)))
        steered = op.apply(out[None], tensors, None)[0]
        chosen = (torch.arange(PROMPT) >= steering.min_token_index).unsqueeze(-1)
        out = torch.where(chosen, steered, out)
    return out


@pytest.mark.parametrize("branchless", [False, True], ids=["each step's plan", "branch-free (CUDA graphs)"])
@pytest.mark.parametrize("names", [list(REQUESTS), ["plain", "add", "add twice", "prompt tail"]], ids=["all", "adds"])
def test_each_token_gets_what_steerables_operators_give_it(branchless: bool, names: list[str]) -> None:
    vectors = Vectors()
    tables = SteeringTables(LAYERS, HIDDEN, torch.float32, torch.device("cpu"), 64, 16, branchless)
    controller = Controller(tables, vectors, torch.float32)  # type: ignore[arg-type]
    scheduled = np.full(len(names), PROMPT)
    controller.prepare(runner(names), SimpleNamespace(finished_req_ids=set()), scheduled)
    if not branchless and names != list(REQUESTS):
        assert tables.plan.additive and tables.plan.steer_layers == {1, 2}  # plain adds, two layers
    generator = torch.Generator().manual_seed(1)
    for layer in range(LAYERS):
        hidden = torch.randn(len(names) * PROMPT, HIDDEN, generator=generator)
        residual = torch.randn(len(names) * PROMPT, HIDDEN, generator=generator)
        before = hidden.clone()
        tables.apply(hidden, residual, layer)
        for i, name in enumerate(names):
            rows = slice(i * PROMPT, (i + 1) * PROMPT)
            block = before[rows] + residual[rows]
            want = expected(block, name, layer, vectors)
            got = hidden[rows] + residual[rows]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name} at layer {layer}")
            unchanged = (want == block).all(-1)
            assert torch.equal(hidden[rows][unchanged], before[rows][unchanged]), f"{name} at layer {layer}"
    met, unmet = (controller.requests[n] for n in ("met", "unmet")) if "met" in names else (None, None)
    if met is not None and unmet is not None:
        assert tables.gate[met.all_probes[0]] == 1.0 and tables.gate[unmet.all_probes[0]] == 0.0


def test_a_step_without_steered_tokens_touches_no_layer() -> None:
    """A decode step of a request steered only on its prompt plans nothing: no layer does any work."""
    tables = SteeringTables(LAYERS, HIDDEN, torch.float32, torch.device("cpu"), 64, 16, False)
    controller = Controller(tables, Vectors(), torch.float32)  # type: ignore[arg-type]
    REQUESTS["prompt only"] = [ResolvedSteering(ref("a"), 3.0, positions="prompt")]
    try:
        step = runner(["prompt only"])
        controller.prepare(step, SimpleNamespace(finished_req_ids=set()), np.array([PROMPT]))
        assert tables.plan.steer_layers == {1, 2}
        step.input_batch.num_computed_tokens_cpu[:] = PROMPT  # the first generated token
        controller.prepare(step, SimpleNamespace(finished_req_ids=set()), np.array([1]))
        assert tables.plan.steer_layers == frozenset() and tables.plan.lanes == 1
    finally:
        del REQUESTS["prompt only"]
