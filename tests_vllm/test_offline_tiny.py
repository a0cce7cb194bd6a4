"""Offline (LLM.generate) on a tiny random Llama, vLLM's default compiled mode, with chunked prefill,
prefix caching and a KV cache small enough to preempt: every steered request equals SteerableModel.generate
on its prompt alone, every unsteered one equals vLLM without steering."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from steerable import SteerableModel
from steerable.conditions import condition_scores
from steerable.serving import worker
from tests_vllm.helpers import (
    HIDDEN,
    NEW_TOKENS,
    random_vector,
    reference_tokens,
    save_tiny_llama,
    tiny_llama,
    with_paths,
)

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: the test reads its scheduler

BLOCK = 32
BATCH_TOKENS = 64  # prompts longer than this are prefilled in chunks


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tiny")
    model_dir = save_tiny_llama(root / "model")
    hidden = HIDDEN
    vectors = {
        "a": random_vector([1, 2], hidden, 1, 1.5),
        "b": random_vector([2], hidden, 2, 1.0),
        "c": random_vector([1], hidden, 3, 1.0),
        "late": random_vector([0, 2], hidden, 4, 2.0),
    }
    files = {}
    for name, vector in vectors.items():
        files[name] = root / f"{name}.safetensors"
        vector.save(files[name])
    from vllm import LLM

    llm = LLM(
        str(model_dir),
        dtype="float32",
        max_model_len=128,
        max_num_seqs=16,
        max_num_batched_tokens=BATCH_TOKENS,
        block_size=BLOCK,
        enable_prefix_caching=True,
        num_gpu_blocks_override=14,
        gpu_memory_utilization=0.3,
        kv_cache_memory_bytes=64 << 20,
        seed=0,
    )
    hf = SteerableModel.wrap(tiny_llama())
    return {"llm": llm, "hf": hf, "vectors": vectors, "files": files}


def prompts(count: int, low: int, high: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 90) for _ in range(rng.randrange(low, high))] for _ in range(count)]


def generate(llm: Any, requests: list[tuple[list[int], list[dict[str, Any]] | None]]) -> list[Any]:
    from vllm import SamplingParams

    params = [
        SamplingParams(
            max_tokens=NEW_TOKENS,
            temperature=0.0,
            ignore_eos=True,
            logprobs=1,
            extra_args={"steering": steering} if steering is not None else None,
        )
        for _, steering in requests
    ]
    return llm.generate([{"prompt_token_ids": p} for p, _ in requests], params, use_tqdm=False)


CASES: list[list[dict[str, Any]]] = [
    [{"vector": "a", "multiplier": 4.0}],
    [{"vector": "a", "multiplier": 4.0, "positions": "prompt"}],
    [{"vector": "a", "multiplier": 4.0, "positions": "generated"}],
    [{"vector": "a", "multiplier": -3.0, "min_token_index": 7}],
    [{"vector": "a", "operator": "ablate"}],
    [{"vector": "b", "multiplier": 2.0, "operator": "ablate_then_add"}],
    [{"vector": "a", "multiplier": 3.0, "operator": "clamp"}],
    [{"vector": "a", "multiplier": 6.0, "norm_preserving": True}],
    [{"vector": "a", "multiplier": 2.0}, {"vector": "b", "multiplier": 2.5, "operator": "clamp"}],
    [{"vector": "late", "multiplier": 3.0, "positions": "generated"}, {"vector": "a", "multiplier": -2.0}],
]


def test_mixed_batch_equals_each_request_alone_and_unsteered_equals_plain_vllm(setup: dict[str, Any]) -> None:
    llm, files = setup["llm"], setup["files"]
    texts = prompts(len(CASES) + 4, 5, 100, seed=0)  # some longer than BATCH_TOKENS: chunked prefill
    plain = generate(llm, [(p, None) for p in texts])
    requests: list[tuple[list[int], Any]] = []
    for i, prompt in enumerate(texts):
        requests.append((prompt, with_paths(CASES[i], files) if i < len(CASES) else None))
    mixed = generate(llm, requests)
    for i, (prompt, steering) in enumerate(requests):
        tokens = list(mixed[i].outputs[0].token_ids)
        if steering is None:
            assert tokens == list(plain[i].outputs[0].token_ids), f"unsteered request {i} changed"
            continue
        expected = reference_tokens(setup["hf"], prompt, CASES[i], setup["vectors"])
        assert tokens == expected, f"case {i} {CASES[i]}: vLLM {tokens} != SteerableModel.generate {expected}"
    assert any(len(p) > BATCH_TOKENS for p, _ in requests)
    assert sum(1 for i in range(len(CASES)) if mixed[i].outputs[0].token_ids != plain[i].outputs[0].token_ids) >= 8


def test_steering_as_json_string_and_unset_keys_are_defaults(setup: dict[str, Any]) -> None:
    import json

    prompt = prompts(1, 10, 11, seed=5)[0]
    spec = [{"vector": str(setup["files"]["a"]), "multiplier": 4.0}]
    as_list, as_text = generate(setup["llm"], [(prompt, spec), (prompt, json.dumps(spec))])
    expected = reference_tokens(setup["hf"], prompt, [{"vector": "a", "multiplier": 4.0}], setup["vectors"])
    assert list(as_list.outputs[0].token_ids) == list(as_text.outputs[0].token_ids) == expected


def _score(setup: dict[str, Any], prompt: list[int], layer: int) -> float:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        hidden = setup["hf"](input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
    direction = setup["vectors"]["c"][layer]
    return float(condition_scores(hidden, torch.ones_like(ids, dtype=torch.bool), direction)[0])


def test_conditional_steering_is_decided_per_request_on_its_prompt(setup: dict[str, Any]) -> None:
    texts = prompts(6, 8, 14, seed=11)  # short: each prompt is prefilled in one step
    scores = [_score(setup, p, 1) for p in texts]
    threshold = sorted(scores)[len(scores) // 2] - 1e-6  # half of the prompts meet it
    condition = {"vector": "c", "layer": 1, "threshold": threshold, "comparator": ">"}
    specs = [
        [{"vector": "b", "multiplier": 6.0, "condition": condition}],
        [{"vector": "b", "multiplier": 6.0, "positions": "generated", "condition": dict(condition, comparator="<")}],
        [{"vector": "b", "multiplier": 6.0, "condition": {"any_of": [condition, dict(condition, threshold=9.0)]}}],
    ]
    fired = {True: 0, False: 0}
    for spec in specs:
        for pair in (texts[:3], texts[3:]):  # few per step: no prompt split across steps
            outs = generate(setup["llm"], [(p, with_paths(spec, setup["files"])) for p in pair])
            for prompt, out in zip(pair, outs, strict=False):
                expected = reference_tokens(setup["hf"], prompt, spec, setup["vectors"])
                assert list(out.outputs[0].token_ids) == expected, spec
                fired[_score(setup, prompt, 1) > threshold] += 1
    assert fired[True] and fired[False], "the condition should fire for some prompts and not for others"


def test_conditional_generated_positions_are_exact_across_chunked_prefill(setup: dict[str, Any]) -> None:
    texts = prompts(4, 70, 100, seed=12)  # longer than a step's token budget
    scores = [_score(setup, p, 1) for p in texts]
    threshold = sorted(scores)[2] - 1e-6
    spec = [
        {
            "vector": "b",
            "multiplier": 6.0,
            "positions": "generated",
            "condition": {"vector": "c", "layer": 1, "threshold": threshold},
        }
    ]
    outs = generate(setup["llm"], [(p, with_paths(spec, setup["files"])) for p in texts])
    for prompt, out in zip(texts, outs, strict=False):
        assert list(out.outputs[0].token_ids) == reference_tokens(setup["hf"], prompt, spec, setup["vectors"])


def test_a_conditional_prompt_steering_gets_its_whole_prompt_in_one_step(setup: dict[str, Any]) -> None:
    """No step holds two of these prompts, and long unsteered prompts are chunked around them: each conditional
    request is held back until a step has room for its whole prompt, so its decision covers every prompt
    token, as in SteerableModel.generate."""
    from vllm.v1.core.sched.scheduler import Scheduler

    texts = prompts(4, 40, 60, seed=13)
    scores = [_score(setup, p, 1) for p in texts]
    threshold = sorted(scores)[2] - 1e-6  # two of the four meet it
    # steered from the condition's layer on, before the last: the prompt's steered KV shapes every reply
    spec = [{"vector": "a", "multiplier": 4.0, "condition": {"vector": "c", "layer": 1, "threshold": threshold}}]
    others = prompts(3, 70, 100, seed=14)
    held: list[str] = []
    original = Scheduler._handle_blocked_waiting_request

    def recording(self: Any, request: Any) -> bool:
        ready = original(self, request)
        if not ready and request.sampling_params.extra_args and request.num_computed_tokens == 0:
            held.append(request.request_id)
        return ready

    Scheduler._handle_blocked_waiting_request = recording  # type: ignore[method-assign]
    try:
        requests = [(p, with_paths(spec, setup["files"])) for p in texts] + [(p, None) for p in others]
        outs = generate(setup["llm"], requests)
    finally:
        Scheduler._handle_blocked_waiting_request = original  # type: ignore[method-assign]
    assert held, "the batch was meant to offer a conditional prompt less room than it needs"
    for prompt, out in zip(texts, outs, strict=False):
        assert list(out.outputs[0].token_ids) == reference_tokens(setup["hf"], prompt, spec, setup["vectors"])
    plain = generate(setup["llm"], [(p, None) for p in others])
    for out, alone in zip(outs[len(texts) :], plain, strict=True):
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids


def test_a_conditional_prompt_steering_longer_than_a_step_is_refused(setup: dict[str, Any]) -> None:
    from vllm import SamplingParams

    spec = [{"vector": "b", "multiplier": 6.0, "condition": {"vector": "c", "layer": 1, "threshold": 0.0}}]
    params = SamplingParams(max_tokens=4, extra_args={"steering": with_paths(spec, setup["files"])})
    long_prompt = prompts(1, 80, 81, seed=15)[0]
    with pytest.raises(ValueError, match="the prompt has 81 tokens and a step takes at most 64"):
        setup["llm"].generate([{"prompt_token_ids": long_prompt}], params, use_tqdm=False)
    generated = [dict(spec[0], positions="generated")]  # decided before any generated token: allowed
    out = generate(setup["llm"], [(long_prompt, with_paths(generated, setup["files"]))])[0]
    assert list(out.outputs[0].token_ids) == reference_tokens(setup["hf"], long_prompt, generated, setup["vectors"])


def test_steering_to_request_is_the_request_contract(setup: dict[str, Any]) -> None:
    from steerable import Steering
    from steerable.conditions import Condition

    vectors, files = setup["vectors"], setup["files"]
    names = {str(files[name]): vector for name, vector in vectors.items()}  # vectors named by their files
    prompt = prompts(1, 12, 13, seed=41)[0]
    threshold = _score(setup, prompt, 1) - 0.01  # this prompt meets it
    steerings = [
        Steering(vectors["a"], 3.0, positions="generated", operator="ablate_then_add"),
        Steering(vectors["b"], 2.0, min_token_index=4, condition=Condition(vectors["c"], 1, threshold)),
    ]
    request = [s.to_request(names=names) for s in steerings]
    out = generate(setup["llm"], [(prompt, request)])[0]
    expected = reference_tokens(setup["hf"], prompt, steerings, vectors)
    assert list(out.outputs[0].token_ids) == expected
    assert expected != reference_tokens(setup["hf"], prompt, steerings[:1], vectors), "the condition was met"


def test_prefix_cache_is_never_shared_across_different_steering(setup: dict[str, Any]) -> None:
    llm, files = setup["llm"], setup["files"]
    prompt = prompts(1, 3 * BLOCK + 5, 3 * BLOCK + 6, seed=21)[0]
    plain_first = generate(llm, [(prompt, None)])[0]
    plain_again = generate(llm, [(prompt, None)])[0]
    assert plain_again.num_cached_tokens >= 2 * BLOCK, "unsteered requests keep sharing the prefix cache"
    assert plain_again.outputs[0].token_ids == plain_first.outputs[0].token_ids
    spec = [{"vector": "a", "multiplier": 4.0, "positions": "prompt"}]
    steered = generate(llm, [(prompt, with_paths(spec, files))])[0]
    assert steered.num_cached_tokens == 0, "a steered prompt must not reuse unsteered KV blocks"
    assert list(steered.outputs[0].token_ids) == reference_tokens(setup["hf"], prompt, spec, setup["vectors"])
    again = generate(llm, [(prompt, with_paths(spec, files))])[0]
    assert again.num_cached_tokens >= 2 * BLOCK and again.outputs[0].token_ids == steered.outputs[0].token_ids
    other = [{"vector": "a", "multiplier": -4.0, "positions": "prompt"}]
    assert generate(llm, [(prompt, with_paths(other, files))])[0].num_cached_tokens == 0
    after = generate(llm, [(prompt, None)])[0]
    assert after.outputs[0].token_ids == plain_first.outputs[0].token_ids


def test_positions_stay_right_under_preemption(setup: dict[str, Any]) -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    preempted = []
    original = Scheduler._preempt_request

    def counting(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        preempted.append(request.request_id)
        return original(self, request, *args, **kwargs)

    Scheduler._preempt_request = counting  # type: ignore[method-assign]
    try:
        texts = prompts(12, 60, 90, seed=31)  # 12 x 3 blocks of KV, 14 blocks: requests get preempted
        specs = [with_paths(CASES[i % 4], setup["files"]) if i % 3 else None for i in range(len(texts))]
        outs = generate(setup["llm"], list(zip(texts, specs, strict=False)))
    finally:
        Scheduler._preempt_request = original  # type: ignore[method-assign]
    assert preempted, "the KV cache was meant to be too small for the batch"
    plain = generate(setup["llm"], [(p, None) for p in texts])
    for i, (prompt, out) in enumerate(zip(texts, outs, strict=False)):
        if specs[i] is None:
            assert out.outputs[0].token_ids == plain[i].outputs[0].token_ids
        else:
            expected = reference_tokens(setup["hf"], prompt, CASES[i % 4], setup["vectors"])
            assert list(out.outputs[0].token_ids) == expected, f"request {i} ({CASES[i % 4]})"
    controller = worker.CONTROLLER
    assert controller is not None and not any(controller.requests.values()), "finished requests free their slots"


def test_plugin_installed_in_compiled_mode(setup: dict[str, Any]) -> None:
    config = setup["llm"].llm_engine.vllm_config
    from vllm.config import CompilationMode

    assert config.compilation_config.mode != CompilationMode.NONE
    assert worker.CONTROLLER is not None


@pytest.mark.parametrize(
    ("steering", "named"),
    [
        ("[{'vector': 1", "not valid JSON"),
        ([{"vector": "nope"}], "unknown vector 'nope'"),
        ([{"vector": "WRONG_SIZE"}], "hidden size 32"),
        ([{"vector": "OUT_OF_RANGE"}], "layer 7, out of range"),
        ([{"vector": "a", "multiplier": float("nan")}], "finite"),
        ([{"vector": "a", "multiplier": float("inf")}], "finite"),
        ([{"vector": "a", "positions": "sometimes"}], "unknown positions 'sometimes'"),
        ([{"vector": "a", "positions": "assistant"}], "positions 'assistant': role positions"),  # no template
        ([{"vector": "a", "operator": "rotate"}], "unknown operator 'rotate'"),
        ([{"vector": "a"}] * 5, "at most 4"),
        ([{"vector": "a", "colour": 1}], "unknown keys ['colour']"),
        ([{"vector": "a", "condition": {"vector": "c", "layer": 9, "threshold": 0.0}}], "condition layer 9"),
        ([{"vector": "BROKEN"}], "cannot be loaded"),
    ],
)
def test_bad_steering_is_refused_by_name_and_the_engine_keeps_serving(
    setup: dict[str, Any], tmp_path: Path, steering: Any, named: str
) -> None:
    from vllm import SamplingParams

    random_vector([1], 32, 5).save(tmp_path / "wrong.safetensors")
    random_vector([7], HIDDEN, 5).save(tmp_path / "range.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    names = {"WRONG_SIZE": "wrong", "OUT_OF_RANGE": "range", "BROKEN": "broken"}

    def fix(item: dict[str, Any]) -> dict[str, Any]:
        vector = item["vector"]
        if vector in names:
            return dict(item, vector=str(tmp_path / f"{names[vector]}.safetensors"))
        return with_paths([item], setup["files"])[0] if vector in setup["files"] else item

    spec = steering if isinstance(steering, str) else [fix(item) for item in steering]
    params = SamplingParams(max_tokens=4, extra_args={"steering": spec})
    with pytest.raises(ValueError, match=re.escape(named)):
        setup["llm"].generate([{"prompt_token_ids": [1, 5, 6]}], params, use_tqdm=False)
    prompt = prompts(1, 6, 7, seed=3)[0]
    ok = [{"vector": "a", "multiplier": 4.0}]
    out = generate(setup["llm"], [(prompt, with_paths(ok, setup["files"]))])[0]
    assert list(out.outputs[0].token_ids) == reference_tokens(setup["hf"], prompt, ok, setup["vectors"])
