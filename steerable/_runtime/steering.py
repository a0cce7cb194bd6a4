"""Applying a steering: validation, the tensors each layer gets, and the handle that removes it.

Everything is validated and computed before the model is touched, so a bad steering raises and leaves
the model as it was. Values are copied on the way in (changing the caller's tensors afterwards changes
nothing), except for tensors that require grad: those are kept, and prepared on every forward, so a
learned vector (an ``nn.Parameter``) receives gradients through the steering.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

import steerable.conditions as conditions
from steerable._runtime.layer import Probe, Slot, SteerableLayer
from steerable._runtime.state import ModelState, reference_tensor, resolve_layers
from steerable._runtime.step import PositionMode, Selection
from steerable.architectures import SITES
from steerable.chat_roles import ROLES, ChatMarkers
from steerable.operators import Operator, for_rows, resolve_operator
from steerable.vectors import SteeringVector

Multiplier = float | Tensor


@dataclass
class Plan:
    operator: Operator
    selection: Selection
    rows: int | None
    # decoder layer index -> (prepared tensors in fp32, the live (vector, multiplier) when trainable)
    layers: dict[int, tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]]


class SteeringHandle:
    """An applied steering. ``remove()`` undoes it; as a context manager it is removed on exit."""

    def __init__(self, state: ModelState, args: dict[str, Any]) -> None:
        self._state = state
        self._args = args
        self._applied: list[tuple[SteerableLayer, Slot]] = []
        self._probes: list[tuple[SteerableLayer, Probe]] = []
        self._selection: int | None = None
        self._rowwise = False
        self.active = True

    def remove(self) -> None:
        state = self._state
        with state.lock:
            if not self.active:
                return
            self.active = False
            for module, slot in reversed(self._applied):
                module.vacate(slot)
                state.refresh(module)
            if self._selection is not None:
                state.vacate_selection(self._selection)
            for module, probe in reversed(self._probes):
                state.vacate_probe(module, probe)
            if self._rowwise:
                state.rowwise -= 1
            state.handles = [h for h in state.handles if h is not self]
            state.deactivate_if_idle()

    def update(self, multiplier: Multiplier | None = None, vector: SteeringVector | None = None) -> None:
        """Change the multiplier and/or the vector's values in place.

        Shapes, layers, site and operator stay the same. The steering buffers keep their identity, so
        a ``torch.compile``d model does not recompile."""
        if not self.active:
            raise RuntimeError("this steering was removed; apply a new one with model.steer(...)")
        with torch.inference_mode(False):
            self._update(multiplier, vector)

    def _update(self, multiplier: Multiplier | None, vector: SteeringVector | None) -> None:
        vector = vector if vector is not None else self._args["vector"]
        multiplier = multiplier if multiplier is not None else self._args["multiplier"]
        old = self._args["vector"]
        if not isinstance(vector, SteeringVector) or vector.layers != old.layers or vector.site != old.site:
            raise ValueError("update keeps the layers and site: apply a new steering for other layers or sites")
        args = {**self._args, "vector": vector, "multiplier": multiplier}
        plan = make_plan(self._state, **args)
        pending: list[tuple[Tensor, Tensor]] = []
        for (module, slot), (index, (tensors, live)) in zip(self._applied, plan.layers.items(), strict=True):
            if (live is None) != (slot.live is None):
                raise ValueError("update cannot switch between trainable and fixed tensors: apply a new steering")
            for name, tensor in tensors.items():
                buffer = module._buffers[slot.names[name]]
                assert buffer is not None
                if buffer.shape != tensor.shape:
                    raise ValueError(
                        f"layer {index}: the new {name} has shape {list(tensor.shape)}, the steering "
                        f"{list(buffer.shape)}; per-row sizes must stay the same"
                    )
                pending.append((buffer, _cast(tensor, buffer.dtype, buffer.device, index)))
        with self._state.lock, torch.no_grad():
            for buffer, tensor in pending:
                buffer.copy_(tensor)
            for (_, slot), (_, live) in zip(self._applied, plan.layers.values(), strict=True):
                slot.live = live
        self._args = args

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def steer(state: ModelState, model_type: str | None, **args: Any) -> SteeringHandle:
    """Validate, then apply a steering to the model's layers; see ``SteerableModel.steer``."""
    # Steering tensors are made outside inference mode even when steer is called inside it: inference
    # tensors would break every later forward that records gradients.
    with torch.inference_mode(False):
        return _steer(state, model_type, args)


