"""Operators: what a steering does to the hidden states of the tokens it selects.

An operator is one object with two steps. ``prepare(vector, multiplier)`` turns the steering vector and
multiplier into the tensors it needs (computed once per ``steer``, or once per forward when they
require grad); ``apply(hidden, tensors, mask)`` steers the hidden states, only where ``mask`` is True.
Per-row steering is handled by shapes alone: ``vector`` is ``[rows, 1, d]`` (``rows`` is 1 for one
vector for every row) and ``multiplier`` is ``[rows, 1, 1]``, so prepared tensors broadcast over the
sequence.

Built in: ``add`` adds ``multiplier * v``; ``ablate`` removes the component along ``v``;
``ablate_then_add`` removes it, then adds ``multiplier * v``; ``clamp`` sets the component along
``v / |v|`` to ``multiplier`` (in activation units). Any operator can be made norm-preserving.
:func:`register_operator` adds your own, either an :class:`Operator` or a plain
``(hidden, multiplier * vector) -> delta`` callable (the steering-vectors library's convention).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

Tensors = dict[str, Tensor]
Mask = Bool[Tensor, "batch seq 1"]


def select(
    mask: Mask | None, steered: Float[Tensor, "batch seq d_model"], hidden: Float[Tensor, "batch seq d_model"]
) -> Float[Tensor, "batch seq d_model"]:
    """``steered`` where ``mask`` is True (everywhere when it is None), ``hidden`` elsewhere."""
    return steered if mask is None else torch.where(mask, steered, hidden)


class Operator:
    """Base class of operators. Subclasses set ``name`` and implement ``prepare`` and ``apply``."""

    name: str = "operator"

    def prepare(self, vector: Float[Tensor, "rows 1 d_model"], multiplier: Float[Tensor, "rows 1 1"]) -> Tensors:
        raise NotImplementedError

    def apply(self, hidden: Float[Tensor, "batch seq d_model"], tensors: Tensors, mask: Mask | None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


def for_rows(
    vector: Float[Tensor, "*rows d_model"], multiplier: Float[Tensor, "*rows"]
) -> tuple[Float[Tensor, "rows 1 d_model"], Float[Tensor, "rows 1 1"]]:
    """The shapes operators take: ``[rows, 1, d]`` and ``[rows, 1, 1]`` (rows is 1 unless per row)."""
    vector = rearrange(vector, "d -> 1 1 d") if vector.ndim == 1 else rearrange(vector, "rows d -> rows 1 d")
    multiplier = rearrange(multiplier, "-> 1 1 1") if multiplier.ndim == 0 else rearrange(multiplier, "r -> r 1 1")
    return vector, multiplier


def _unit(vector: Float[Tensor, "rows 1 d_model"]) -> Float[Tensor, "rows 1 d_model"]:
    # scaled by its largest entry first: the squares of a tiny vector (1e-30 per entry) underflow to a zero norm
    scale = vector.abs().amax(dim=-1, keepdim=True)
    if not torch.compiler.is_compiling() and bool((scale == 0).any()):
        raise ValueError("cannot project onto a zero vector: give a non-zero steering vector")
    scaled = vector / scale
    return scaled / scaled.norm(dim=-1, keepdim=True)


class Add(Operator):
    name = "add"

    def prepare(self, vector: Tensor, multiplier: Tensor) -> Tensors:
        return {"delta": multiplier * vector}

    def apply(self, hidden: Tensor, tensors: Tensors, mask: Mask | None) -> Tensor:
        if mask is None:
            return hidden + tensors["delta"]  # the common case: one add, nothing else
        return torch.where(mask, hidden + tensors["delta"], hidden)


class Ablate(Operator):
    name = "ablate"

    def prepare(self, vector: Tensor, multiplier: Tensor) -> Tensors:
        return {"unit": _unit(vector)}

    def apply(self, hidden: Tensor, tensors: Tensors, mask: Mask | None) -> Tensor:
        unit = tensors["unit"]
        return select(mask, hidden - (hidden * unit).sum(-1, keepdim=True) * unit, hidden)


class AblateThenAdd(Operator):
    name = "ablate_then_add"

    def prepare(self, vector: Tensor, multiplier: Tensor) -> Tensors:
        return {"unit": _unit(vector), "delta": multiplier * vector}

    def apply(self, hidden: Tensor, tensors: Tensors, mask: Mask | None) -> Tensor:
        unit = tensors["unit"]
        ablated = hidden - (hidden * unit).sum(-1, keepdim=True) * unit
        return select(mask, ablated + tensors["delta"], hidden)


class Clamp(Operator):
    name = "clamp"

    def prepare(self, vector: Tensor, multiplier: Tensor) -> Tensors:
        return {"unit": _unit(vector), "target": multiplier.clone()}  # the projection's target value

    def apply(self, hidden: Tensor, tensors: Tensors, mask: Mask | None) -> Tensor:
        unit = tensors["unit"]
        projection = (hidden * unit).sum(-1, keepdim=True)
        return select(mask, hidden + (tensors["target"] - projection) * unit, hidden)


class Delta(Operator):
    """A plain callable ``fn(hidden, multiplier * vector) -> delta``; the token becomes ``hidden + delta``.

    ``hidden`` is ``[batch, seq, d_model]`` and the scaled vector ``[rows, 1, d_model]`` (rows is 1 unless
    the steering is per row), so elementwise code broadcasts."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"an operator must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "callable"))

    def prepare(self, vector: Tensor, multiplier: Tensor) -> Tensors:
        return {"scaled": multiplier * vector}

    def apply(self, hidden: Tensor, tensors: Tensors, mask: Mask | None) -> Tensor:
        delta = self.fn(hidden, tensors["scaled"])
        if not isinstance(delta, Tensor) or not _broadcasts_to(delta, hidden):
            got = list(delta.shape) if isinstance(delta, Tensor) else type(delta).__name__
            raise ValueError(
                f"operator {self.name!r} returned {got}; it must return a delta that broadcasts to the hidden "
                f"states {list(hidden.shape)}"
            )
        return select(mask, hidden + delta, hidden)

    # the same function is the same operator: a new steering with it reuses the layers' steering slots
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Delta) and other.fn is self.fn

    def __hash__(self) -> int:
        return hash((Delta, id(self.fn)))


