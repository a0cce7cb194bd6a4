"""Peak memory while training `mean` over all layers of SmolLM2-135M: steerable (pairs from a generator,
streamed) vs steering-vectors 0.12.2 (keeps every activation), at 100, 1,000 and 5,000 pairs.

    python -m benchmarks.training_memory [--pairs 100,1000,5000]

Each run is a fresh process; it samples its RSS every 5 ms while training and reports the peak, and
its RSS after loading the model, before training. Pairs are short texts made from the shipped topic
prompts (a food prompt vs another prompt, numbered so no two are equal), read at the last token. Writes
benchmarks/results/training_memory.md and .json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.measure import peak_rss


def pairs(n: int) -> Iterator[tuple[str, str]]:
    from steerable.research.datasets import topic_prompts

    food, other = topic_prompts()
    for k in range(n):
        yield f"{food[k % len(food)]} ({k})", f"{other[k % len(other)]} ({k})"


def train(implementation: str, model: Any, tokenizer: Any, layers: list[int], n: int) -> None:
    """Train `mean` on ``n`` pairs with steerable (from the generator) or steering-vectors (from a list)."""
    if implementation == "steerable":
        from steerable import train_steering_vector

        train_steering_vector(model, tokenizer, pairs(n), layers=layers, batch_size=16, show_progress=False)
        return
    import steering_vectors as sv

    from steerable import SteerableModel

    vanilla = SteerableModel.unwrap(model)  # its hooks go on the plain model
    sv.train_steering_vector(vanilla, tokenizer, list(pairs(n)), layers=layers, batch_size=16, show_progress=False)


def worker(implementation: str, n: int) -> None:
    import torch

    from steerable.testing import smollm2

    torch.set_num_threads(2)
    model, tokenizer = smollm2()
    tokenizer.padding_side = "left"
    layers = list(range(model.config.num_hidden_layers))
    with torch.inference_mode(), peak_rss(interval_s=0.005) as memory:
        start = time.perf_counter()
        train(implementation, model, tokenizer, layers, n)
        seconds = time.perf_counter() - start
    result = {"implementation": implementation, "pairs": n, "loaded_mb": memory.before / 2**20}
    result["peak_mb"] = memory.peak / 2**20
    print(json.dumps(result | {"seconds": seconds}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training_memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pairs", default="100,1000,5000")
    parser.add_argument("--out", default="benchmarks/results/training_memory")
    parser.add_argument("--worker", nargs=2, metavar=("IMPLEMENTATION", "PAIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    counts = [int(x) for x in args.pairs.split(",")]
    rows = []
    for implementation in ("steerable", "steering-vectors"):
        for n in counts:
            command = [sys.executable, "-m", "benchmarks.training_memory", "--worker", implementation, str(n)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = [
        "# Peak memory while training `mean` over all 30 layers of SmolLM2-135M-Instruct (fp32, CPU)",
        "",
        f"Command: `python -m benchmarks.training_memory --pairs {args.pairs}`. Each run a fresh process; peak RSS "
        "sampled every 5 ms while training, and RSS after loading the model; steerable reads pairs from a generator.",
        "",
        "| implementation | pairs | RSS after load (MB) | peak RSS in training (MB) | peak - load (MB) | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['implementation']} | {row['pairs']} | {row['loaded_mb']:.0f} | {row['peak_mb']:.0f} | "
            f"{row['peak_mb'] - row['loaded_mb']:.0f} | {row['seconds']:.1f} |"
        )
    growth = {}
    for implementation in ("steerable", "steering-vectors"):
        mine = [r for r in rows if r["implementation"] == implementation]
        growth[implementation] = mine[-1]["peak_mb"] - mine[0]["peak_mb"]
    verdict = "met" if growth["steerable"] <= 50 else "MISSED"
    lines += [
        "",
        f"Peak growth from {counts[0]} to {counts[-1]} pairs: steerable {growth['steerable']:+.0f} MB, "
        f"steering-vectors {growth['steering-vectors']:+.0f} MB. Target (steerable <= 50 MB): {verdict}.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
