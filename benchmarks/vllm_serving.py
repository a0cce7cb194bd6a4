"""vLLM serving throughput with the steerable plugin: output tokens/s for batches of 16 and 64 requests with
0 (plugin idle), 1 and 16 distinct steerings, against vLLM without the plugin (VLLM_PLUGINS leaves it out of
that engine's processes), trials interleaved in one run; and the same requests through
SteerableModel.generate (one batched generate, a steering per row).

    python -m benchmarks.vllm_serving [--trials 3] [--new-tokens 32] [--eager] [--hf-trials 3] [--out DIR]

Writes vllm_serving.json and vllm_serving.md. Targets on the 2-core CPU: idle >= 0.99x and 16 distinct
>= 0.95x the plugin-free throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BATCHES = (16, 64)
STEERINGS = (0, 1, 16)
TOPICS = [
    "the sea",
    "a city at night",
    "learning to cook",
    "an old friend",
    "the mountains",
    "a rainy day",
    "music",
    "a garden",
    "a long journey",
    "winter",
    "a library",
    "the first day of school",
]


def prompts(count: int) -> list[str]:
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]} (number {i})." for i in range(count)]


def make_vectors(directory: Path, count: int, hidden: int) -> list[Path]:
    from steerable import SteeringVector

    paths = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        vector = SteeringVector({layer: torch.randn(hidden, generator=generator) * 0.3 for layer in (6, 12, 18)})
        paths.append(directory / f"v{i}.safetensors")
        vector.save(paths[-1])
    return paths


def engine(model: str, plugin: bool, eager: bool, max_seqs: int) -> Any:
    from vllm import LLM

    if plugin:
        os.environ.pop("VLLM_PLUGINS", None)
    else:
        os.environ["VLLM_PLUGINS"] = "none"  # an allowlist that names no plugin: this engine runs without it
    try:
        return LLM(
            model,
            dtype="float32",
            enforce_eager=eager,
            max_model_len=512,
            max_num_seqs=max_seqs,
            gpu_memory_utilization=0.3,
            kv_cache_memory_bytes=1 << 30,
            seed=0,
        )
    finally:
        os.environ.pop("VLLM_PLUGINS", None)


def vllm_trial(llm: Any, texts: list[str], specs: list[Any], new_tokens: int) -> float:
    from vllm import SamplingParams

    params = [
        SamplingParams(
            max_tokens=new_tokens, temperature=0.0, ignore_eos=True, extra_args={"steering": spec} if spec else None
        )
        for spec in specs
    ]
    start = time.perf_counter()
    outs = llm.generate([{"prompt": t} for t in texts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def check_steering_applies(steered: Any, plain: Any, vector: Path) -> None:
    """A benchmark of a plugin that silently did nothing would measure nothing: the steered engine must
    change a steered request and only that."""
    from vllm import SamplingParams

    base = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    spec = SamplingParams(
        max_tokens=12,
        temperature=0.0,
        ignore_eos=True,
        extra_args={"steering": [{"vector": str(vector), "multiplier": 8.0}]},
    )
    prompt = [{"prompt": prompts(1)[0]}]
    free = plain.generate(prompt, base, use_tqdm=False)[0].outputs[0].token_ids
    idle = steered.generate(prompt, base, use_tqdm=False)[0].outputs[0].token_ids
    moved = steered.generate(prompt, spec, use_tqdm=False)[0].outputs[0].token_ids
    if list(idle) != list(free) or list(moved) == list(free):
        raise RuntimeError("the steered engine does not steer (or steers unsteered requests): not benchmarking")


def hf_trial(model: Any, tokenizer: Any, texts: list[str], vectors: list[Any], count: int, new_tokens: int) -> float:
    from steerable import RowSteering

    batch = tokenizer(texts, return_tensors="pt", padding=True)
    rows = [RowSteering(vectors[i % count], 4.0) if count else None for i in range(len(texts))]
    start = time.perf_counter()
    with torch.no_grad(), model.steer_rows(rows):
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    elapsed = time.perf_counter() - start
    return (out.shape[1] - batch["input_ids"].shape[1]) * len(texts) / elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from steerable import SteerableModel, SteeringVector
    from steerable.testing.smollm2 import smollm2_path

    model = str(smollm2_path())
    tmp = Path(tempfile.mkdtemp())
    paths = make_vectors(tmp, 16, 576)
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    from steerable.serving.plugin import register

    register()  # this process takes the requests of both engines; only the steered one's engine runs the plugin
    steered = engine(model, True, args.eager, max(BATCHES))
    plain = engine(model, False, args.eager, max(BATCHES))
    check_steering_applies(steered, plain, paths[0])
    results: dict[str, list[float]] = {}
    for batch in BATCHES:
        texts = prompts(batch)
        vllm_trial(plain, texts, [None] * batch, 4)  # warm-up
        vllm_trial(steered, texts, [None] * batch, 4)
        runs: list[tuple[str, Any, list[Any]]] = [(f"b{batch}/plugin-free", plain, [None] * batch)]
        for count in STEERINGS:
            specs = [[{"vector": str(paths[i % count]), "multiplier": 4.0}] if count else None for i in range(batch)]
            runs.append((f"b{batch}/steerings={count}", steered, specs))
        for round_ in range(args.trials):  # interleaved, each round in a rotated order: no condition always first
            turn = round_ % len(runs)
            for key, llm, specs in runs[turn:] + runs[:turn]:
                results.setdefault(key, []).append(vllm_trial(llm, texts, specs, args.new_tokens))
    del plain, steered
    partial(args, kind, results)  # the vLLM numbers are kept even if the HF part does not finish
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    hf = SteerableModel.from_pretrained(model, dtype=torch.float32).eval()
    vectors = [SteeringVector.load(p) for p in paths]
    for batch in args.hf_batches:
        texts = prompts(batch)
        for count in (0, 16):
            key = f"b{batch}/hf steerings={count}"
            trials = range(args.hf_trials)
            results[key] = [hf_trial(hf, tokenizer, texts, vectors, count, args.new_tokens) for _ in trials]
    summary = {key: statistics.median(values) for key, values in results.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "device": kind},
        "settings": vars(args),
        "tokens_per_s": summary,
        "trials": results,
        "vs_plugin_free": paired_ratios(results),
    }


def paired_ratios(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each round's steered throughput over the same round's plugin-free throughput: the machine's drift
    between rounds cancels. The median over rounds, with the lower and upper quartiles."""
    ratios = {}
    for batch in BATCHES:
        free = results[f"b{batch}/plugin-free"]
        for count in STEERINGS:
            key = f"b{batch}/steerings={count}"
            paired = sorted(s / f for s, f in zip(results[key], free, strict=True))
            quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
            ratios[key] = {"median": statistics.median(paired), "q1": quartiles[0], "q3": quartiles[2]}
    return ratios


