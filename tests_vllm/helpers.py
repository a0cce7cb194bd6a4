"""Shared by the vLLM tests: a tiny Llama on disk, vectors, the HF reference (SteerableModel.generate)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from steerable import SteerableModel, SteeringVector
from steerable.conditions import AllOf, AnyOf, Condition
from steerable.testing.tiny_models import tiny_config, tiny_tokenizer

NEW_TOKENS = 16
HIDDEN = 64


def tiny_llama(seed: int = 0) -> Any:
    """steerable.testing's tiny Llama with heads of 32 dimensions (vLLM's CPU attention needs >= 32)."""
    import transformers

    torch.manual_seed(seed)
    config = tiny_config("llama")
    config.hidden_size, config.intermediate_size = HIDDEN, 128
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 32
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.15)
    return model.float().eval()


def save_tiny_llama(directory: Path) -> Path:
    """The tiny random Llama with its tokenizer, in HF format (fast to start)."""
    model = tiny_llama()
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def random_vector(layers: list[int], hidden: int, seed: int, scale: float = 1.0) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(hidden, generator=generator) * scale for layer in layers})


def reference_tokens(model: Any, prompt: list[int], steerings: list[Any], vectors: dict[str, Any]) -> list[int]:
    """Greedy tokens of SteerableModel.generate for one prompt alone, with ``steerings`` (request dicts naming
    ``vectors``, or steerable.Steering specs) applied in order."""
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    ids = torch.tensor([prompt])
    with contextlib.ExitStack() as stack:
        for spec in steerings:
            if not isinstance(spec, dict):  # a steerable.Steering
                stack.enter_context(SteerableModel.of(model).steer(spec))
                continue
            kwargs: dict[str, Any] = {
                k: spec[k] for k in ("operator", "positions", "min_token_index", "norm_preserving") if k in spec
            }
            if "condition" in spec:
                kwargs["condition"] = to_condition(spec["condition"], vectors)
            stack.enter_context(
                SteerableModel.of(model).steer(vectors[spec["vector"]], spec.get("multiplier", 1.0), **kwargs)
            )
        model.generation_config.eos_token_id = None  # generate all NEW_TOKENS, as vLLM's ignore_eos does
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    tokens = out[0, len(prompt) :].tolist()
    assert len(tokens) == NEW_TOKENS, "the reference stopped early"
    return tokens


def to_condition(data: dict[str, Any], vectors: dict[str, Any]) -> Any:
    for key, kind in (("all_of", AllOf), ("any_of", AnyOf)):
        if key in data:
            return kind(tuple(to_condition(part, vectors) for part in data[key]))
    return Condition(
        vectors[data["vector"]],
        data["layer"],
        data["threshold"],
        data.get("comparator", ">"),
        data.get("score", "projection"),
    )


def with_paths(steerings: list[dict[str, Any]], files: dict[str, Path]) -> list[dict[str, Any]]:
    """The same steerings naming vector files (the offline contract accepts paths)."""

    def fix(item: dict[str, Any]) -> dict[str, Any]:
        out = dict(item, vector=str(files[item["vector"]]))
        if "condition" in item:
            out["condition"] = fix_condition(item["condition"])
        return out

    def fix_condition(data: dict[str, Any]) -> dict[str, Any]:
        for key in ("all_of", "any_of"):
            if key in data:
                return {key: [fix_condition(p) for p in data[key]]}
        return dict(data, vector=str(files[data["vector"]]))

    return [fix(s) for s in steerings]


def as_json(steerings: list[dict[str, Any]]) -> str:
    return json.dumps(steerings)
