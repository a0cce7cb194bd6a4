"""Tensor parallelism (TP=2, the CPU build, one OpenMP core per rank): the residual stream is replicated across
ranks, so every rank holds the same vectors and steers its full copy of each block output; the steered and
unsteered requests of one batch equal SteerableModel.generate."""

from __future__ import annotations

import os
from typing import Any

import pytest

from steerable import SteerableModel
from tests_vllm.helpers import HIDDEN, NEW_TOKENS, random_vector, reference_tokens, save_tiny_llama, tiny_llama


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from vllm import LLM

    root = tmp_path_factory.mktemp("tp")
    model_dir = save_tiny_llama(root / "model")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank (one NUMA node here)
    engine = LLM(
        str(model_dir),
        dtype="float32",
        enforce_eager=True,
        tensor_parallel_size=2,
        max_model_len=128,
        max_num_seqs=4,
        block_size=32,
        gpu_memory_utilization=0.3,
        kv_cache_memory_bytes=32 << 20,
    )
    return engine, root


def test_tp2_steers_like_one_device(llm: Any) -> None:
    from vllm import SamplingParams

    engine, root = llm
    vectors = {"a": random_vector([1, 2], HIDDEN, 1, 1.5), "b": random_vector([2], HIDDEN, 2, 1.0)}
    for name, vector in vectors.items():
        vector.save(root / f"{name}.safetensors")
    prompt = [1, 7, 19, 33, 4, 58, 12, 9, 71]
    specs: list[list[dict[str, Any]]] = [
        [],
        [{"vector": "a", "multiplier": 4.0}],
        [{"vector": "b", "multiplier": 2.0, "operator": "clamp", "positions": "generated"}],
    ]
    params = [
        SamplingParams(
            max_tokens=NEW_TOKENS,
            temperature=0.0,
            ignore_eos=True,
            extra_args={"steering": [dict(s, vector=str(root / f"{s['vector']}.safetensors")) for s in spec]}
            if spec
            else None,
        )
        for spec in specs
    ]
    outs = engine.generate([{"prompt_token_ids": prompt}] * len(specs), params, use_tqdm=False)
    hf = SteerableModel.wrap(tiny_llama())
    for spec, out in zip(specs, outs, strict=True):
        assert list(out.outputs[0].token_ids) == reference_tokens(hf, prompt, spec, vectors), spec
    assert outs[1].outputs[0].token_ids != outs[0].outputs[0].token_ids
