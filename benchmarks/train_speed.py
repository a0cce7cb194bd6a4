"""Training time: steerable vs steering-vectors 0.12.2 on the same model, pairs and layers.

    python -m benchmarks.train_speed [--data DIR] [--pairs 64] [--trials 3] > benchmarks/results/train_speed.md

SmolLM2-135M-Instruct, CAA refusal A/B pairs from ``--data`` (default ``$STEERABLE_CAA_DATA``; the file
``generate/refusal/generate_dataset.json`` under it), read by ``steerable.research.ab`` (chat-formatted
prompt plus the matching vs non-matching answer letter, read at the letter), layers 0..29, method
"mean". Trials are interleaved; medians and min/max are reported. The vectors are checked to be equal.
Prints the markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.data import add_data_argument, behaviour_files, caa_data
from benchmarks.measure import seconds
from steerable import train_steering_vector
from steerable.research.ab import LetterImbalanceWarning, ab_pairs, load_ab_dataset
from steerable.testing import smollm2, smollm2_path


def caa_pairs(tokenizer: Any, path: Path, n: int) -> list[tuple[str, str]]:
    """The first ``n`` items of a CAA A/B file as (positive, negative) texts, the form both libraries take."""
    with warnings.catch_warnings():  # a speed benchmark: which letter matches does not change the time
        warnings.simplefilter("ignore", LetterImbalanceWarning)
        pairs = ab_pairs(tokenizer, load_ab_dataset(path)[:n])
    return [(pair.positive, pair.negative) for pair in pairs]


def trials(runs: dict[str, Callable[[], Any]], count: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """(seconds per run name, the last result of each): one warm-up, then ``count`` interleaved trials."""
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}

    def record(name: str, run: Callable[[], Any]) -> None:
        with torch.inference_mode():
            results[name] = run()

    for _ in range(count):
        for name, run in runs.items():
            times[name].append(seconds(record, name, run))
    return times, results


def report(times: dict[str, list[float]], pairs: int, layers: int, worst: float) -> str:
    base = statistics.median(times["steerable"])
    machine = platform.processor() or platform.machine()
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    lines = [
        f"# Training time, {pairs} CAA refusal pairs, {layers} layers, mean, SmolLM2-135M fp32 CPU",
        f"{versions}, {machine}, {torch.get_num_threads()} threads\n",
        "| implementation | median s | min s | max s | x steerable |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {median / base:.1f} |")
    lines.append(f"\nmax |steerable - steering-vectors| over all layers: {worst:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__)
    add_data_argument(parser)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    train_file = behaviour_files("refusal")[0]
    data = caa_data(args.data, train_file, prog=parser.prog)
    import steering_vectors as sv

    model, tokenizer = smollm2()
    vanilla = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path()).eval()  # hooks need no wrapping
    pairs = caa_pairs(tokenizer, data / train_file, args.pairs)
    layers = list(range(model.config.num_hidden_layers))
    tokenizer.padding_side = "left"
    runs = {
        "steerable": lambda: train_steering_vector(
            model, tokenizer, pairs, layers=layers, batch_size=args.batch_size, show_progress=False
        ),
        "steering-vectors (same batch size)": lambda: sv.train_steering_vector(
            vanilla, tokenizer, pairs, layers=layers, batch_size=args.batch_size
        ),
        "steering-vectors (its default batch_size=1)": lambda: sv.train_steering_vector(
            vanilla, tokenizer, pairs, layers=layers
        ),
    }
    times, results = trials(runs, args.trials)
    ours, theirs = results["steerable"], results["steering-vectors (its default batch_size=1)"]
    worst = max(float((ours[i] - theirs.layer_activations[i]).abs().max()) for i in layers)
    print(report(times, len(pairs), len(layers), worst))


if __name__ == "__main__":
    main()
