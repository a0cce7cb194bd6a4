"""SteerableModel: a Hugging Face model whose decoder layers can steer, and the steering handle.

``wrap`` swaps the model's class for a generated subclass of it that also derives from
:class:`SteerableModel` (same class name, so ``isinstance``, ``save_pretrained``'s ``architectures``
and pipelines see the original), and swaps each decoder layer for a steerable layer.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from steerable.architectures import SITES, ArchitectureSpec, get_submodule, resolve_architecture
from steerable.layers import LayerSteering, SteerableLayer, make_steerable, restore, with_signature
from steerable.operators import OPERATORS
from steerable.positions import PositionMode, Runtime, TokenSelection, past_length
from steerable.recording import Recording, record
from steerable.vectors import SteeringVector

_model_classes: dict[type, type] = {}


@dataclass(eq=False)
class _State:
    spec: ArchitectureSpec
    layers: nn.ModuleList
    runtime: Runtime
    hidden_size: int | None
    arg_names: tuple[str, ...]  # positional parameter names of the original forward
    handles: list[SteeringHandle] = field(default_factory=list)


class SteeringHandle:
    """An applied steering. ``remove()`` undoes it; as a context manager it is removed on exit."""

    def __init__(
        self, model: SteerableModel, applied: list[tuple[SteerableLayer, LayerSteering]], uses_positions: bool
    ):
        self._model = model
        self._applied = applied
        self._uses_positions = uses_positions
        self._args: dict[str, Any] = {}
        self.active = True

    def remove(self) -> None:
        if not self.active:
            return
        self.active = False
        state = self._model._steerable
        for module, op in reversed(self._applied):
            module.remove_steering(op)
            state_release(state, module)  # site modules are steerable only while used: idle costs nothing
        if self._uses_positions:
            state.runtime.position_users -= 1
        state.handles = [h for h in state.handles if h is not self]

    def update(self, multiplier: float | Tensor | None = None, vector: SteeringVector | None = None) -> None:
        """Change the multiplier and/or the vector's values in place.

        Shapes, layers, site and operator must stay the same. The steering buffers keep their identity,
        so a ``torch.compile``d model does not recompile.
        """
        if not self.active:
            raise RuntimeError("this steering was removed; apply a new one with model.steer(...)")
        vector = vector if vector is not None else self._args["vector"]
        multiplier = multiplier if multiplier is not None else self._args["multiplier"]
        if vector.layers != self._args["vector"].layers or vector.site != self._args["vector"].site:
            raise ValueError("update keeps the layers and site: apply a new steering for other layers or sites")
        args = {**self._args, "vector": vector, "multiplier": multiplier}
        plan = _plan(self._model._steerable, **args)
        pending = []
        for (module, op), (index, tensors) in zip(self._applied, plan.tensors.items(), strict=True):
            for field_name, tensor in tensors.items():
                buffer = module._buffers[getattr(op, field_name)]
                assert buffer is not None
                if buffer.shape != tensor.shape:
                    raise ValueError(
                        f"layer {index}: the new {field_name} has shape {list(tensor.shape)}, the steering "
                        f"{list(buffer.shape)}; per-row sizes must stay the same"
                    )
                pending.append((buffer, tensor))
        with torch.no_grad():
            for buffer, tensor in pending:
                buffer.copy_(tensor)
        self._args = args

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class SteerableModel:
    """Mixin of every wrapped model. Use the class methods to get one:

    ``SteerableModel.from_pretrained(name, **hf_kwargs)``, ``SteerableModel.wrap(model)`` and
    ``SteerableModel.unwrap(model)``.
    """

    _steerable: _State

    # -- getting and giving back a steerable model ---------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Load a causal LM with ``AutoModelForCausalLM.from_pretrained`` (all kwargs pass through) and wrap it."""
        if cls is SteerableModel:
            from transformers import AutoModelForCausalLM

            loader: Any = AutoModelForCausalLM
        else:  # called on a wrapped model's class: load its original class
            loader = cls._steerable_original  # type: ignore[attr-defined]
        return SteerableModel.wrap(loader.from_pretrained(pretrained_model_name_or_path, *args, **kwargs))

    @staticmethod
    def wrap(model: nn.Module) -> Any:
        """Make ``model`` steerable in place and return it. Wrapping twice is a no-op."""
        if isinstance(model, SteerableModel):
            return model
        spec, layers = resolve_architecture(model)
        # keep only the sites this particular model has (Falcon's parallel variant has no post-attn norm)
        present = {site: path for site, path in spec.sites.items() if get_submodule(layers[0], path) is not None}
        spec = ArchitectureSpec(spec.layers, present)
        runtime = Runtime()
        for layer in layers:
            make_steerable(layer, runtime)
        base = type(model)
        if base not in _model_classes:
            namespace: dict[str, Any] = {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "_steerable_original": base,
                "forward": with_signature(SteerableModel.forward, base.forward),
            }
            if hasattr(base, "generate"):
                namespace["generate"] = with_signature(SteerableModel.generate, base.generate)
            _model_classes[base] = type(base.__name__, (SteerableModel, base), namespace)
        config = getattr(model, "config", None)
        text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
        hidden_size = getattr(text_config, "hidden_size", None)
        arg_names = tuple(list(inspect.signature(base.forward).parameters)[1:])
        model._steerable = _State(spec, layers, runtime, hidden_size, arg_names)  # type: ignore[assignment]
        model.__class__ = _model_classes[base]
        return model

    @staticmethod
    def unwrap(model: nn.Module) -> Any:
        """Remove all steering and give ``model`` back its original classes, in place; returns it."""
        if not isinstance(model, SteerableModel):
            return model
        state = model._steerable
        for handle in list(state.handles):
            handle.remove()
        for layer in state.layers:
            restore(layer)
        del model.__dict__["_steerable"]
        model.__class__ = type(model)._steerable_original  # type: ignore[attr-defined]
        return model

    # -- properties ------------------------------------------------------------------------------
    @property
    def steerable_layers(self) -> nn.ModuleList:
        """The decoder layers, in order."""
        return self._steerable.layers

    @property
    def is_steering(self) -> bool:
        return bool(self._steerable.handles)

    # -- forward and generate: where positions come from ----------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        state = self._steerable
        if state.runtime.position_users == 0:
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        inputs = dict(zip(state.arg_names, args, strict=False)) | kwargs
        cache = inputs.get("cache", inputs.get("past_key_values"))
        state.runtime.begin(inputs.get("attention_mask"), past_length(cache))
        try:
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        finally:
            state.runtime.end()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        runtime = self._steerable.runtime
        ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        embeds = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        lengths: Tensor | None = None
        if isinstance(mask, Tensor) and mask.ndim == 2:
            lengths = mask.long().sum(-1)
        elif isinstance(ids, Tensor) and ids.ndim == 2:
            pad = getattr(getattr(self, "generation_config", None), "pad_token_id", None)
            eos = getattr(getattr(self, "generation_config", None), "eos_token_id", None)
            eos_ids = eos if isinstance(eos, list) else [eos]
            if isinstance(pad, int) and pad not in eos_ids and bool((ids == pad).any()):
                lengths = (ids != pad).long().sum(-1)  # as generate infers the mask from padding
            else:
                lengths = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        elif isinstance(embeds, Tensor):
            lengths = torch.full((embeds.shape[0],), embeds.shape[1], device=embeds.device)
        previous, runtime.prompt_lengths = runtime.prompt_lengths, lengths
        try:
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        finally:
            runtime.prompt_lengths = previous

    # -- recording -----------------------------------------------------------------------------
    def record(
        self,
        layers: list[int] | range | None = None,
        site: str = "block",
        positions: list[int] | None = None,
        to_cpu: bool = False,
    ) -> AbstractContextManager[Recording]:
        """Context manager recording ``site`` activations of ``layers``; see ``steerable.recording.record``."""
        return record(self, layers, site, positions, to_cpu)

    # -- steering ------------------------------------------------------------------------------
    def steer(
        self,
        vector: SteeringVector,
        multiplier: float | Tensor = 1.0,
        *,
        operator: str = "add",
        positions: PositionMode | Tensor = "all",
        min_token_index: int | None = None,
        norm_preserving: bool = False,
    ) -> SteeringHandle:
        """Apply ``vector`` now; returns a handle (also a context manager) that removes it.

        ``multiplier``: a number, or a 1-D tensor with one value per batch row.
        ``operator``: ``add``, ``ablate``, ``ablate_then_add`` or ``clamp`` (see ``steerable.operators``).
        ``positions``: ``"all"``, ``"prompt"``, ``"generated"``, or a boolean mask ``[rows, prompt_len]``
        (or ``[prompt_len]``) over absolute token positions. ``min_token_index``: only tokens at this
        absolute position (counted from each row's first non-padding token) or later.
        """
        state = self._steerable
        plan = _plan(state, vector, multiplier, operator, positions, min_token_index, norm_preserving)
        warn_model_mismatch(vector, getattr(getattr(self, "config", None), "model_type", None))
        applied: list[tuple[SteerableLayer, LayerSteering]] = []
        handle = SteeringHandle(self, applied, uses_positions=not plan.selection.everything)
        handle._args = dict(
            vector=vector,
            multiplier=multiplier,
            operator=operator,
            positions=positions,
            min_token_index=min_token_index,
            norm_preserving=norm_preserving,
        )
        if handle._uses_positions:  # registered first, so remove() undoes exactly this on failure
            state.runtime.position_users += 1
        state.handles.append(handle)
        try:
            for layer_index, tensors in plan.tensors.items():
                module = site_module(state, layer_index, vector.site)
                reference = _reference_tensor(module)
                op = LayerSteering(operator, plan.selection, norm_preserving)
                module.add_steering(op, {k: t.to(reference.device, reference.dtype) for k, t in tensors.items()})
                applied.append((module, op))
        except BaseException:
            handle.remove()
            raise
        return handle


