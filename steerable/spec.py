"""``Steering``: one steering as one frozen value — what (a vector and an operator), how much (the
multiplier), where (token positions, batch rows) and when (a condition on the prompt).

Every entry point builds one and the runtime consumes it: ``model.steer(vector, 2.0, positions=...)``
builds a ``Steering`` from its arguments, ``model.steer(spec)`` takes one, ``steer_rows`` takes one per
row, a handle keeps the one it applied (``handle.steering``) and ``handle.update(**changes)`` applies
``spec.replace(**changes)``; the CLI and a serving request build them from plain dicts
(:meth:`Steering.from_dict`). Everything that can be checked without a model is checked here, once, when
the value is made; what needs the model (layer range, hidden size, the site) is checked when it is
applied.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from steerable import conditions
from steerable.chat_roles import ROLES, ChatMarkers
from steerable.operators import OPERATORS, Operator, resolve_operator
from steerable.vectors import SteeringVector

PositionMode = Literal["all", "prompt", "generated", "assistant", "last_user_turn"]
POSITION_MODES: tuple[str, ...] = ("all", "prompt", "generated", *ROLES)
Multiplier = float | Tensor
#: a vector named in a dict: the name it is registered under, or a file path
VectorSource = Mapping[str, SteeringVector] | Callable[[str], SteeringVector] | None


@dataclass(frozen=True, eq=False)
class Steering:
    """One steering (see the module). The arguments mean what they mean in ``model.steer``:

    ``multiplier``: a number, a 0-d tensor, or one value per batch row (1-D tensor, list, array);
    tensors that require grad stay live (trainable steering). ``operator``: ``add``, ``ablate``,
    ``ablate_then_add``, ``clamp``, a registered name, an ``Operator`` or a callable
    ``(hidden, multiplier * vector) -> delta``. ``positions``: ``"all"``, ``"prompt"``,
    ``"generated"``, a chat role (``"assistant"``, ``"last_user_turn"``, found with ``tokenizer``'s chat
    template), or a boolean mask ``[rows, prompt_len]`` / ``[prompt_len]`` over absolute positions.
    ``min_token_index``: only tokens at this absolute position or later. ``condition``: a ``Condition``
    (or several joined with ``&`` / ``|``): only rows whose prompt meets it. ``rows``: a boolean mask
    over the batch rows: only those are steered.
    """

    vector: SteeringVector
    multiplier: Multiplier = 1.0
    operator: str | Operator | Callable[[Tensor, Tensor], Tensor] = "add"
    positions: PositionMode | Tensor = "all"
    min_token_index: int | None = None
    norm_preserving: bool = False
    condition: Any = None
    rows: Tensor | None = None
    tokenizer: Any = field(default=None, repr=False)
    #: the chat role's turn markers (from ``tokenizer``), or None
    markers: dict[str, Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_vector(self.vector)
        set_ = object.__setattr__
        set_(self, "multiplier", checked_multiplier(self.multiplier, self.vector.rows))
        resolve_operator(self.operator, self.norm_preserving)  # an unknown operator fails here, not at apply
        set_(self, "min_token_index", _min_token_index(self.min_token_index))
        set_(self, "positions", _positions(self.positions, self.row_count))
        if isinstance(self.positions, str) and self.positions in ROLES:
            if self.tokenizer is None:
                raise ValueError(
                    f"positions={self.positions!r} finds the turn with the tokenizer's chat template: "
                    "pass tokenizer=... (the model's tokenizer)"
                )
            set_(self, "markers", ChatMarkers.from_tokenizer(self.tokenizer).tensors(self.positions))  # type: ignore[arg-type]
        if self.condition is not None:
            conditions.validate(self.condition)
        if self.rows is not None:
            set_(self, "rows", _row_mask(self.rows, self.row_count))

    # -- what it is ---------------------------------------------------------------------------
    @property
    def row_count(self) -> int | None:
        """The number of batch rows the steering is written for (per-row vectors or multipliers), or None."""
        m = self.multiplier
        if isinstance(m, Tensor) and m.ndim == 1:
            return int(m.shape[0])
        return self.vector.rows

    @property
    def resolved_operator(self) -> Operator:
        return resolve_operator(self.operator, self.norm_preserving)

    @property
    def trainable(self) -> bool:
        """Whether the multiplier or a layer's vector requires grad (then gradients reach them)."""
        m = self.multiplier
        return (isinstance(m, Tensor) and m.requires_grad) or any(v.requires_grad for _, v in self.vector.items())

    @property
    def everywhere(self) -> bool:
        """Every token of every row, unconditionally."""
        return (
            isinstance(self.positions, str)
            and self.positions == "all"
            and self.min_token_index is None
            and self.rows is None
            and self.condition is None
        )

    def replace(self, **changes: Any) -> Steering:
        """A copy with ``changes`` (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self) if f.init}
        if unknown:
            raise TypeError(f"Steering has no field {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    # -- plain dicts (CLI, serving requests) ---------------------------------------------------
    def to_dict(self, names: Mapping[str, SteeringVector] | None = None) -> dict[str, Any]:
        """A JSON-able dict; vectors are named by ``names`` (``{name: vector}``, matched by identity) or by
        the file they were loaded from. Keys left at their defaults are omitted."""
        out: dict[str, Any] = {"vector": _vector_ref(self.vector, names)}
        m = self.multiplier
        if isinstance(m, Tensor):
            if m.requires_grad:
                raise ValueError("a trainable multiplier cannot be written to a dict: detach it first")
            out["multiplier"] = float(m) if m.ndim == 0 else [float(x) for x in m]
        elif m != 1.0:
            out["multiplier"] = float(m)
        if self.operator != "add":
            out["operator"] = _operator_name(self.operator)
        if isinstance(self.positions, Tensor):
            out["positions"] = self.positions.tolist()
        elif self.positions != "all":
            out["positions"] = self.positions
        if self.min_token_index is not None:
            out["min_token_index"] = self.min_token_index
        if self.norm_preserving:
            out["norm_preserving"] = True
        if self.condition is not None:
            out["condition"] = conditions.to_dict(self.condition, lambda v: _vector_ref(v, names))
        if self.rows is not None:
            out["rows"] = self.rows.tolist()
        return out

    def to_request(self, names: Mapping[str, SteeringVector] | None = None) -> dict[str, Any]:
        """The entry of a serving request's steering list: :meth:`to_dict` without ``rows`` (a request
        is one row)."""
        if self.rows is not None or self.row_count is not None:
            raise ValueError("a request steers one sequence: give a steering without per-row rows or values")
        return self.to_dict(names)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], vectors: VectorSource = None, *, allow_paths: bool = True, tokenizer: Any = None
    ) -> Steering:
        """The steering ``data`` describes (as :meth:`to_dict` writes it). ``vectors`` resolves vector names
        (a ``{name: SteeringVector}`` mapping or a function); with ``allow_paths`` other strings are read as
        vector files (``.safetensors`` or ``.gguf``). ``tokenizer`` serves role positions."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a steering must be given as a dict, got {type(data).__name__}")
        known = {"vector", "multiplier", "operator", "positions", "min_token_index", "norm_preserving"}
        unknown = set(data) - known - {"condition", "rows"}
        if unknown:
            raise ValueError(f"unknown steering keys {sorted(unknown)}: use {sorted(known | {'condition', 'rows'})}")
        if "vector" not in data:
            raise ValueError("a steering needs 'vector': a vector name or file path")
        find = _vector_finder(vectors, allow_paths)
        kwargs: dict[str, Any] = {k: data[k] for k in known - {"vector"} if k in data}
        if isinstance(kwargs.get("positions"), list):
            kwargs["positions"] = torch.tensor(kwargs["positions"], dtype=torch.bool)
        if isinstance(kwargs.get("multiplier"), list):
            kwargs["multiplier"] = torch.tensor(kwargs["multiplier"], dtype=torch.float32)
        if data.get("condition") is not None:
            kwargs["condition"] = conditions.from_dict(data["condition"], find)
        if data.get("rows") is not None:
            kwargs["rows"] = torch.tensor(data["rows"], dtype=torch.bool)
        return cls(find(data["vector"]), tokenizer=tokenizer, **kwargs)


