"""Role positions in a serving request (steerable.serving.roles, without vLLM): the prompt runs the
frontend writes are exactly steerable.chat_roles' mask for that prompt; a server without a usable chat
template refuses the request by name."""

from __future__ import annotations

import pytest
import torch
import transformers

from steerable.chat_roles import role_positions
from steerable.serving.catalog import SteeringSpecError, VectorRef
from steerable.serving.request_spec import ResolvedSteering
from steerable.serving.roles import RoleFinder, runs
from steerable.testing import smollm2_path
from steerable.testing.tiny_models import tiny_tokenizer


def test_runs_are_the_true_stretches_of_a_mask() -> None:
    mask = torch.tensor([False, True, True, False, True, False, False, True])
    assert runs(mask) == ((1, 3), (4, 5), (7, 8))
    assert runs(torch.zeros(3, dtype=torch.bool)) == ()


@pytest.mark.parametrize("role", ["assistant", "last_user_turn"])
def test_the_prompt_runs_are_chat_roles_mask(role: str) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_path())
    conversation = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
    ]
    prompt = list(
        tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)["input_ids"]
    )
    steerings = [ResolvedSteering(VectorRef("v", 0, 0, 0), positions=role), ResolvedSteering(VectorRef("w", 0, 0, 0))]
    resolved = RoleFinder().resolve(steerings, prompt, tokenizer)
    want = role_positions(tokenizer, torch.tensor([prompt]), role)[0]  # type: ignore[arg-type]
    got = torch.zeros(len(prompt), dtype=torch.bool)
    for start, end in resolved[0].prompt_runs:
        got[start:end] = True
    assert torch.equal(got, want) and bool(want.any())
    assert resolved[1] == steerings[1]  # other position modes are left as they are


def test_a_role_without_a_chat_template_or_tokenizer_is_refused_by_name() -> None:
    steering = [ResolvedSteering(VectorRef("v", 0, 0, 0), positions="assistant")]
    with pytest.raises(SteeringSpecError, match="positions 'assistant': role positions .* has none"):
        RoleFinder().resolve(steering, [1, 2, 3], tiny_tokenizer())
    with pytest.raises(SteeringSpecError, match="runs without one"):
        RoleFinder().resolve(steering, [1, 2, 3], None)