def _broadcasts_to(tensor: Tensor, target: Tensor) -> bool:
    try:
        return torch.broadcast_shapes(tensor.shape, target.shape) == target.shape
    except RuntimeError:
        return False


class NormPreserving(Operator):
    """``inner``, then each steered token rescaled back to the norm it had before steering."""

    def __init__(self, inner: Operator) -> None:
        self.inner = inner
        self.name = f"{inner.name} (norm-preserving)"

    def prepare(self, vector: Tensor, multiplier: Tensor) -> Tensors:
        return self.inner.prepare(vector, multiplier)

    def apply(self, hidden: Tensor, tensors: Tensors, mask: Mask | None) -> Tensor:
        steered = self.inner.apply(hidden, tensors, None)
        before = hidden.norm(dim=-1, keepdim=True)
        after = steered.norm(dim=-1, keepdim=True)
        return select(mask, steered * (before / after.clamp_min(torch.finfo(after.dtype).tiny)), hidden)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NormPreserving) and other.inner == self.inner

    def __hash__(self) -> int:
        return hash((NormPreserving, self.inner))


OPERATORS: dict[str, Operator] = {op.name: op for op in (Add(), Ablate(), AblateThenAdd(), Clamp())}


def register_operator(name: str, operator: Operator | Callable[[Tensor, Tensor], Tensor]) -> Operator:
    """Register ``operator`` under ``name`` so that ``model.steer(..., operator=name)`` finds it.

    ``operator`` is an :class:`Operator`, or a callable ``(hidden, multiplier * vector) -> delta``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"an operator name must be a non-empty string, got {name!r}")
    if name in ("add", "ablate", "ablate_then_add", "clamp"):
        raise ValueError(f"{name!r} is a built-in operator; register yours under another name")
    op = operator if isinstance(operator, Operator) else Delta(operator, name)
    OPERATORS[name] = op
    return op


def resolve_operator(operator: Any, norm_preserving: bool = False) -> Operator:
    """The :class:`Operator` for a name, an Operator or a callable."""
    if isinstance(operator, str):
        if operator not in OPERATORS:
            raise ValueError(
                f"unknown operator {operator!r}: use one of {', '.join(OPERATORS)}, an Operator, or a "
                "callable (hidden, multiplier * vector) -> delta"
            )
        op = OPERATORS[operator]
    elif isinstance(operator, Operator):
        op = operator
    elif callable(operator):
        op = Delta(operator)
    else:
        raise TypeError(f"operator must be a name, an Operator or a callable, got {type(operator).__name__}")
    if norm_preserving not in (True, False):
        raise TypeError("norm_preserving must be a bool")
    return NormPreserving(op) if norm_preserving else op