# -- validation -----------------------------------------------------------------------------------
def _check_vector(vector: Any) -> None:
    if isinstance(vector, SteeringVector):
        return
    if type(vector).__name__ == "SteeringVector" and hasattr(vector, "layer_activations"):
        raise TypeError(
            "this is a steering_vectors.SteeringVector (the seed library's): convert it with "
            "steerable.SteeringVector.from_steering_vectors(vector)"
        )
    from steerable.io.other_libraries import foreign_vector_hint

    raise TypeError(f"expected a SteeringVector, got {type(vector).__name__}{foreign_vector_hint(vector)}")


def checked_multiplier(multiplier: Any, vector_rows: int | None) -> Multiplier:
    """A number as a float, anything per row as a float32 tensor, a tensor that requires grad as given;
    an error for anything else, or for non-finite values."""
    if isinstance(multiplier, Tensor):
        if multiplier.dtype == torch.bool or not (multiplier.is_floating_point() or multiplier.dtype.is_signed):
            raise TypeError(f"a multiplier tensor must hold numbers, got {multiplier.dtype}")
        if multiplier.ndim > 1 or (multiplier.ndim == 1 and multiplier.numel() == 0):
            shape = list(multiplier.shape)
            raise ValueError(f"a multiplier tensor must be 1-D with one value per batch row, or 0-d; got shape {shape}")
        if not bool(torch.isfinite(multiplier.detach()).all()):
            raise ValueError("the multiplier has non-finite values (nan or inf): give finite numbers")
        if multiplier.ndim == 1 and vector_rows is not None and multiplier.shape[0] != vector_rows:
            raise ValueError(
                f"the multiplier has {multiplier.shape[0]} rows but the vector has {vector_rows}: they must match"
            )
        return multiplier if multiplier.requires_grad else multiplier.detach().float().clone()
    if isinstance(multiplier, (list, tuple, np.ndarray)):
        values = np.asarray(multiplier)
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
            raise TypeError(f"a multiplier list or array must hold numbers, got {multiplier!r}")
        return checked_multiplier(torch.as_tensor(values.astype(np.float32)), vector_rows)
    if isinstance(multiplier, (bool, np.bool_)) or not isinstance(multiplier, numbers.Real):
        raise TypeError(
            f"multiplier must be a number, a list or array of numbers, or a tensor, got {type(multiplier).__name__} "
            f"{multiplier!r}"
        )
    if not math.isfinite(float(multiplier)):
        raise ValueError(f"the multiplier must be finite, got {multiplier}")
    return float(multiplier)