@dataclass
class _Plan:
    selection: TokenSelection
    tensors: dict[int, dict[str, Tensor]]  # layer index -> buffer name -> tensor (fp32, on CPU/any)


def _plan(
    state: _State,
    vector: SteeringVector,
    multiplier: float | Tensor,
    operator: str,
    positions: PositionMode | Tensor,
    min_token_index: int | None,
    norm_preserving: bool,
) -> _Plan:
    """Validate everything and compute every tensor before the model is touched."""
    if not isinstance(vector, SteeringVector):
        raise TypeError(f"expected a SteeringVector, got {type(vector).__name__}")
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}: use one of {', '.join(OPERATORS)}")
    if vector.site not in SITES:
        raise ValueError(f"unknown site {vector.site!r}: use one of {', '.join(SITES)}")
    if vector.site != "block" and vector.site not in state.spec.sites:
        available = ", ".join(["block", *state.spec.sites])
        raise ValueError(f"site {vector.site!r} is not available for this architecture; available: {available}")
    if state.hidden_size is not None and vector.hidden_size != state.hidden_size:
        raise ValueError(
            f"the steering vector has hidden size {vector.hidden_size} but the model's is "
            f"{state.hidden_size}: it was trained for a different model"
        )
    layer_indices = dict(resolve_layers(state, vector.layers))

    rows = vector.rows
    if isinstance(multiplier, Tensor):
        if multiplier.ndim == 0:
            multiplier = float(multiplier)
        elif multiplier.ndim != 1 or multiplier.numel() == 0:
            raise ValueError(
                f"a multiplier tensor must be 1-D with one value per batch row, got shape {list(multiplier.shape)}"
            )
        elif rows is not None and multiplier.shape[0] != rows:
            raise ValueError(
                f"the multiplier has {multiplier.shape[0]} rows but the vector has {rows}: they must match"
            )
    elif isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
        raise TypeError(f"multiplier must be a number or a 1-D tensor, got {type(multiplier).__name__}")
    if isinstance(multiplier, Tensor):
        if not bool(torch.isfinite(multiplier).all()):
            raise ValueError("the multiplier has non-finite values (nan or inf)")
        rows = multiplier.shape[0]
    elif not torch.isfinite(torch.tensor(float(multiplier))):
        raise ValueError(f"the multiplier must be finite, got {multiplier}")

    selection = _selection(positions, min_token_index, rows)
    if norm_preserving not in (True, False):
        raise TypeError("norm_preserving must be a bool")

    tensors: dict[int, dict[str, Tensor]] = {}
    for layer, index in layer_indices.items():
        v = vector[layer].detach().float()
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"layer {layer}: the vector has non-finite values (nan or inf)")
        m = multiplier.detach().float().to(v.device) if isinstance(multiplier, Tensor) else float(multiplier)
        per_row = isinstance(m, Tensor) or v.ndim == 2
        if per_row:  # [rows, 1, d] and [rows, 1, 1] broadcast over the sequence
            v = v.reshape(-1, 1, v.shape[-1]) if v.ndim == 2 else v.reshape(1, 1, -1)
            if isinstance(m, Tensor):
                m = m.reshape(-1, 1, 1)
        # per-row tensors get one row per batch row, so the layer can check them against the batch
        fit = (lambda t: t.expand(rows, 1, t.shape[-1]).contiguous()) if per_row else (lambda t: t)
        entry: dict[str, Tensor] = {}
        if operator in ("add", "ablate_then_add"):
            entry["delta"] = fit(m * v)
        if operator != "add":
            norm = v.norm(dim=-1, keepdim=True)
            if bool((norm == 0).any()):
                raise ValueError(f"layer {layer}: cannot {operator} along a zero vector")
            entry["unit"] = fit(v / norm)
        if operator == "clamp":
            entry["target"] = fit(m if isinstance(m, Tensor) else torch.tensor(m))
        tensors[index] = entry
    return _Plan(selection, tensors)


