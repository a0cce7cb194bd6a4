"""`steerable serve` on 127.0.0.1: /v1/completions and /v1/chat/completions name vectors by file stem through
vllm_xargs; bad steering is an HTTP 400 naming the problem; vectors are added, replaced and removed while
the server runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from steerable import SteerableModel
from tests_vllm.helpers import HIDDEN, NEW_TOKENS, random_vector, reference_tokens, save_tiny_llama, tiny_llama

STEP_TOKENS = 64
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}A :{% endif %}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("serve")
    model_dir = save_tiny_llama(root / "model")
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    vectors_dir = root / "vectors"
    vectors_dir.mkdir()
    vectors = {"calm": random_vector([1, 2], HIDDEN, 1, 1.5), "wild": random_vector([2], HIDDEN, 2, 2.0)}
    for name, vector in vectors.items():
        vector.save(vectors_dir / f"{name}.safetensors")
    vectors["wild"].to_gguf(vectors_dir / "wildgguf.gguf")
    vectors["wildgguf"] = vectors["wild"]
    random_vector([1], 32, 3).save(vectors_dir / "small.safetensors")
    (vectors_dir / "broken.safetensors").write_bytes(b"\x00" * 20)
    port = _free_port()
    command = [sys.executable, "-c", "import sys; from steerable.cli import main; sys.exit(main())", "serve"]
    command += [str(model_dir), "--vectors", str(vectors_dir), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--dtype", "float32", "--max-model-len", "128", "--block-size", "32", "--enforce-eager"]
    command += ["--gpu-memory-utilization", "0.3", "--kv-cache-memory-bytes", str(64 << 20), "--max-num-seqs", "8"]
    command += ["--max-num-batched-tokens", str(STEP_TOKENS)]  # longer prompts are prefilled in chunks
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 400
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {(root / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    else:
        process.kill()
        raise RuntimeError("the server did not start in 400 s")
    hf = SteerableModel.wrap(tiny_llama())
    yield {"base": base, "model": str(model_dir), "dir": vectors_dir, "vectors": vectors, "hf": hf}
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def complete(server: dict[str, Any], prompt: list[int], steering: Any = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {
        "model": server["model"],
        "prompt": prompt,
        "max_tokens": NEW_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    if steering is not None:
        body["vllm_xargs"] = {"steering": steering if isinstance(steering, str) else json.dumps(steering)}
    return _post(f"{server['base']}/v1/completions", body)


def tokens_of(body: dict[str, Any]) -> list[int]:
    return list(body["choices"][0]["token_ids"])


PROMPT = [1, 7, 19, 33, 4, 58, 12, 9, 71]


def test_completions_steer_by_vector_name(server: dict[str, Any]) -> None:
    status, plain = complete(server, PROMPT)
    assert status == 200
    assert tokens_of(plain) == reference_tokens(server["hf"], PROMPT, [], server["vectors"])
    for spec in (
        [{"vector": "calm", "multiplier": 4.0}],
        [{"vector": "calm", "multiplier": 4.0, "positions": "generated"}, {"vector": "wild", "operator": "ablate"}],
        [{"vector": "wildgguf", "multiplier": -3.0, "min_token_index": 4}],
    ):
        status, body = complete(server, PROMPT, spec)
        assert status == 200, body
        assert tokens_of(body) == reference_tokens(server["hf"], PROMPT, spec, server["vectors"]), spec
        assert tokens_of(body) != tokens_of(plain)


def test_chat_completions_steer(server: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server["model"])
    messages = [{"role": "user", "content": "w5 w9 w13 w40"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    spec = [{"vector": "calm", "multiplier": 4.0}]
    body = {
        "model": server["model"],
        "messages": messages,
        "max_tokens": NEW_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "return_token_ids": True,
        "vllm_xargs": {"steering": json.dumps(spec)},
    }
    status, out = _post(f"{server['base']}/v1/chat/completions", body)
    assert status == 200, out
    assert list(out["prompt_token_ids"]) == prompt
    assert list(out["choices"][0]["token_ids"]) == reference_tokens(server["hf"], prompt, spec, server["vectors"])


def test_concurrent_conditional_prompt_steerings_each_equal_generate(server: dict[str, Any]) -> None:
    """Sent at once, these prompts do not fit one step together, and long unsteered prompts are chunked
    around them; each conditional request still gets its whole prompt in one step (the engine-core process
    runs the plugin's scheduling rule), so each equals SteerableModel.generate."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(7)
    texts = [[1] + [rng.randrange(3, 90) for _ in range(rng.randrange(40, 60))] for _ in range(4)]
    texts += [[1] + [rng.randrange(3, 90) for _ in range(rng.randrange(70, 100))] for _ in range(2)]
    condition = {"vector": "calm", "layer": 1, "threshold": -1.0}  # a cosine above -1: met
    specs = [[{"vector": "calm", "multiplier": 4.0, "condition": dict(condition, score="cosine")}]] * 4 + [None] * 2
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda job: complete(server, *job), zip(texts, specs, strict=True)))
    for prompt, spec, (status, body) in zip(texts, specs, answers, strict=True):
        assert status == 200, body
        assert tokens_of(body) == reference_tokens(server["hf"], prompt, spec or [], server["vectors"])
    long_prompt = [1] + [5] * 80
    status, body = complete(server, long_prompt, specs[0])
    assert status == 400 and "the prompt has 81 tokens and a step takes at most 64" in json.dumps(body)