def partial(args: argparse.Namespace, kind: str, results: dict[str, list[float]]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.partial.json"
    path.write_text(json.dumps({"device": kind, "settings": vars(args), "trials": results}, indent=2, default=str))


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = report["settings"]["name"]
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        "# vLLM serving with steerable (SmolLM2-135M-Instruct, fp32)",
        "",
        f"{report['settings']['trials']} interleaved rounds, median output tokens/s; in brackets the median "
        "of each round's ratio to that round's plugin-free run, with its quartiles. "
        f"{report['settings']['new_tokens']} new tokens per request, eager={report['settings']['eager']}, "
        f"device {report['machine']['device']}, {report['machine']['cpus']} CPUs.",
        "",
        "| batch | vLLM plugin-free | plugin idle | 1 steering | 16 distinct | HF unsteered | HF 16 distinct |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    s, r = report["tokens_per_s"], report["vs_plugin_free"]

    def cell(key: str) -> str:
        q = r[key]
        return f"{s[key]:.0f} ({q['median']:.3f}x, {q['q1']:.2f}-{q['q3']:.2f})"

    for b in BATCHES:
        lines.append(
            f"| {b} | {s[f'b{b}/plugin-free']:.0f} | {cell(f'b{b}/steerings=0')} | {cell(f'b{b}/steerings=1')} | "
            f"{cell(f'b{b}/steerings=16')} | "
            f"{s.get(f'b{b}/hf steerings=0', float('nan')):.0f} | {s.get(f'b{b}/hf steerings=16', float('nan')):.0f} |"
        )
    lines += ["", "Targets: plugin idle >= 0.99x, 16 distinct >= 0.95x plugin-free."]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--eager", action="store_true", help="enforce_eager (default: vLLM's compiled mode)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="vllm_serving", help="result file stem (.json and .md)")
    parser.add_argument("--hf-trials", type=int, default=3, help="trials of each HF generate")
    parser.add_argument("--hf-batches", type=int, nargs="*", default=list(BATCHES), help="batches run through HF")
    args = parser.parse_args(argv)
    report = run(args)
    write(report, args.out)
    print((args.out / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
