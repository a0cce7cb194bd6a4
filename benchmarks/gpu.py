"""The GPU run, ready to go: bf16 decode at batch 1, 8 and 64, eager and compiled with CUDA graphs
(``mode="reduce-overhead"``, static cache), steerable vs vanilla vs forward hooks, with peak memory.

    bash benchmarks/gpu.sh            # on a machine with CUDA: < 10 minutes, one results file
    python -m benchmarks.gpu --dry-run  # the same path on the CPU with a tiny model (the tests run it)

SmolLM2-135M-Instruct from the local cache if it is there, else the same shape with random weights
(the GPU machine may reach no network; weights do not change the time). Every cell runs inside a time
budget (``--budget-s``); cells left over say "not run (time budget)". Without CUDA (and without
``--dry-run``) it says so and exits 0. Writes benchmarks/results/gpu.json and gpu.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.hooks import hooks
from benchmarks.measure import cuda_peak_bytes, decode_ms_per_token, seconds, spread
from benchmarks.models import smollm2_shaped
from steerable import SteerableModel, SteeringVector
from steerable.testing.tiny_models import tiny_llama

IMPLEMENTATIONS = ("vanilla", "steerable", "forward hooks")
MODES = ("eager", "compiled (reduce-overhead)")


def decode(model: Any, batch: int, new_tokens: int, device: str, static: bool) -> float:
    extra: dict[str, Any] = {"cache_implementation": "static", "disable_compile": True} if static else {}
    return decode_ms_per_token(model, batch, new_tokens, device, **extra)


def steered(model: Any, implementation: str) -> tuple[Any, contextlib.ExitStack]:
    """(the model to time, the steering it runs under: close the stack to end it) for one implementation."""
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    vector = SteeringVector({i: torch.randn(d) * 0.1 for i in range(n_layers)})
    stack = contextlib.ExitStack()
    if implementation == "steerable":
        model = SteerableModel.wrap(model)
        stack.callback(model.steer(vector, 1.0).remove)
    elif implementation == "forward hooks":
        stack.enter_context(hooks(model, vector, 1.0))
    return model, stack


def cell(model: Any, batch: int, args: argparse.Namespace, device: str, compiled: bool) -> dict[str, Any]:
    """One batch size: a warm-up (and compile) run, then ``args.trials`` timed decodes, and peak memory."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = seconds(decode, model, batch, args.new_tokens, device, compiled)  # warm-up (and compile)
    times = [decode(model, batch, args.new_tokens, device, compiled) for _ in range(args.trials)]
    stats = spread(times)
    peak = cuda_peak_bytes() if device == "cuda" else None
    return {
        "ms_per_token": stats["median"],
        "min": stats["min"],
        "max": stats["max"],
        "first_run_s": warm,
        "peak_memory_mb": peak / 2**20 if peak is not None else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    batches = [1, 2] if args.dry_run else [1, 8, 64]
    backend, mode = ("eager", None) if args.dry_run else ("inductor", "reduce-overhead")
    deadline = time.perf_counter() + args.budget_s

    def fresh() -> tuple[Any, str]:
        if args.dry_run:
            return tiny_llama(4).to(dtype), "tiny Llama (dry run)"
        model, name = smollm2_shaped(dtype)
        return model.to(device), name

    cells: dict[str, dict[str, dict[str, Any]]] = {}
    name = ""
    for mode_name in MODES:
        for implementation in IMPLEMENTATIONS:
            plain, name = fresh()
            model, steering = steered(plain, implementation)
            compiled = mode_name != "eager"
            if compiled:
                model.forward = torch.compile(model.forward, backend=backend, mode=mode, dynamic=False)
            row: dict[str, Any] = {}
            for batch in batches:
                over = time.perf_counter() > deadline
                row[f"b{batch}"] = "not run (time budget)" if over else cell(model, batch, args, device, compiled)
            steering.close()
            cells.setdefault(mode_name, {})[implementation] = row
            del model, plain
            if device == "cuda":
                torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "model": name,
        "dtype": str(dtype).removeprefix("torch."),
        "batches": batches,
        "new_tokens": args.new_tokens,
        "trials": args.trials,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cells": cells,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU decode: {report['model']}, {report['dtype']}, {report['device']}",
        "",
        f"torch {report['torch']}, transformers {report['transformers']}. {report['new_tokens']} new tokens from "
        f"8-token prompts, median of {report['trials']} runs; every layer steered (steerable) or hooked. Cells: "
        "ms/token (x vanilla of the same mode), peak memory.",
        "",
        "| mode | implementation | " + " | ".join(f"batch {b}" for b in report["batches"]) + " |",
        "| --- | --- |" + " --- |" * len(report["batches"]),
    ]
    for mode, rows in report["cells"].items():
        for implementation, row in rows.items():
            out = []
            for batch in report["batches"]:
                cell, base = row[f"b{batch}"], rows["vanilla"][f"b{batch}"]
                if isinstance(cell, str):
                    out.append(cell)
                    continue
                ratio = f" (x{cell['ms_per_token'] / base['ms_per_token']:.3f})" if isinstance(base, dict) else ""
                memory = f", {cell['peak_memory_mb']:.0f} MB" if cell["peak_memory_mb"] is not None else ""
                out.append(f"{cell['ms_per_token']:.3f}{ratio}{memory}")
            lines.append(f"| {mode} | {implementation} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="the same path on the CPU with a tiny model")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting new cells after this")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA GPU here; nothing to measure (--dry-run runs the same path on the CPU)")
        return 0
    if args.dry_run:
        args.trials, args.new_tokens = 1, 3
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_dry_run" if args.dry_run else "gpu"
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