def _steer(state: ModelState, model_type: str | None, args: dict[str, Any]) -> SteeringHandle:
    plan = make_plan(state, **args)
    warn_model_mismatch(args["vector"], model_type)
    handle = SteeringHandle(state, args)
    site = args["vector"].site
    with state.lock:
        state.handles.append(handle)
        try:
            gate = None
            if plan.selection.condition is not None:
                ids = {}
                for leaf in conditions.leaves(plan.selection.condition):
                    index = resolve_layers(state, [leaf.layer])[0][1]
                    module, probe = state.occupy_probe(index, leaf.direction(), leaf.threshold, leaf)
                    handle._probes.append((module, probe))
                    ids[id(leaf)] = probe.index
                gate = _gate(plan.selection.condition, ids)
            if not plan.selection.everything:
                handle._selection = state.occupy_selection(plan.selection, gate)
            if plan.rows is not None:
                handle._rowwise = True
                state.rowwise += 1
            for index, (tensors, live) in plan.layers.items():
                module = state.site_module(index, site)
                reference = reference_tensor(module)
                device = reference.device
                dtype = reference.dtype if reference.numel() else torch.float32
                cast = {name: _cast(t, dtype, device, index) for name, t in tensors.items()}
                slot = module.occupy(plan.operator, handle._selection, cast, live)
                handle._applied.append((module, slot))
                state.refresh(module)
        except BaseException:
            handle.remove()
            raise
    return handle


def make_plan(
    state: ModelState,
    vector: SteeringVector,
    multiplier: Multiplier,
    operator: Any,
    positions: PositionMode | Tensor,
    min_token_index: int | None,
    norm_preserving: bool,
    token_indices: Any = None,
    tokenizer: Any = None,
    condition: Any = None,
    rows: Any = None,
) -> Plan:
    """Validate everything and compute every tensor before the model is touched."""
    if not isinstance(vector, SteeringVector):
        from steerable.io.other_libraries import foreign_vector_hint

        raise TypeError(f"expected a steerable.SteeringVector, got {_qualname(vector)}{foreign_vector_hint(vector)}")
    op = resolve_operator(operator, norm_preserving)
    state.check_site(vector.site)
    # the built-in sites carry the residual width; a registered custom site may have its own
    if state.hidden_size is not None and vector.site in SITES and vector.hidden_size != state.hidden_size:
        raise ValueError(
            f"the steering vector has hidden size {vector.hidden_size} but the model's is "
            f"{state.hidden_size}: it was trained for a different model"
        )
    layer_indices = dict(resolve_layers(state, vector.layers))
    m, rows_of_vector = _multiplier(multiplier, vector.rows)
    if token_indices is not None:
        if isinstance(positions, Tensor) or positions != "all":
            raise ValueError("give token_indices or positions, not both")
        positions, min_token_index = _token_indices(token_indices, min_token_index)
    selection = _selection(positions, min_token_index, rows_of_vector, tokenizer)
    if condition is not None:
        leaves = conditions.validate(condition, len(state.layers), state.hidden_size)
        deepest = max(resolve_layers(state, [leaf.layer])[0][1] for leaf in leaves)
        early = [layer for layer, index in layer_indices.items() if index < deepest]
        if early:
            raise ValueError(
                f"the behaviour steers layers {early}, before the condition is decided at layer {deepest}: "
                "a condition is decided on its layer's output, so steer layers at or after it"
            )
        selection.condition = condition
    if rows is not None:
        selection.rows = _row_mask(rows, rows_of_vector)
    trainable = m.requires_grad or any(vector[layer].requires_grad for layer in layer_indices)

    layers: dict[int, tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]] = {}
    for layer, index in layer_indices.items():
        v = vector[layer]
        if not bool(torch.isfinite(v.detach()).all()):
            raise ValueError(f"layer {layer}: the vector has non-finite values (nan or inf)")
        v_rows, m_rows = for_rows(v.detach().float(), m.detach().float().to(v.device))
        try:
            tensors = op.prepare(v_rows, m_rows)
        except ValueError as error:
            raise ValueError(f"layer {layer}: {error}") from None
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"layer {layer}: multiplier x vector overflows ({name} has inf or nan); use a smaller multiplier"
                )
        layers[index] = (tensors, (v, m) if trainable else None)
    return Plan(op, selection, rows_of_vector, layers)


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _multiplier(multiplier: Any, vector_rows: int | None) -> tuple[Tensor, int | None]:
    """The multiplier as a tensor (0-d, or one value per row) and the number of rows, validated."""
    if isinstance(multiplier, Tensor):
        if multiplier.dtype == torch.bool or not (multiplier.is_floating_point() or multiplier.dtype.is_signed):
            raise TypeError(f"a multiplier tensor must hold numbers, got {multiplier.dtype}")
        if multiplier.ndim > 1 or (multiplier.ndim == 1 and multiplier.numel() == 0):
            shape = list(multiplier.shape)
            raise ValueError(f"a multiplier tensor must be 1-D with one value per batch row, or 0-d; got shape {shape}")
        if not bool(torch.isfinite(multiplier.detach()).all()):
            raise ValueError("the multiplier has non-finite values (nan or inf)")
        m = multiplier if multiplier.requires_grad else multiplier.detach().float().clone()
    elif isinstance(multiplier, (list, tuple, np.ndarray)):  # one multiplier per row, as a tensor
        values = np.asarray(multiplier)
        if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
            raise TypeError(f"a multiplier list or array must hold numbers, got {multiplier!r}")
        return _multiplier(torch.as_tensor(values.astype(np.float32)), vector_rows)
    elif isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real):
        raise TypeError(
            f"multiplier must be a number, a list or array of numbers, or a 1-D tensor, got {type(multiplier).__name__}"
        )
    else:
        if not torch.isfinite(torch.tensor(float(multiplier))):
            raise ValueError(f"the multiplier must be finite, got {multiplier}")
        m = torch.tensor(float(multiplier))
    rows = vector_rows
    if m.ndim == 1:
        if rows is not None and m.shape[0] != rows:
            raise ValueError(f"the multiplier has {m.shape[0]} rows but the vector has {rows}: they must match")
        rows = m.shape[0]
    return m, rows


