"""Conditional steering in the runtime: the probes that decide a condition at its layer, and the gate
that turns the decisions into the rows a steering applies to.

A condition expression is installed as one probe per leaf (its direction, threshold and comparator in
buffers; see ``pool.Probe``) and a gate tree of plain tuples: ``("leaf", probe index)``,
``("all", (...))``, ``("any", (...))``. Nothing a forward reads is the user's ``Condition`` object, so a
compiled model guards only on the tree's shape: a new condition of the same shape (another threshold,
direction or comparator) runs the same graph.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerable import conditions
from steerable._runtime.active import ProbeOp

Tree = tuple[Any, ...]


def tree(expression: conditions.Expression, probe_of: dict[int, int]) -> Tree:
    """The gate tree of ``expression``; ``probe_of`` maps id(leaf) to its probe's index."""
    if isinstance(expression, conditions.Condition):
        return ("leaf", probe_of[id(expression)])
    kind = "all" if isinstance(expression, conditions.AllOf) else "any"
    return (kind, tuple(tree(part, probe_of) for part in expression.parts))


def evaluate(gate: Tree, decisions: dict[int, Tensor]) -> Bool[Tensor, " batch"]:
    """The rows that meet the gate, from each probe's decision."""
    if gate[0] == "leaf":
        return decisions[gate[1]]
    values = [evaluate(part, decisions) for part in gate[1]]
    out = values[0]
    for value in values[1:]:
        out = out & value if gate[0] == "all" else out | value
    return out


def probe_tensors(leaf: conditions.Condition, device: torch.device) -> dict[str, Tensor]:
    """A condition's buffers. Kept as the bits of float32 / float64 in integer tensors: casting the
    model (``.to(torch.bfloat16)``, ``.half()``) casts floating buffers and would round the threshold
    onto a different side of a score."""
    direction = leaf.direction().float().contiguous()
    threshold = torch.tensor(float(leaf.threshold), dtype=torch.float64)
    return {
        "direction": direction.view(torch.int32).to(device),
        "threshold": threshold.view(torch.int64).to(device),
        "sign": torch.tensor(1 if leaf.comparator == ">" else -1, dtype=torch.int8, device=device),
    }


def decision(
    probe: ProbeOp, hidden: Float[Tensor, "batch seq d_model"], prompt: Bool[Tensor, "batch seq"]
) -> Bool[Tensor, " batch"]:
    """Each row's decision on its prompt tokens: scores in float32, compared in float64."""
    direction = probe.direction.view(torch.float32).to(hidden.device)
    scores = conditions.condition_scores(hidden, prompt, direction, probe.score)  # type: ignore[arg-type]
    threshold = probe.threshold.view(torch.float64).to(hidden.device)
    return conditions.met_signed(scores, threshold, probe.sign.to(hidden.device))
