"""SmolLM2-135M-Instruct (fp32), enforce_eager: in one mixed batch each steered request gets the greedy tokens
of SteerableModel.generate for its prompt alone (16 tokens) with logprobs close, and unsteered requests get
exactly the tokens of vLLM without steering."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GenerationConfig

from steerable import SteerableModel
from steerable.testing.smollm2 import smollm2_path
from tests_vllm.helpers import NEW_TOKENS, random_vector

PROMPTS = [
    "Tell me about your day.",
    "What do you think of the new park?",
    "Write one sentence about the sea.",
    "How should I learn to cook?",
    "Describe a cat.",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM

    path = smollm2_path()
    root = tmp_path_factory.mktemp("smol")
    vectors = {f"v{i}": random_vector([3 + i, 8 + i], 576, 100 + i, 0.4) for i in range(4)}
    files = {}
    for name, vector in vectors.items():
        files[name] = root / f"{name}.safetensors"
        vector.save(files[name])
    llm = LLM(
        str(path),
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        max_num_seqs=8,
        gpu_memory_utilization=0.3,
        kv_cache_memory_bytes=256 << 20,
        seed=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = SteerableModel.wrap(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
    return {"llm": llm, "hf": hf, "tokenizer": tokenizer, "vectors": vectors, "files": files}


def _hf(setup: dict[str, Any], prompt: list[int], spec: dict[str, Any] | None) -> tuple[list[int], list[float]]:
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    ids = torch.tensor([prompt])
    model = setup["hf"]
    positions = spec.get("positions", "all") if spec else "all"
    tokenizer = setup["tokenizer"] if positions in ("assistant", "last_user_turn") else None
    handle = (
        model.steer(setup["vectors"][spec["vector"]], spec["multiplier"], positions=positions, tokenizer=tokenizer)
        if spec
        else None
    )
    model.generation_config.eos_token_id = None  # generate all NEW_TOKENS, as vLLM's ignore_eos does
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        if handle is not None:
            handle.remove()
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, tokens, strict=False)]
    return tokens, logprobs


def test_mixed_batch_matches_hf_per_request(setup: dict[str, Any]) -> None:
    from vllm import SamplingParams

    tokenizer = setup["tokenizer"]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    specs: list[dict[str, Any] | None] = [
        {"vector": "v0", "multiplier": 4.0},
        None,
        {"vector": "v1", "multiplier": -4.0},
        {"vector": "v2", "multiplier": 4.0, "positions": "generated"},
        None,
        {"vector": "v3", "multiplier": 6.0},
    ]

    def params(spec: dict[str, Any] | None) -> Any:
        extra = {"steering": [dict(spec, vector=str(setup["files"][spec["vector"]]))]} if spec else None
        return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=0, extra_args=extra)

    llm = setup["llm"]
    plain = llm.generate([{"prompt_token_ids": p} for p in prompts], [params(None)] * len(prompts), use_tqdm=False)
    mixed = llm.generate([{"prompt_token_ids": p} for p in prompts], [params(s) for s in specs], use_tqdm=False)
    changed = 0
    for prompt, spec, out, base in zip(prompts, specs, mixed, plain, strict=False):
        tokens = list(out.outputs[0].token_ids)
        if spec is None:
            assert tokens == list(base.outputs[0].token_ids)
            continue
        expected, expected_logprobs = _hf(setup, prompt, spec)
        assert tokens == expected, spec
        got = [step[t].logprob for step, t in zip(out.outputs[0].logprobs, tokens, strict=False)]
        assert max(abs(a - b) for a, b in zip(got, expected_logprobs, strict=False)) < 2e-2
        changed += tokens != list(base.outputs[0].token_ids)
    assert changed >= 3, "the steering should change what most steered requests say"


def test_role_positions_are_found_in_each_prompt_from_the_chat_template(setup: dict[str, Any]) -> None:
    """positions="assistant" steers the assistant's earlier turns in the prompt and every generated token;
    "last_user_turn" only the request being answered: each equals SteerableModel.generate with the tokenizer."""
    from vllm import SamplingParams

    tokenizer = setup["tokenizer"]
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": "Gladly."}, {"role": "user", "content": q}]
        for p, q in zip(PROMPTS[:3], PROMPTS[3:], strict=True)
    ]
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    specs = [
        {"vector": "v0", "multiplier": 6.0, "positions": "assistant"},
        {"vector": "v1", "multiplier": 8.0, "positions": "last_user_turn"},
        {"vector": "v2", "multiplier": -6.0, "positions": "assistant"},
    ]
    params = [
        SamplingParams(
            max_tokens=NEW_TOKENS,
            temperature=0.0,
            ignore_eos=True,
            extra_args={"steering": [dict(spec, vector=str(setup["files"][spec["vector"]]))]},
        )
        for spec in specs
    ]
    outs = setup["llm"].generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    plain = setup["llm"].generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True),
        use_tqdm=False,
    )
    changed = 0
    for prompt, spec, out, base in zip(prompts, specs, outs, plain, strict=True):
        assert list(out.outputs[0].token_ids) == _hf(setup, prompt, spec)[0], spec
        changed += out.outputs[0].token_ids != base.outputs[0].token_ids
    assert changed >= 2, "the role steerings should change what most requests say"
