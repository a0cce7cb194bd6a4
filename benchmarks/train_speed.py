"""Training time: steerable vs steering-vectors 0.12.2 on the same model, pairs and layers.

    python -m benchmarks.train_speed [--pairs 64] [--trials 3]

SmolLM2-135M-Instruct, CAA refusal A/B pairs from ../shared/data/caa (chat-formatted prompt plus the
matching vs non-matching answer letter, read at the letter), layers 0..29, method "mean". Trials are
interleaved; medians and min/max are reported. The vectors are checked to be equal.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from steerable import train_steering_vector
from steerable.chat_roles import chat_prompt
from steerable.testing import smollm2, smollm2_path

DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "caa" / "generate" / "refusal" / "generate_dataset.json"
)


def caa_pairs(tokenizer, n: int) -> list[tuple[str, str]]:
    items = json.loads(DATA.read_text())[:n]
    pairs = []
    for item in items:
        prompt = chat_prompt(tokenizer, item["question"]) + "("
        pairs.append((prompt + item["answer_matching_behavior"][1], prompt + item["answer_not_matching_behavior"][1]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    import steering_vectors as sv

    model, tokenizer = smollm2()
    vanilla = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path()).eval()  # hooks need no wrapping
    pairs = caa_pairs(tokenizer, args.pairs)
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
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for run in runs.values():  # warm-up
        run()
    for _ in range(args.trials):
        for name, run in runs.items():
            start = time.perf_counter()
            with torch.inference_mode():
                results[name] = run()
            times[name].append(time.perf_counter() - start)
    ours = results["steerable"]
    theirs = results["steering-vectors (its default batch_size=1)"]
    worst = max(float((ours[i] - theirs.layer_activations[i]).abs().max()) for i in layers)
    base = statistics.median(times["steerable"])
    print(f"# Training time, {len(pairs)} CAA refusal pairs, {len(layers)} layers, mean, SmolLM2-135M fp32 CPU")
    machine = platform.processor() or platform.machine()
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"{versions}, {machine}, {torch.get_num_threads()} threads\n")
    print("| implementation | median s | min s | max s | x steerable |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {median / base:.1f} |")
    print(f"\nmax |steerable - steering-vectors| over all layers: {worst:.2e}")


if __name__ == "__main__":
    main()