@pytest.mark.parametrize(
    ("steering", "named"),
    [
        ('[{"vector": ', "not valid JSON"),
        ([{"vector": "missing"}], "unknown vector 'missing'"),
        ([{"vector": "/etc/passwd.safetensors"}], "requests name vectors, not paths"),
        ([{"vector": "small"}], "hidden size 32"),
        ('[{"vector": "calm", "multiplier": Infinity}]', "finite"),
        ([{"vector": "calm", "positions": "sometimes"}], "unknown positions"),
        ([{"vector": "calm", "operator": "double"}], "unknown operator"),
        ([{"vector": "calm"}] * 5, "at most 4"),
        ([{"vector": "broken"}], "cannot be loaded"),
    ],
)
def test_bad_steering_is_http_400_naming_it(server: dict[str, Any], steering: Any, named: str) -> None:
    status, body = complete(server, PROMPT, steering)
    assert status == 400, body
    assert named in json.dumps(body)
    status, _ = complete(server, PROMPT, [{"vector": "calm"}])
    assert status == 200


def test_vectors_are_added_replaced_and_removed_while_serving(server: dict[str, Any], tmp_path: Path) -> None:
    directory = server["dir"]
    spec = [{"vector": "fresh", "multiplier": 4.0}]
    assert complete(server, PROMPT, spec)[0] == 400
    first = random_vector([1], HIDDEN, 10, 2.0)
    first.save(tmp_path / "fresh.safetensors")
    shutil.copy(tmp_path / "fresh.safetensors", directory / "fresh.safetensors")
    status, body = complete(server, PROMPT, spec)
    assert status == 200 and tokens_of(body) == reference_tokens(server["hf"], PROMPT, spec, {"fresh": first})
    second = random_vector([2], HIDDEN, 11, 2.0)
    second.save(tmp_path / "fresh2.safetensors")
    time.sleep(0.01)  # a new modification time
    os.replace(tmp_path / "fresh2.safetensors", directory / "fresh.safetensors")
    status, body = complete(server, PROMPT, spec)
    assert status == 200 and tokens_of(body) == reference_tokens(server["hf"], PROMPT, spec, {"fresh": second})
    (directory / "fresh.safetensors").unlink()
    status, body = complete(server, PROMPT, spec)
    assert status == 400 and "unknown vector 'fresh'" in json.dumps(body)
