"""The evaluation report on SmolLM2-135M-Instruct: CAA behaviours and the sentiment vector.

    python -m benchmarks.evaluation_report [--train 100] [--test 50]

(a) For refusal, corrigible-neutral-HHH and coordinate-other-ais: train a `mean` vector on the first
``--train`` items of ../shared/data/caa/generate/<behaviour>, sweep layers x multipliers on the first
``--test`` items of ../shared/data/caa/test/<behaviour>/test_dataset_ab.json (chat template), pick the
most steerable layer, and report p(matching) there with and without the chat template.
(b) The shipped sentiment vector (layer 6): VADER compound of greedy replies to the held-out prompts and
their perplexity under the unsteered model, over multipliers.
Writes benchmarks/results/evaluation/ (report.md, tables, plots, sample generations).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from steerable import SteeringVector, train_steering_vector
from steerable.datasets import sentiment_pairs, sentiment_prompts
from steerable.evaluation import ab_pairs, ab_scores, load_ab_dataset, open_ended
from steerable.offline import smollm2
from steerable.sweep import plot_behaviour_vs_fluency, plot_sweep, summarize_generations, sweep_ab, write_table

CAA = Path(__file__).resolve().parents[2] / "shared" / "data" / "caa"
BEHAVIOURS = ["refusal", "corrigible-neutral-HHH", "coordinate-other-ais"]
LAYERS = [3, 6, 9, 12, 15, 18]
MULTIPLIERS = [-2.0, -1.0, 0.0, 1.0, 2.0]
SENTIMENT_MULTIPLIERS = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/evaluation")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = smollm2()
    lines = [
        "# Evaluation report: SmolLM2-135M-Instruct (fp32, CPU)",
        "",
        f"Command: `python -m benchmarks.evaluation_report --train {args.train} --test {args.test}`.",
        "",
        "## (a) CAA behaviours (A/B, p(matching) = p(matching letter) / (p(A) + p(B)))",
        "",
        f"`mean` vectors trained on the first {args.train} items of `generate/<behaviour>`; evaluated on the "
        f"first {args.test} items of `test/<behaviour>/test_dataset_ab.json`; layers {LAYERS}, "
        f"multipliers {MULTIPLIERS}; chat template on. The most steerable layer is the one with the largest mean "
        "per-item slope.",
        "",
        "| behaviour | best layer | p(matching) at -2 / 0 / +2 (chat) | same without chat template | mean slope | "
        "anti-steerable items |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for behaviour in BEHAVIOURS:
        train_items = load_ab_dataset(CAA / "generate" / behaviour / "generate_dataset.json")[: args.train]
        test_items = load_ab_dataset(CAA / "test" / behaviour / "test_dataset_ab.json")[: args.test]
        vector = train_steering_vector(model, tokenizer, ab_pairs(tokenizer, train_items), layers=LAYERS, batch_size=16)
        vector.save(out / f"{behaviour}.safetensors")
        rows = sweep_ab(model, tokenizer, test_items, vector, MULTIPLIERS, LAYERS)
        write_table(rows, out / f"{behaviour}_sweep")
        plot_sweep(rows, out / f"{behaviour}_sweep")
        best = max(rows, key=lambda r: r["steerability"])
        at = {r["multiplier"]: r["p_matching"] for r in rows if r["layer"] == best["layer"]}
        alone = SteeringVector({best["layer"]: vector[best["layer"]]})
        plain = ab_scores(model, tokenizer, test_items, alone, [-2.0, 0.0, 2.0], chat=False).mean(0).tolist()
        lines.append(
            f"| {behaviour} | {best['layer']} | {at[-2.0]:.3f} / {at[0.0]:.3f} / {at[2.0]:.3f} | "
            f"{plain[0]:.3f} / {plain[1]:.3f} / {plain[2]:.3f} | {best['steerability']:.4f} | "
            f"{100 * best['anti_steerable_fraction']:.0f}% |"
        )
    lines += ["", "Curves (one line per layer) and layer x multiplier heatmaps:", ""]
    for behaviour in BEHAVIOURS:
        lines.append(f"![{behaviour}]({behaviour}_sweep_curves.png) ![{behaviour}]({behaviour}_sweep_heatmap.png)")

    vector = train_steering_vector(model, tokenizer, sentiment_pairs(tokenizer), layers=[6])
    generations = open_ended(model, tokenizer, sentiment_prompts(), vector, SENTIMENT_MULTIPLIERS, max_new_tokens=40)
    summary = summarize_generations(generations)
    write_table(summary, out / "sentiment_sweep")
    (out / "sentiment_samples.json").write_text(json.dumps([g.__dict__ for g in generations], indent=1))
    plot_behaviour_vs_fluency(generations, out / "sentiment_tradeoff.png")
    base = next(s for s in summary if s["multiplier"] == 0.0)
    lines += [
        "",
        "## (b) Sentiment vector (shipped pairs, layer 6): VADER vs multiplier and perplexity",
        "",
        f"{len(sentiment_prompts())} held-out prompts, greedy, 40 new tokens; perplexity of each reply under the "
        "unsteered model (median); distinct-2 for repetition.",
        "",
        "| multiplier | mean VADER compound | median perplexity | x unsteered | distinct-2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        lines.append(
            f"| {s['multiplier']:+g} | {s['judge']:+.3f} | {s['perplexity']:.2f} | "
            f"{s['perplexity'] / base['perplexity']:.2f} | {s['distinct2']:.2f} |"
        )
    lines += ["", _sentiment_verdict(summary, base["perplexity"]), "", "![trade-off](sentiment_tradeoff.png)", ""]
    lines.append(f"Total time {time.perf_counter() - start:.0f} s.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _sentiment_verdict(summary: list[dict[str, float]], base_perplexity: float) -> str:
    """The widest multiplier range (containing 0) that is monotonic with perplexity <= 2x unsteered."""
    best = None
    for i in range(len(summary)):
        for j in range(i + 1, len(summary)):
            window = summary[i : j + 1]
            if not any(s["multiplier"] == 0.0 for s in window):
                continue
            monotonic = all(a["judge"] < b["judge"] for a, b in zip(window, window[1:], strict=False))
            fluent = all(s["perplexity"] <= 2 * base_perplexity for s in window)
            spread = window[-1]["judge"] - window[0]["judge"]
            if monotonic and fluent and (best is None or spread > best[2]):
                best = (window[0]["multiplier"], window[-1]["multiplier"], spread)
    if best is None:
        return "Target (monotonic, spread >= 0.5, perplexity <= 2x): MISSED: no monotonic range around 0 stays fluent."
    verdict = "met" if best[2] >= 0.5 else "MISSED"
    return (
        f"Target (monotonic over a range, VADER spread >= 0.5, perplexity <= 2x unsteered): {verdict}: multipliers "
        f"{best[0]:+g}..{best[1]:+g} are monotonic with perplexity within 2x, spread {best[2]:.2f}."
    )


if __name__ == "__main__":
    main()
