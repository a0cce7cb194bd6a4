"""SteerableModel: a Hugging Face model whose decoder layers can steer.

``wrap`` swaps the model's class for a generated subclass of it that also derives from
:class:`SteerableModel` (same class name, so ``isinstance``, ``save_pretrained``'s ``architectures``
and pipelines see the original), swaps each decoder layer for a steerable layer, and swaps the
decoder stack (the module that runs the layers) for one that computes each forward's positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from steerable._runtime.class_swap import original_class, plain_reduction, posing_subclass, set_class
from steerable._runtime.layer import forget
from steerable._runtime.stack import SteerableStack, stack_of
from steerable._runtime.state import ModelState
from steerable._runtime.steering import Multiplier, SteeringHandle, steer
from steerable._runtime.step import LENGTHS_KWARG, PROMPT_LENGTHS, PositionMode
from steerable.architectures import ArchitectureSpec, get_submodule, resolve_architecture
from steerable.per_request import RowsHandle, steer_rows
from steerable.recording import Recording, record
from steerable.vectors import SteeringVector


class _Unloading:
    """For a wrapped PEFT model: ``merge_and_unload`` and ``unload`` give back the base model, fully
    steerable, with the steerings still applied (never a plain model with steerable layers)."""

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> Any:
        return _hand_over(self, self._peft_method("merge_and_unload")(*args, **kwargs))

    def unload(self, *args: Any, **kwargs: Any) -> Any:
        return _hand_over(self, self._peft_method("unload")(*args, **kwargs))

    def _peft_method(self, name: str) -> Any:
        # PeftModel forwards these to its tuner (LoraModel) through __getattr__, which super() skips
        method = getattr(super(), name, None)
        return method if method is not None else getattr(self.base_model, name)  # type: ignore[attr-defined]


def _hand_over(wrapper: Any, base: nn.Module) -> Any:
    """Move the steerable state from a PEFT wrapper to the base model it returned (same layers)."""
    state = wrapper.__dict__.pop("_steerable")
    wrapper.__class__ = original_class(wrapper)
    base.__class__ = posing_subclass((SteerableModel,), type(base))
    top_forward = inspect.signature(type(base).forward).parameters.values()
    state.forward_kwargs = any(p.kind is p.VAR_KEYWORD for p in top_forward)
    base._steerable = state  # type: ignore[assignment]
    return base


class SteerableModel:
    """Mixin of every wrapped model. Use the class methods to get one:

    ``SteerableModel.from_pretrained(name, **hf_kwargs)``, ``SteerableModel.wrap(model)`` and
    ``SteerableModel.unwrap(model)``.

    Steering is model-global, like the weights: while a steering is applied, every forward of the
    model runs with it, in any thread. What differs between forwards (positions, padding, prompt
    lengths) travels with each call, so concurrent forwards never disturb each other.
    """

    _steerable: ModelState

    # -- getting and giving back a steerable model ---------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Load a causal LM with ``AutoModelForCausalLM.from_pretrained`` (all kwargs pass through) and wrap it."""
        if cls is SteerableModel:
            from transformers import AutoModelForCausalLM

            loader: Any = AutoModelForCausalLM
        else:  # called on a wrapped model's class: load its original class
            loader = cls._steerable_base  # type: ignore[attr-defined]
        return SteerableModel.wrap(loader.from_pretrained(pretrained_model_name_or_path, *args, **kwargs))

    @staticmethod
    def wrap(model: nn.Module) -> Any:
        """Make ``model`` steerable in place and return it. Wrapping twice is a no-op."""
        if isinstance(model, SteerableModel):
            return model
        spec, layers = resolve_architecture(model)
        # keep only the sites this particular model has (Falcon's parallel variant has no post-attn norm)
        present = {site: path for site, path in spec.sites.items() if get_submodule(layers[0], path) is not None}
        spec = ArchitectureSpec(spec.layers, present, spec.layer_kwargs)
        stack = stack_of(model, layers)
        stack_forward = inspect.signature(type(stack).forward)
        reach = spec.layer_kwargs and any(p.kind is p.VAR_KEYWORD for p in stack_forward.parameters.values())
        config = getattr(model, "config", None)
        text_config = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
        top_forward = inspect.signature(type(model).forward).parameters.values()
        state = ModelState(
            spec,
            layers,
            stack,
            getattr(text_config, "hidden_size", None),
            reach,
            tuple(list(stack_forward.parameters)[1:]),
            forward_kwargs=any(p.kind is p.VAR_KEYWORD for p in top_forward),
            inject=not reach,
        )
        set_class(stack, posing_subclass((SteerableStack,), type(stack)))
        stack._steerable_state = state  # type: ignore[assignment]
        mixins = (SteerableModel, _Unloading) if hasattr(model, "merge_and_unload") else (SteerableModel,)
        model.__class__ = posing_subclass(mixins, type(model))
        model._steerable = state  # type: ignore[assignment]
        return model

    @staticmethod
    def of(model: Any) -> Any:
        """The steerable model inside ``model``: ``model`` itself, or, for a PEFT model made from a
        steerable one (``get_peft_model(steerable)``), its base model. Call ``steer`` and ``record`` on it."""
        seen = model
        for _ in range(8):  # PeftModel -> LoraModel -> the model, and wrappers like it
            if isinstance(seen, SteerableModel):
                return seen
            inner = seen.get_base_model() if hasattr(seen, "get_base_model") else getattr(seen, "model", None)
            if inner is None or inner is seen:
                break
            seen = inner
        raise TypeError(f"{type(model).__name__} holds no steerable model: wrap it first with SteerableModel.wrap(...)")

    @staticmethod
    def unwrap(model: nn.Module) -> Any:
        """Remove all steering and give ``model`` back its original classes, in place; returns it."""
        if not isinstance(model, SteerableModel):
            return model
        state = model._steerable
        for handle in list(state.handles):
            handle.remove()
        state.unwrapped = True
        for layer in state.layers:
            for module in layer.modules():
                forget(module)
        for slot in state.selection_slots:
            for name in slot.names.values():
                state.stack._buffers.pop(name, None)
        state.stack.__dict__.pop("_steerable_state", None)
        set_class(state.stack, original_class(state.stack))
        del model.__dict__["_steerable"]
        model.__class__ = original_class(model)  # type: ignore[assignment]
        return model

    def __reduce_ex__(self, protocol: Any) -> Any:
        """``pickle`` / ``torch.save`` store the plain model (steerings are not saved); after loading,
        ``SteerableModel.wrap(loaded)`` makes it steerable again."""
        return plain_reduction(self)  # type: ignore[arg-type]

    # -- properties ------------------------------------------------------------------------------
    @property
    def steerable_layers(self) -> nn.ModuleList:
        """The decoder layers, in order."""
        return self._steerable.layers

    @property
    def is_steering(self) -> bool:
        return bool(self._steerable.handles)

    # -- generate: where prompt lengths come from ------------------------------------------------
    def generate(self, *args: Any, **kwargs: Any) -> Any:
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
        state = self._steerable
        # The prompt lengths go with every forward call of this generate: as a model keyword argument
        # (which transformers passes down to the decoder stack, and torch.compile traces), and in a
        # context variable for models whose forward does not pass it on.
        if state.forward_kwargs and lengths is not None:
            kwargs[LENGTHS_KWARG] = lengths
        token = PROMPT_LENGTHS.set(lengths)
        with state.lock:
            state.generating += 1
        try:
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        finally:
            with state.lock:
                state.generating -= 1
            PROMPT_LENGTHS.reset(token)

    def _validate_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        # generate rejects keyword arguments the forward does not name; the prompt lengths are ours
        mine = {k: v for k, v in model_kwargs.items() if k != LENGTHS_KWARG}
        super()._validate_model_kwargs(mine)  # type: ignore[misc]

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
        multiplier: Multiplier = 1.0,
        *,
        operator: Any = "add",
        positions: PositionMode | Tensor = "all",
        min_token_index: int | None = None,
        norm_preserving: bool = False,
        token_indices: Any = None,
        tokenizer: Any = None,
        condition: Any = None,
        rows: Any = None,
    ) -> SteeringHandle:
        """Apply ``vector`` now; returns a handle (also a context manager) that removes it.

        ``multiplier``: a number, a 0-d tensor, or a 1-D tensor (list, array) with one value per batch row; tensors
        that require grad stay live (trainable steering).
        ``operator``: ``add``, ``ablate``, ``ablate_then_add``, ``clamp``, a registered name, an
        ``Operator``, or a callable ``(hidden, multiplier * vector) -> delta`` (see ``steerable.operators``).
        ``positions``: ``"all"``, ``"prompt"``, ``"generated"``, a chat role (``"assistant"``,
        ``"last_user_turn"``, found with ``tokenizer``'s chat template; see ``steerable.chat_roles``), or a
        boolean mask ``[rows, prompt_len]`` (or ``[prompt_len]``) over absolute token positions.
        ``min_token_index``: only tokens at this absolute position (counted from each row's first
        non-padding token) or later. ``multiplier`` may also be a list or NumPy array (one per row).
        ``token_indices``: the steering-vectors library's spelling of a selection: a list of positions,
        a slice, or a 0/1 or boolean tensor.
        ``condition``: a ``steerable.conditions.Condition`` (or several joined with ``&`` / ``|``): only
        rows whose prompt meets it are steered (conditional steering, CAST). ``rows``: a boolean mask
        over the batch rows: only those are steered (see also ``steer_rows``).
        """
        return steer(
            self._steerable,
            getattr(getattr(self, "config", None), "model_type", None),
            vector=vector,
            multiplier=multiplier,
            operator=operator,
            positions=positions,
            min_token_index=min_token_index,
            norm_preserving=norm_preserving,
            token_indices=token_indices,
            tokenizer=tokenizer,
            condition=condition,
            rows=rows,
        )

    def steer_rows(self, requests: Sequence[Any]) -> RowsHandle:
        """One steering per batch row (per-request serving): ``requests[i]`` is a ``RowSteering``, a
        ``SteeringVector`` or None for row ``i``; see ``steerable.per_request``."""
        return steer_rows(self, requests)