def _min_token_index(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"min_token_index must be an int >= 0, got {value!r}")
    return int(value)


def _positions(positions: Any, rows: int | None) -> PositionMode | Tensor:
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or positions.ndim not in (1, 2) or positions.shape[-1] == 0:
            raise ValueError(
                "a token mask must be a non-empty boolean tensor of shape [rows, prompt_len] or "
                f"[prompt_len], got {positions.dtype} of shape {list(positions.shape)}"
            )
        if positions.device.type == "meta":
            raise ValueError("the token mask is on the meta device: give a mask with values")
        if positions.ndim == 2 and rows is not None and positions.shape[0] != rows:
            raise ValueError(f"the token mask has {positions.shape[0]} rows but the steering has {rows}")
        return positions.detach().clone()
    if not isinstance(positions, str) or positions not in POSITION_MODES:
        raise ValueError(
            f"unknown positions {positions!r}: use {', '.join(map(repr, POSITION_MODES))} or a boolean mask"
        )
    return positions  # type: ignore[return-value]


def _row_mask(rows: Any, count: int | None) -> Tensor:
    mask = torch.as_tensor(rows)
    if mask.dtype != torch.bool or mask.ndim != 1 or mask.numel() == 0:
        raise ValueError(f"rows must be a non-empty 1-D boolean mask over the batch, got {rows!r}")
    if count is not None and mask.shape[0] != count:
        raise ValueError(f"rows has {mask.shape[0]} entries but the steering has {count} rows")
    return mask.detach().clone()


