"""Compiled decoding with inductor (the real backend): steered vs vanilla compiled decode, first-compile
time, graph counts, forward hooks under compile, and ``generate`` with a static cache.

    python -m benchmarks.compiled [--model smollm2] [--trials 5] [--new-tokens 32] [--quick]

Three instances of the same weights, each with ``forward`` compiled (inductor, ``dynamic=False``) and
decoded by ``generate`` with a static cache: vanilla; steerable, steering every layer; and forward
hooks doing the same add. Decode ms/token, trials interleaved; the target is steered / vanilla <= 1.02.
Graph counts come from a counting wrapper around the backend: after the first steered generate, how
many new graphs does a new steering, switching it off and on, ``handle.update``, and a loop of 50
different steerings cost (hooks: a new hook, off and on). ``--quick`` runs the same paths on a tiny model
with the ``eager`` backend (dynamo's capture, without inductor's minutes of compiling).
Writes benchmarks/results/compiled.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.overhead import decode_ms_per_token, hooks, tiny_llama
from steerable import SteerableModel, SteeringVector


class CountingBackend:
    """A dynamo backend that counts the graphs it compiles, then hands them to ``inner``."""

    def __init__(self, inner: str) -> None:
        self.inner = inner
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        if self.inner == "eager":
            return graph.forward
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(graph, inputs)


def load(name: str) -> Any:
    if name == "tiny":
        return tiny_llama(4)
    from steerable.testing import smollm2_path

    return transformers.AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).eval()


def compiled(model: Any, backend: CountingBackend) -> Any:
    model.forward = torch.compile(model.forward, backend=backend, dynamic=False)
    return model


def decode(model: Any, new_tokens: int, batch: int = 1) -> float:
    """ms per generated token: ``generate`` with a static cache (the compiled forward does the steps;
    generate must not wrap it again)."""
    return decode_ms_per_token(model, batch, new_tokens, "cpu", cache_implementation="static", disable_compile=True)


def vector_for(model: Any, seed: int) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    d, n = model.config.hidden_size, model.config.num_hidden_layers
    return SteeringVector({i: torch.randn(d, generator=generator) * 0.1 for i in range(n)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    backend_name = "eager" if args.quick else "inductor"
    torch._dynamo.config.cache_size_limit = 64
    counters = {name: CountingBackend(backend_name) for name in ("vanilla", "steerable", "hooks")}
    vanilla = compiled(load(args.model), counters["vanilla"])
    steerable = compiled(SteerableModel.wrap(load(args.model)), counters["steerable"])
    hooked_model = load(args.model)
    first_compile: dict[str, float] = {}
    handle = steerable.steer(vector_for(steerable, 0), 1.0)

    hook_context = hooks(hooked_model, vector_for(hooked_model, 0), 1.0)
    hook_context.__enter__()
    compiled(hooked_model, counters["hooks"])
    for name, model in (("vanilla", vanilla), ("steerable", steerable), ("hooks", hooked_model)):
        start = time.perf_counter()
        decode(model, args.new_tokens)
        first_compile[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in counters}
    for _ in range(args.trials):
        for name, model in (("vanilla", vanilla), ("steerable", steerable), ("hooks", hooked_model)):
            times[name].append(decode(model, args.new_tokens))
    ratio = {
        name: {
            "median_ms_per_token": statistics.median(t),
            "min": min(t),
            "max": max(t),
            "ratio": statistics.median(t) / statistics.median(times["vanilla"]),
            "ratio_min": min(a / b for a, b in zip(t, times["vanilla"], strict=True)),
            "ratio_max": max(a / b for a, b in zip(t, times["vanilla"], strict=True)),
        }
        for name, t in times.items()
    }

    graphs: dict[str, int] = {"steerable: first steered generate (prefill + decode)": counters["steerable"].graphs}

    def new_graphs(label: str, counter: CountingBackend, change: Callable[[], None]) -> None:
        before = counter.graphs
        change()
        graphs[label] = counter.graphs - before

    def new_steering() -> None:
        nonlocal handle
        handle.remove()
        handle = steerable.steer(vector_for(steerable, 1), 2.0)
        decode(steerable, args.new_tokens)

    def off_and_on() -> None:
        nonlocal handle
        handle.remove()
        decode(steerable, args.new_tokens)
        handle = steerable.steer(vector_for(steerable, 2), 1.0)
        decode(steerable, args.new_tokens)

    def update() -> None:
        handle.update(multiplier=3.0, vector=vector_for(steerable, 3))
        decode(steerable, args.new_tokens)

    def fifty() -> None:
        nonlocal handle
        for i in range(50):
            handle.remove()
            handle = steerable.steer(vector_for(steerable, 10 + i), 0.5 + i / 10)
            decode(steerable, 2)

    new_graphs("steerable: a new steering", counters["steerable"], new_steering)
    new_graphs("steerable: off (an idle generate: the idle graphs, once), then on", counters["steerable"], off_and_on)
    new_graphs("steerable: handle.update (multiplier and vector)", counters["steerable"], update)
    new_graphs("steerable: 50 different steerings in a loop", counters["steerable"], fifty)
    handle.remove()

    def new_hook() -> None:
        nonlocal hook_context
        hook_context.__exit__(None, None, None)
        hook_context = hooks(hooked_model, vector_for(hooked_model, 1), 2.0)
        hook_context.__enter__()
        decode(hooked_model, args.new_tokens)

    def hooks_off_on() -> None:
        nonlocal hook_context
        hook_context.__exit__(None, None, None)
        decode(hooked_model, args.new_tokens)
        hook_context = hooks(hooked_model, vector_for(hooked_model, 2), 1.0)
        hook_context.__enter__()
        decode(hooked_model, args.new_tokens)

    new_graphs("forward hooks: a new hook", counters["hooks"], new_hook)
    new_graphs("forward hooks: off, then on", counters["hooks"], hooks_off_on)
    hook_context.__exit__(None, None, None)
    return {
        "model": args.model,
        "backend": backend_name,
        "trials": args.trials,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "first_compile_s": first_compile,
        "decode": ratio,
        "graphs": graphs,
        "target_met": ratio["steerable"]["ratio"] <= 1.02,
    }


def markdown(report: dict[str, Any]) -> str:
    decode = report["decode"]
    lines = [
        f"# Compiled decoding: {report['model']}, backend {report['backend']} (CPU, {report['threads']} threads)",
        "",
        f"torch {report['torch']}, transformers {report['transformers']}. `generate` with a static cache, "
        f"{report['new_tokens']} new tokens, batch 1, the forward compiled (`dynamic=False`); {report['trials']} "
        "interleaved trials. Steering: one vector on every layer.",
        "",
        "| implementation | decode ms/token | x vanilla compiled [min-max] | first generate incl. compile (s) |",
        "| --- | --- | --- | --- |",
    ]
    for name, label in (
        ("vanilla", "vanilla compiled"),
        ("steerable", "steerable compiled"),
        ("hooks", "forward hooks compiled"),
    ):
        row = decode[name]
        lines.append(
            f"| {label} | {row['median_ms_per_token']:.2f} [{row['min']:.2f}-{row['max']:.2f}] | "
            f"x{row['ratio']:.3f} [{row['ratio_min']:.3f}-{row['ratio_max']:.3f}] | "
            f"{report['first_compile_s'][name]:.1f} |"
        )
    steered = decode["steerable"]
    noisy = steered["ratio_min"] <= 1.02 <= steered["ratio_max"]
    verdict = "met" if report["target_met"] else ("MISSED (within the trial-to-trial noise)" if noisy else "MISSED")
    lines += [
        "",
        f"Target (steered compiled / vanilla compiled <= 1.02): {verdict}.",
        "",
        "| change | new graphs |",
        "| --- | --- |",
    ]
    lines += [f"| {label} | {count} |" for label, count in report["graphs"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny model, eager backend, 1 trial")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.trials, args.new_tokens = "tiny", 1, 3
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compiled.json").write_text(json.dumps(report, indent=1))
    (out / "compiled.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
