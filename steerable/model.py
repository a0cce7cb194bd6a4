"""SteerableModel: a Hugging Face model whose decoder layers can steer.

``SteerableModel.wrap(model)`` makes ``model`` steerable in place: its class becomes a generated
subclass of its own that also derives from ``SteerableModel`` (same class name, so ``isinstance``,
``save_pretrained``'s ``architectures`` and pipelines see the original). Parameter names never change.
See ``steerable._runtime`` for how.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn

from steerable import _runtime
from steerable._runtime.class_swap import base_class, plain_reduction
from steerable._runtime.step import LENGTHS_KWARG
from steerable.handle import RowsHandle, SteeringHandle
from steerable.per_request import steer_rows
from steerable.recording import Recording, record
from steerable.spec import Multiplier, PositionMode, Steering, token_indices_as_positions
from steerable.vectors import SteeringVector


class _Unloading:
    """For a wrapped PEFT model: ``merge_and_unload`` and ``unload`` give back the base model, fully
    steerable, with the steerings still applied (never a plain model with steerable layers)."""

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> Any:
        return _runtime.hand_over(self, self._peft_method("merge_and_unload")(*args, **kwargs), (SteerableModel,))

    def unload(self, *args: Any, **kwargs: Any) -> Any:
        return _runtime.hand_over(self, self._peft_method("unload")(*args, **kwargs), (SteerableModel,))

    def _peft_method(self, name: str) -> Any:
        # PeftModel forwards these to its tuner (LoraModel) through __getattr__, which super() skips
        method = getattr(super(), name, None)
        return method if method is not None else getattr(self.base_model, name)  # type: ignore[attr-defined]


class SteerableModel:
    """Mixin of every wrapped model. Use the class methods to get one:

    ``SteerableModel.from_pretrained(name, **hf_kwargs)``, ``SteerableModel.wrap(model)`` and
    ``SteerableModel.unwrap(model)``.

    Steering is model-global, like the weights: while a steering is applied, every forward of the
    model runs with it, in any thread. Each forward runs with the steerings in force when it started
    (applying or removing one meanwhile, in another thread, does not change a forward in flight), and
    what differs between forwards (positions, padding, prompt lengths) travels with each call.
    """

    # -- getting and giving back a steerable model ---------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Load a causal LM with ``AutoModelForCausalLM.from_pretrained`` (all kwargs pass through) and wrap it."""
        if cls is SteerableModel:
            from transformers import AutoModelForCausalLM

            loader: Any = AutoModelForCausalLM
        else:  # called on a wrapped model's class: load its original class
            loader = base_class(cls)
        return SteerableModel.wrap(loader.from_pretrained(pretrained_model_name_or_path, *args, **kwargs))

    @staticmethod
    def wrap(model: nn.Module) -> Any:
        """Make ``model`` steerable in place and return it. Wrapping twice is a no-op."""
        if isinstance(model, SteerableModel):
            return model
        mixins = (SteerableModel, _Unloading) if hasattr(model, "merge_and_unload") else (SteerableModel,)
        return _runtime.wrap(model, mixins)

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
        return _runtime.unwrap(model)

    def __reduce_ex__(self, protocol: Any) -> Any:
        """``pickle`` / ``torch.save`` store the plain model (steerings are not saved); after loading,
        ``SteerableModel.wrap(loaded)`` makes it steerable again."""
        return plain_reduction(self)  # type: ignore[arg-type]

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        """``copy.deepcopy`` gives a steerable copy with its own state, idle: steerings applied to the
        original stay with it (apply one to the copy with ``copy.steer(handle.steering)``)."""
        return SteerableModel.wrap(_runtime.plain_copy(self, memo))

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # .to(), .half(), .cuda() make new tensors: forwards from now on use the moved steering buffers
        result = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        _runtime.republish(self)
        return result

    # -- properties ------------------------------------------------------------------------------
    @property
    def steerable_layers(self) -> nn.ModuleList:
        """The decoder layers, in order."""
        return _runtime.decoder_layers(self)

    @property
    def is_steering(self) -> bool:
        return _runtime.is_steering(self)

    # -- generate: where prompt lengths come from ------------------------------------------------
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with _runtime.generating(self, args, kwargs):
            return super().generate(*args, **kwargs)  # type: ignore[misc]

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
        vector: SteeringVector | Steering,
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
        """Apply a steering now; returns a handle (also a context manager) that removes it.

        Give a :class:`~steerable.Steering`, or a vector and the steering's fields (see ``Steering`` for
        what each means). ``token_indices`` is the steering-vectors library's spelling of a selection: a
        list of positions, a slice, or a 0/1 or boolean tensor.
        """
        if isinstance(vector, Steering):
            given = {"multiplier": multiplier != 1.0, "operator": operator != "add", "positions": positions != "all"}
            extra = [name for name, set_ in given.items() if set_ is True] + [
                name
                for name, value in (("min_token_index", min_token_index), ("token_indices", token_indices))
                if value is not None
            ]
            if extra or norm_preserving or tokenizer is not None or condition is not None or rows is not None:
                raise TypeError("give a Steering alone, or a vector with keyword arguments: use spec.replace(...)")
            spec = vector
        else:
            if token_indices is not None:
                positions, min_token_index = token_indices_as_positions(token_indices, positions, min_token_index)
            spec = Steering(
                vector, multiplier, operator, positions, min_token_index, norm_preserving, condition, rows, tokenizer
            )
        _warn_model_mismatch(spec.vector, getattr(getattr(self, "config", None), "model_type", None))
        return SteeringHandle(self, spec)

    def steer_rows(self, requests: Sequence[Any]) -> RowsHandle:
        """One steering per batch row (per-request serving): ``requests[i]`` is a ``Steering``, a
        ``SteeringVector`` or None for row ``i``; see ``steerable.per_request``."""
        return steer_rows(self, requests)


def _warn_model_mismatch(vector: SteeringVector, model_type: str | None) -> None:
    if vector.model_type and model_type and vector.model_type != model_type:
        warnings.warn(
            f"this steering vector was trained on a {vector.model_type!r} model and is applied to a "
            f"{model_type!r} model",
            stacklevel=3,
        )