def token_indices_as_positions(
    indices: Any, positions: Any = "all", min_token_index: int | None = None
) -> tuple[PositionMode | Tensor, int | None]:
    """The steering-vectors library's ``token_indices`` (a list, a slice, or a 0/1 or boolean tensor,
    over token positions) as a mask over absolute positions or a ``min_token_index``."""
    if isinstance(positions, Tensor) or positions != "all":
        raise ValueError("give token_indices or positions, not both")
    if isinstance(indices, slice):
        start, stop, step = indices.start or 0, indices.stop, indices.step or 1
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, step)) or start < 0 or step < 1:
            raise ValueError(f"token_indices {indices}: use a slice with a start >= 0 and a step >= 1")
        if stop is None:
            if step != 1:
                raise ValueError(f"token_indices {indices}: an open-ended slice cannot have a step")
            return "all", max(start, min_token_index or 0)
        if not isinstance(stop, int) or stop < 0:
            raise ValueError(f"token_indices {indices}: the stop must be an int >= 0 (positions count from the start)")
        indices = list(range(start, stop, step))
    if isinstance(indices, (list, tuple)):
        if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
            raise ValueError(
                f"token_indices must be non-negative ints (positions from each row's first token), got {indices!r}"
            )
        mask = torch.zeros(max(indices) + 1, dtype=torch.bool)
        mask[list(indices)] = True
        return mask, min_token_index
    if isinstance(indices, Tensor):
        if indices.dtype != torch.bool:  # 0/1 masks of any dtype (the seed's docs build them with torch.zeros)
            if not bool(((indices == 0) | (indices == 1)).all()):
                raise ValueError("a token_indices tensor must be boolean or hold only 0 and 1")
            indices = indices != 0
        return indices, min_token_index
    raise TypeError(f"token_indices must be a list, a slice or a tensor, got {type(indices).__name__}")


# -- names of vectors and operators in dicts -------------------------------------------------------
def _vector_ref(vector: SteeringVector, names: Mapping[str, SteeringVector] | None) -> str:
    for name, known in (names or {}).items():
        if known is vector:
            return name
    source = getattr(vector, "source", None)
    if source is not None:
        return str(source)
    raise ValueError(
        "this vector has no name: pass names={'name': vector} (the names the server or CLI knows it by), "
        "or save it and load it from its file"
    )


def _operator_name(operator: Any) -> str:
    if isinstance(operator, str):
        return operator
    for name, known in OPERATORS.items():
        if known is operator or getattr(known, "fn", None) is operator:
            return name
    raise ValueError("this operator is not registered: register it with register_operator(name, op) to name it")


def _vector_finder(vectors: VectorSource, allow_paths: bool) -> Callable[[Any], SteeringVector]:
    def find(ref: Any) -> SteeringVector:
        if isinstance(ref, SteeringVector):
            return ref
        if not isinstance(ref, str) or not ref:
            raise TypeError(f"a vector is named by a string (a name or a file path), got {ref!r}")
        if isinstance(vectors, Mapping) and ref in vectors:
            return vectors[ref]
        if callable(vectors) and not isinstance(vectors, Mapping):
            return vectors(ref)
        if allow_paths and Path(ref).suffix in (".safetensors", ".gguf"):
            return SteeringVector.from_gguf(ref) if ref.endswith(".gguf") else SteeringVector.load(ref)
        known = ", ".join(sorted(vectors)) if isinstance(vectors, Mapping) else ""
        raise KeyError(f"unknown vector {ref!r}" + (f": known vectors are {known}" if known else ""))

    return find
