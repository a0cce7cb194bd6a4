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
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.hooks import hooks
from benchmarks.measure import decode_ms_per_token, ratios, seconds
from benchmarks.models import vanilla_model
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


def decode_table(models: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    """(first generate's seconds, compile included; decode ms/token over interleaved trials) per model."""
    first_compile = {name: seconds(decode, model, args.new_tokens) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.trials):
        for name, model in models.items():
            times[name].append(decode(model, args.new_tokens))
    table = {
        name: {"median_ms_per_token": statistics.median(t), "min": min(t), "max": max(t)}
        | ratios(t, times["vanilla"], of="medians")
        for name, t in times.items()
    }
    return first_compile, table


class Hooked:
    """Forward hooks on one model, replaced or switched off and on between generates."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.context: AbstractContextManager[None] | None = None

    def on(self, seed: int, multiplier: float) -> None:
        self.off()
        self.context = hooks(self.model, vector_for(self.model, seed), multiplier)
        self.context.__enter__()

    def off(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None


def steerable_graphs(steerable: Any, handle: Any, counter: CountingBackend, new_tokens: int) -> dict[str, int]:
    """New graphs for each change of steering on the compiled steerable model, steered by ``handle`` and
    decoded already."""
    state = {"handle": handle}

    def steer(seed: int, multiplier: float) -> None:
        state["handle"].remove()
        state["handle"] = steerable.steer(vector_for(steerable, seed), multiplier)

    def off_and_on() -> None:
        state["handle"].remove()
        decode(steerable, new_tokens)
        state["handle"] = steerable.steer(vector_for(steerable, 2), 1.0)

    def update() -> None:
        state["handle"].update(multiplier=3.0, vector=vector_for(steerable, 3))

    def fifty() -> None:
        for i in range(50):
            steer(10 + i, 0.5 + i / 10)
            decode(steerable, 2)

    changes: dict[str, Callable[[], None]] = {
        "steerable: a new steering": lambda: steer(1, 2.0),
        "steerable: off (an idle generate: the idle graphs, once), then on": off_and_on,
        "steerable: handle.update (multiplier and vector)": update,
    }
    graphs = {"steerable: first steered generate (prefill + decode)": counter.graphs}
    for label, change in changes.items():
        before = counter.graphs
        change()
        decode(steerable, new_tokens)
        graphs[label] = counter.graphs - before
    before = counter.graphs
    fifty()
    graphs["steerable: 50 different steerings in a loop"] = counter.graphs - before
    state["handle"].remove()
    return graphs


def hook_graphs(hooked: Hooked, counter: CountingBackend, new_tokens: int) -> dict[str, int]:
    """New graphs for a new forward hook, and for hooks switched off and on, on the compiled hooked model."""

    def off_and_on() -> None:
        hooked.off()
        decode(hooked.model, new_tokens)
        hooked.on(2, 1.0)

    graphs = {}
    for label, change in (
        ("forward hooks: a new hook", lambda: hooked.on(1, 2.0)),
        ("forward hooks: off, then on", off_and_on),
    ):
        before = counter.graphs
        change()
        decode(hooked.model, new_tokens)
        graphs[label] = counter.graphs - before
    hooked.off()
    return graphs


def run(args: argparse.Namespace) -> dict[str, Any]:
    backend_name = "eager" if args.quick else "inductor"
    torch._dynamo.config.cache_size_limit = 64
    counters = {name: CountingBackend(backend_name) for name in ("vanilla", "steerable", "hooks")}
    vanilla = compiled(vanilla_model(args.model), counters["vanilla"])
    steerable = SteerableModel.wrap(vanilla_model(args.model))
    hooked = Hooked(vanilla_model(args.model))
    hooked.on(0, 1.0)
    compiled(steerable, counters["steerable"])
    compiled(hooked.model, counters["hooks"])
    handle = steerable.steer(vector_for(steerable, 0), 1.0)
    models = {"vanilla": vanilla, "steerable": steerable, "hooks": hooked.model}
    first_compile, ratio = decode_table(models, args)
    graphs = steerable_graphs(steerable, handle, counters["steerable"], args.new_tokens)
    graphs |= hook_graphs(hooked, counters["hooks"], args.new_tokens)
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
