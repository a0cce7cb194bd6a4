"""The active set: every steering, condition and token selection in force, as one immutable value.

Each change (``steer``, ``remove``, ``update``, moving the model with ``.to()``) publishes a new one
under the model's lock; a forward takes the one in force when it enters the decoder stack and carries it
with its step context to every layer. So a forward sees one consistent set of steerings, whatever other
threads apply or remove meanwhile, and a layer recomputed by gradient checkpointing in backward sees
exactly what its forward saw (the step context travels with the checkpointed call), even if the
steering was updated or removed in between. Tensors are never written in place (see ``pool.fill``), so
the tensors a set holds stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from steerable.operators import Operator


@dataclass(frozen=True, eq=False)
class Op:
    """One steering at one module."""

    operator: Operator
    selection: int | None  # the token selection's index, None for every token
    kind: int  # FAST_ADD, MASKED_ADD or GENERAL (steerable._runtime.layer)
    tensors: dict[str, Tensor]  # prepared, in the module's dtype and device
    live: tuple[Tensor, Tensor] | None  # trainable: the caller's (vector, multiplier), prepared per forward
    rows: int | None  # per-row: tensors with this many rows match the batch (in generate, its prompts)


@dataclass(frozen=True, eq=False)
class ProbeOp:
    """One condition decided at one module's output."""

    index: int  # the decision's key in the step context
    score: str
    direction: Tensor  # float32 bits (int32): a model's .to(bfloat16) does not round it
    threshold: Tensor  # float64 bits (int64)
    sign: Tensor  # +1 for '>', -1 for '<'


@dataclass(frozen=True, eq=False)
class SelectionOp:
    """One token selection: which tokens (and rows) the steerings that use it apply to."""

    index: int
    mode: str
    tensors: dict[str, Tensor]
    gate: Any = None  # a conditional selection's condition tree (steerable._runtime.conditional)


@dataclass(frozen=True, eq=False)
class Active:
    ops: dict[int, tuple[Op, ...]] = field(default_factory=dict)  # module key -> its steerings, in order
    probes: dict[int, tuple[ProbeOp, ...]] = field(default_factory=dict)
    selections: tuple[SelectionOp, ...] = ()

    @property
    def needs_positions(self) -> bool:
        """Whether forwards must compute token positions (selections and conditions read them)."""
        return bool(self.selections) or bool(self.probes)
