"""``generate``: where each row's prompt length comes from, and how it reaches every forward of the call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from steerable._runtime.state import ModelState
from steerable._runtime.step import LENGTHS_KWARG, PROMPT_LENGTHS


def prompt_lengths(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """Each prompt row's length, from the attention mask, or from padding as generate infers the mask."""
    ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    embeds = kwargs.get("inputs_embeds")
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.ndim == 2:
        return mask.long().sum(-1)
    if isinstance(ids, Tensor) and ids.ndim == 2:
        config = getattr(model, "generation_config", None)
        pad, eos = getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)
        eos_ids = eos if isinstance(eos, list) else [eos]
        if isinstance(pad, int) and pad not in eos_ids and bool((ids == pad).any()):
            return (ids != pad).long().sum(-1)
        return torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
    if isinstance(embeds, Tensor):
        return torch.full((embeds.shape[0],), embeds.shape[1], device=embeds.device)
    return None


@contextmanager
def generating(state: ModelState, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[None]:
    """For the duration of one ``generate`` call: the prompt lengths go with every forward, as a model
    keyword argument (which transformers passes down to the decoder stack, and torch.compile traces) and
    in a context variable for models whose forward does not pass it on. Never as a keyword argument when
    another model takes part (assisted generation would hand it to the assistant)."""
    lengths = prompt_lengths(model, args, kwargs)
    if state.forward_kwargs and lengths is not None and kwargs.get("assistant_model") is None:
        # in a tuple: generate repeats tensor arguments for beams and num_return_sequences, and the
        # lengths stay one per prompt (layers repeat per-prompt values to the batch themselves)
        kwargs[LENGTHS_KWARG] = (lengths,)
    token = PROMPT_LENGTHS.set(lengths)
    with state.lock:
        state.generating += 1
    try:
        yield
    finally:
        with state.lock:
            state.generating -= 1
        PROMPT_LENGTHS.reset(token)