def resolve_layers(state: _State, layers: list[int]) -> list[tuple[int, int]]:
    """(as given, index into the layer list) for each layer; negative indices count from the end."""
    n_layers = len(state.layers)
    resolved: list[tuple[int, int]] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise IndexError(
                f"layer {layer} is out of range: the model has {n_layers} decoder layers "
                f"(use 0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
            )
        index = layer % n_layers
        if any(index == seen for _, seen in resolved):
            raise ValueError(f"layer {layer} and layer {index} name the same decoder layer; give it once")
        resolved.append((layer, index))
    return resolved


def _selection(positions: PositionMode | Tensor, min_token_index: int | None, rows: int | None) -> TokenSelection:
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
        if positions.ndim == 2 and rows is not None and positions.shape[0] != rows:
            raise ValueError(f"the token mask has {positions.shape[0]} rows but the steering has {rows}")
        return TokenSelection("all", min_token_index, positions.detach())
    if positions not in ("all", "prompt", "generated"):
        raise ValueError(f"unknown positions {positions!r}: use 'all', 'prompt', 'generated' or a boolean mask tensor")
    return TokenSelection(positions, min_token_index, None)


def state_release(state: _State, module: SteerableLayer) -> None:
    """Give a site module its own class back once nothing steers or records there (idle costs nothing)."""
    if not any(module is layer for layer in state.layers) and module.is_idle:
        restore(module)


