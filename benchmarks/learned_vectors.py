"""Learned vs aggregated steering vectors on SmolLM2-135M-Instruct: an honest report, not a gate.

    python -m benchmarks.learned_vectors [--data DIR] [--prompts 12] [--caa-train 64] [--caa-test 50]

Sentiment (the shipped pairs, layer 6): `mean`, `pca_diff`, BiPO and likelihood vectors, each scaled
to the `mean` vector's norm, swept over multipliers; the VADER spread among multipliers whose replies
stay fluent (median perplexity <= 1.5x unsteered), and distinct-2. CAA refusal (layer 9): A/B
p(matching) at -2 / 0 / +2 for `mean`, BiPO and likelihood vectors (norm-matched), on the CAA files under
``--data`` (default ``$STEERABLE_CAA_DATA``). Training time and
peak memory (RSS growth while training) for each. Writes benchmarks/results/learned/.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.data import add_data_argument, behaviour_files, caa_data
from benchmarks.measure import peak_rss
from steerable import Completion, Preference, SteeringVector, optimize_steering_vector, train_steering_vector
from steerable.research.ab import ab_pairs, ab_prompt, load_ab_dataset
from steerable.research.datasets import sentiment_pairs, sentiment_preferences, sentiment_prompts
from steerable.research.evaluation import ab_scores, open_ended
from steerable.research.sweep import summarize_generations
from steerable.testing import smollm2

MULTIPLIERS = [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]
SENTIMENT_LAYER, CAA_LAYER = 6, 9


def measured(train: Callable[[], SteeringVector]) -> tuple[SteeringVector, float, float]:
    """(vector, seconds, peak RSS growth in MB while training), sampling RSS every 10 ms."""
    with peak_rss(interval_s=0.01) as memory:
        start = time.perf_counter()
        vector = train()
        taken = time.perf_counter() - start
    return vector, taken, memory.growth_mb


def matched(vector: SteeringVector, reference: SteeringVector, layer: int) -> SteeringVector:
    scale = float(reference[layer].norm() / vector[layer].norm().clamp_min(1e-12))
    return SteeringVector({layer: vector[layer] * scale}, method=vector.method)


def fluent_spread(summary: list[dict[str, float]]) -> tuple[float, float]:
    base = next(s for s in summary if s["multiplier"] == 0.0)["perplexity"]
    fluent = [s for s in summary if s["perplexity"] <= 1.5 * base]
    judges = [s["judge"] for s in fluent]
    distinct = min(s["distinct2"] for s in fluent)
    return max(judges) - min(judges), distinct


def sentiment_section(model: Any, tokenizer: Any, args: argparse.Namespace, out: Path) -> list[str]:
    """The sentiment comparison: four methods trained, norm-matched and swept; table rows and the plot."""
    layer = SENTIMENT_LAYER
    preferences = sentiment_preferences(tokenizer)
    completions = [Completion(p.prompt, p.chosen) for p in preferences]
    learn = learning(args)
    trainers: dict[str, Callable[[], SteeringVector]] = {
        "mean": lambda: train_steering_vector(model, tokenizer, sentiment_pairs(tokenizer), layers=[layer]),
        "pca_diff": lambda: train_steering_vector(
            model, tokenizer, sentiment_pairs(tokenizer), layers=[layer], method="pca_diff"
        ),
        "bipo": lambda: optimize_steering_vector(model, tokenizer, preferences, [layer], "bipo", beta=0.1, **learn),
        "likelihood": lambda: optimize_steering_vector(model, tokenizer, completions, [layer], "likelihood", **learn),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, train in trainers.items():
        vector, seconds, memory = measured(train)
        results[name] = {"vector": vector, "seconds": seconds, "memory_mb": memory}
    reference = results["mean"]["vector"]
    prompts = sentiment_prompts()[: args.prompts]
    for row in results.values():
        generations = open_ended(model, tokenizer, prompts, matched(row["vector"], reference, layer), MULTIPLIERS)
        row["summary"] = summarize_generations(generations)
        row["spread"], row["distinct2"] = fluent_spread(row["summary"])
    _plot(results, out / "sentiment_methods.png")
    return sentiment_lines(results, float(reference[layer].norm()), len(prompts))


def sentiment_lines(results: dict[str, dict[str, Any]], norm: float, prompts: int) -> list[str]:
    lines = [
        f"## Sentiment (shipped pairs, layer {SENTIMENT_LAYER})",
        "",
        f"Each vector scaled to the `mean` vector's norm ({norm:.2f}); multipliers "
        f"{MULTIPLIERS}; {prompts} held-out prompts, greedy, 40 new tokens. Spread = max - min mean VADER "
        "over the multipliers whose median perplexity stays within 1.5x the unsteered replies'.",
        "",
        "| method | VADER at -2 / 0 / +2 | fluent spread | min distinct-2 (fluent) | train s | peak RSS growth MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results.items():
        at = {s["multiplier"]: s["judge"] for s in row["summary"]}
        lines.append(
            f"| {name} | {at[-2.0]:+.3f} / {at[0.0]:+.3f} / {at[2.0]:+.3f} | {row['spread']:.3f} | "
            f"{row['distinct2']:.2f} | {row['seconds']:.1f} | {row['memory_mb']:.0f} |"
        )
    best_learned = max(("bipo", "likelihood"), key=lambda n: results[n]["spread"])
    verdict = "met" if results[best_learned]["spread"] > results["mean"]["spread"] else "MISSED"
    return lines + [
        "",
        f"Target (a learned vector reaches a larger fluent spread than `mean`): {verdict}: best learned "
        f"{best_learned} {results[best_learned]['spread']:.3f} vs mean {results['mean']['spread']:.3f}.",
        "",
        "![sentiment](sentiment_methods.png)",
    ]


def caa_section(model: Any, tokenizer: Any, args: argparse.Namespace, caa: Path) -> list[str]:
    """CAA refusal: mean, BiPO and likelihood vectors at one layer, A/B p(matching) at -2 / 0 / +2."""
    train_file, test_file = behaviour_files("refusal")
    train_items = load_ab_dataset(caa / train_file)[: args.caa_train]
    test_items = load_ab_dataset(caa / test_file)[: args.caa_test]
    prefs = [Preference(ab_prompt(tokenizer, i.question), i.matching, i.not_matching) for i in train_items]
    learn = learning(args)
    caa_trainers: dict[str, Callable[[], SteeringVector]] = {
        "mean": lambda: train_steering_vector(model, tokenizer, ab_pairs(tokenizer, train_items), layers=[CAA_LAYER]),
        "bipo": lambda: optimize_steering_vector(model, tokenizer, prefs, [CAA_LAYER], "bipo", beta=0.1, **learn),
        "likelihood": lambda: optimize_steering_vector(
            model, tokenizer, [Completion(p.prompt, p.chosen) for p in prefs], [CAA_LAYER], "likelihood", **learn
        ),
    }
    lines = [
        "",
        f"## CAA refusal (layer {CAA_LAYER}), A/B p(matching)",
        "",
        f"Trained on the first {len(train_items)} items of `generate/refusal` (BiPO: chosen = the matching letter, "
        f"rejected = the other, after the A/B chat prompt); evaluated on the first {len(test_items)} test items; "
        "vectors scaled to the `mean` vector's norm.",
        "",
        "| method | p(matching) at -2 / 0 / +2 | train s | peak RSS growth MB |",
        "| --- | --- | --- | --- |",
    ]
    caa_mean: SteeringVector | None = None
    for name, train in caa_trainers.items():
        vector, seconds, memory = measured(train)
        caa_mean = caa_mean or vector
        scores = ab_scores(model, tokenizer, test_items, matched(vector, caa_mean, CAA_LAYER), [-2.0, 0.0, 2.0])
        p = scores.mean(0).tolist()
        lines.append(f"| {name} | {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} | {seconds:.1f} | {memory:.0f} |")
    return lines


def learning(args: argparse.Namespace) -> dict[str, Any]:
    """The learned vectors' optimiser settings."""
    return dict(lr=2e-2, epochs=args.epochs, batch_size=8, seed=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.learned_vectors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_argument(parser)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--caa-train", type=int, default=64)
    parser.add_argument("--caa-test", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/learned")
    args = parser.parse_args(argv)
    caa = caa_data(args.data, *behaviour_files("refusal"), prog=parser.prog)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, tokenizer = smollm2()
    lines = [
        "# Learned vs aggregated steering vectors: SmolLM2-135M-Instruct (fp32, CPU)",
        "",
        f"Command: `python -m benchmarks.learned_vectors --prompts {args.prompts} --caa-train {args.caa_train} "
        f"--caa-test {args.caa_test} --epochs {args.epochs}`.",
        "",
    ]
    lines += sentiment_section(model, tokenizer, args, out)
    lines += caa_section(model, tokenizer, args, caa)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for name, row in results.items():
        summary = row["summary"]
        axis.plot([s["multiplier"] for s in summary], [s["judge"] for s in summary], marker="o", label=name)
    axis.set_xlabel("multiplier (vectors scaled to the mean vector's norm)")
    axis.set_ylabel("mean VADER compound of replies")
    axis.set_title("Sentiment steering on SmolLM2-135M-Instruct, layer 6")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