def _token_indices(indices: Any, min_token_index: int | None) -> tuple[PositionMode | Tensor, int | None]:
    """The steering-vectors library's ``token_indices`` (a list, a slice, or a 0/1 or boolean tensor,
    over token positions) as a mask over absolute positions or a ``min_token_index``."""
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


def _selection(
    positions: PositionMode | Tensor, min_token_index: int | None, rows: int | None, tokenizer: Any = None
) -> Selection:
    if isinstance(min_token_index, numbers.Integral) and not isinstance(min_token_index, bool):
        min_token_index = int(min_token_index)  # numpy integers too
    if min_token_index is not None and (
        isinstance(min_token_index, bool) or not isinstance(min_token_index, int) or min_token_index < 0
    ):
        raise ValueError(f"min_token_index must be an int >= 0, got {min_token_index!r}")
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
        return Selection("all", min_token_index, positions.detach().clone())
    if positions in ROLES:
        if tokenizer is None:
            raise ValueError(
                f"positions={positions!r} finds the turn with the tokenizer's chat template: pass tokenizer=..."
            )
        markers = ChatMarkers.from_tokenizer(tokenizer).tensors(positions)  # type: ignore[arg-type]
        return Selection(positions, min_token_index, None, markers)
    if positions not in ("all", "prompt", "generated"):
        raise ValueError(
            f"unknown positions {positions!r}: use 'all', 'prompt', 'generated', 'assistant', 'last_user_turn' "
            "or a boolean mask tensor"
        )
    return Selection(positions, min_token_index, None)


def _gate(expression: Any, ids: dict[int, int]) -> Any:
    """The rows a conditional steering applies to, from the step context's decisions."""

    def gate(gates: dict[int, Tensor]) -> Tensor:
        return conditions.evaluate(expression, gates, ids)

    return gate


def _row_mask(rows: Any, vector_rows: int | None) -> Tensor:
    """Which batch rows a per-request steering applies to, as a boolean tensor."""
    mask = torch.as_tensor(rows)
    if mask.dtype != torch.bool or mask.ndim != 1 or mask.numel() == 0:
        raise ValueError(f"rows must be a non-empty 1-D boolean mask over the batch, got {rows!r}")
    if vector_rows is not None and mask.shape[0] != vector_rows:
        raise ValueError(f"rows has {mask.shape[0]} entries but the steering has {vector_rows} rows")
    return mask


def _cast(tensor: Tensor, dtype: torch.dtype, device: torch.device, layer: int) -> Tensor:
    """``tensor`` in the layer's dtype and device; an error if the cast overflows (e.g. to fp16)."""
    cast = tensor.to(device, dtype)
    if cast.is_floating_point() and not bool(torch.isfinite(cast).all()):
        raise ValueError(
            f"layer {layer}: the steering overflows the layer's {dtype}; use a smaller multiplier or vector"
        )
    return cast


def warn_model_mismatch(vector: SteeringVector, model_type: str | None) -> None:
    if vector.model_type and model_type and vector.model_type != model_type:
        warnings.warn(
            f"this steering vector was trained on a {vector.model_type!r} model and is applied to a "
            f"{model_type!r} model",
            stacklevel=4,
        )
