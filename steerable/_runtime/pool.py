"""The slot pool: where a steering's prepared tensors are kept on a module, reused by the next steering
of the same kind.

A slot is a place on one module: the names of the buffers that hold its tensors and a signature (its
kind and shapes). Removing a steering frees its slot and drops its buffers; the next steering with the
same signature takes the same slot, so buffer names and the objects ``torch.compile`` guards on stay
the same: new steerings, and new values, do not recompile. Buffers are non-persistent: ``.to()`` /
``.half()`` and ``device_map`` move them with the module and ``state_dict()`` never sees them.

Three kinds use the pool: steerings at a layer or site (:class:`Slot`), token selections on the decoder
stack (:class:`SelectionSlot`), and conditions at a layer (:class:`Probe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import Tensor, nn

from steerable.operators import Operator


@dataclass(eq=False)
class Pooled:
    index: int
    names: dict[str, str]  # tensor field -> buffer name
    signature: tuple[Any, ...]
    active: bool = False


@dataclass(eq=False)
class Slot(Pooled):
    """One steering's place in one module."""

    operator: Operator | None = None
    selection: int | None = None  # index of the token selection it uses, None for every token
    kind: int = 2  # steerable._runtime.layer: FAST_ADD, MASKED_ADD or GENERAL


@dataclass(eq=False)
class SelectionSlot(Pooled):
    """A token selection in use, kept in buffers of the decoder stack."""

    mode: str = "all"
    gate: Any = None  # a conditional selection: its condition as a tree (steerable._runtime.conditional)


@dataclass(eq=False)
class Probe(Pooled):
    """A condition decided at a layer's output: direction, threshold and comparator sign in buffers."""

    score: str = "projection"


S = TypeVar("S", bound=Pooled)


class Pool(Generic[S]):
    """The slots of one kind (buffer names ``{prefix}_{n}_{field}``)."""

    def __init__(self, kind: type[S], prefix: str) -> None:
        self.kind = kind
        self.prefix = prefix
        self.slots: list[S] = []

    def occupy(self, owner: nn.Module, signature: tuple[Any, ...], tensors: dict[str, Tensor], **fields: Any) -> S:
        """A free slot of this signature (or a new one) holding ``tensors`` as buffers of ``owner``."""
        slot = next((s for s in self.slots if not s.active and s.signature == signature), None)
        if slot is None:
            number = len(self.slots)
            slot = self.kind(number, {f: f"{self.prefix}_{number}_{f}" for f in tensors}, signature)
            self.slots.append(slot)
        for name, value in fields.items():
            setattr(slot, name, value)
        fill(owner, slot, tensors)
        slot.active = True
        return slot

    def vacate(self, owner: nn.Module, slot: S) -> None:
        """Free ``slot``: its buffers go, the slot stays for the next steering of its kind."""
        slot.active = False
        for name in slot.names.values():
            owner._buffers.pop(name, None)


def fill(owner: nn.Module, slot: Pooled, tensors: dict[str, Tensor]) -> None:
    """Register ``tensors`` as ``slot``'s buffers. New tensor objects, never written in place: a forward
    still running (another thread, or a checkpointed layer recomputed in backward) keeps what it began with."""
    for field, tensor in tensors.items():
        owner.register_buffer(slot.names[field], tensor, persistent=False)


def tensors_of(owner: nn.Module, slot: Pooled) -> dict[str, Tensor]:
    """``slot``'s buffers as they are now (after ``.to()`` they are new tensors)."""
    found = {field: owner._buffers.get(name) for field, name in slot.names.items()}
    return {field: tensor for field, tensor in found.items() if tensor is not None}