def site_module(state: _State, layer_index: int, site: str) -> SteerableLayer:
    """The steerable module of ``site`` in decoder layer ``layer_index`` (swapped in on first use)."""
    layer = state.layers[layer_index]
    if site != "block" and site not in state.spec.sites:
        available = ", ".join(["block", *state.spec.sites])
        raise ValueError(f"site {site!r} is not available for this architecture; available: {available}")
    if site == "block":
        assert isinstance(layer, SteerableLayer)
        return layer
    module = get_submodule(layer, state.spec.sites[site])
    if module is None:
        raise ValueError(
            f"site {site!r} ({state.spec.sites[site]}) does not exist in decoder layer {layer_index} of this model"
        )
    return make_steerable(module, state.runtime)


def _reference_tensor(module: nn.Module) -> Tensor:
    """A floating-point parameter or buffer of ``module``: its device and dtype are the layer's.

    Offloaded weights (accelerate) sit on the meta device; then the steering stays in fp32 on the
    CPU and the forward moves it to wherever the hidden states are."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta":
            return tensor
    return torch.empty(0)


def warn_model_mismatch(vector: SteeringVector, model_type: str | None) -> None:
    if vector.model_type and model_type and vector.model_type != model_type:
        warnings.warn(
            f"this steering vector was trained on a {vector.model_type!r} model and is applied to a "
            f"{model_type!r} model",
            stacklevel=3,
        )
