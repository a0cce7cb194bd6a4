"""The evaluation report on SmolLM2-135M-Instruct: CAA behaviours and the sentiment vector.

    python -m benchmarks.evaluation_report [--data DIR] [--train 100] [--test 50]

The CAA data folder is ``--data`` (default ``$STEERABLE_CAA_DATA``).
(a) For refusal, corrigible-neutral-HHH and coordinate-other-ais: train `mean` vectors on the first
``--train`` items of <data>/generate/<behaviour>/generate_dataset.json, as given (letters unbalanced) and
with each question in both answer orders (``balance="swap"``); diagnose both on the held-out test items
(behaviour AUC, answer-letter AUC, cosine with the letter direction, per layer); sweep layers x
multipliers with the order-swapped vector on the first ``--test`` items of
<data>/test/<behaviour>/test_dataset_ab.json (chat template, bootstrap intervals), pick
the most steerable layer, and report p(matching) there with and without the chat template.
(b) The shipped sentiment vector (layer 6): VADER compound of greedy replies to the held-out prompts and
their perplexity under the unsteered model, over multipliers.
Writes benchmarks/results/evaluation/ (report.md, tables, plots, sample generations).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.data import add_data_argument, behaviour_files, caa_data
from steerable import SteeringVector, train_steering_vector
from steerable.research.ab import ABItem, LetterImbalanceWarning, ab_pairs, letter_counts, load_ab_dataset
from steerable.research.datasets import sentiment_pairs, sentiment_prompts
from steerable.research.diagnostics import diagnose
from steerable.research.evaluation import ab_scores, open_ended
from steerable.research.sweep import plot_behaviour_vs_fluency, plot_sweep, summarize_generations, sweep_ab, write_table
from steerable.testing import smollm2

BEHAVIOURS = ["refusal", "corrigible-neutral-HHH", "coordinate-other-ais"]
LAYERS = [3, 6, 9, 12, 15, 18]
MULTIPLIERS = [-2.0, -1.0, 0.0, 1.0, 2.0]
SENTIMENT_MULTIPLIERS = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]


def intro(args: argparse.Namespace) -> list[str]:
    return [
        "# Evaluation report: SmolLM2-135M-Instruct (fp32, CPU)",
        "",
        f"Command: `python -m benchmarks.evaluation_report --train {args.train} --test {args.test}`.",
        "",
        "## (a) CAA behaviours (A/B, p(matching) = p(matching letter) / (p(A) + p(B)))",
        "",
        "### Is the vector the behaviour or the answer letter?",
        "",
        f"`mean` vectors trained on the first {args.train} items of `generate/<behaviour>`, as given and with every "
        'question in both answer orders (`balance="swap"`, the CAA paper\'s design). Diagnosed on the first '
        f"{args.test} items of `test/<behaviour>/test_dataset_ab.json`, read in both orders: behaviour AUC (positive "
        "vs negative projections; 0.5 is chance), answer-letter AUC (A-texts vs B-texts, direction-free) and the "
        "cosine of the vector with the letter direction (mean A-read minus mean B-read).",
        "",
        "| behaviour | training letters | layer | norm | behaviour AUC | letter AUC | cos(letter) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]


def sweep_intro(args: argparse.Namespace) -> list[str]:
    return [
        "",
        "### Steering with the order-swapped vectors",
        "",
        f"Evaluated on the first {args.test} items of `test/<behaviour>/test_dataset_ab.json`; layers {LAYERS}, "
        f"multipliers {MULTIPLIERS}; chat template on; [low, high] is the 95% bootstrap interval over items (seed 0). "
        "The most steerable layer is the one with the largest mean per-item slope.",
        "",
        "| behaviour | best layer | unsteered | p(matching) at -2 / 0 / +2 (chat) | same without chat template | "
        "mean slope [95% CI] | anti-steerable items |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]


def diagnosed(
    model: Any, tokenizer: Any, behaviour: str, train_items: list[ABItem], test_items: list[ABItem]
) -> tuple[SteeringVector, list[str]]:
    """(the order-swapped vector, the diagnosis rows of it and of the vector trained as given)."""
    vectors, lines = {}, []
    for balance in (None, "swap"):
        with warnings.catch_warnings():  # the imbalance is the point of the comparison
            warnings.simplefilter("ignore", LetterImbalanceWarning)
            pairs = ab_pairs(tokenizer, train_items, balance=balance)
        vector = train_steering_vector(
            model, tokenizer, pairs, layers=LAYERS, description=f"{behaviour} mean, balance={balance}"
        )
        vectors[balance] = vector
        counts = letter_counts(train_items) if balance is None else {"A": len(train_items), "B": len(train_items)}
        label = ("as given " if balance is None else "both orders ") + " / ".join(f"{n} {k}" for k, n in counts.items())
        for row in diagnose(model, tokenizer, vector, test_items).layers:
            lines.append(
                f"| {behaviour} | {label} | {row.layer} | {row.norm:.2f} | {row.behaviour_auc:.3f} | "
                f"{row.letter_auc:.3f} | {row.letter_cosine:+.3f}"
                + (" (letter-driven) |" if row.letter_driven else " |")
            )
    return vectors["swap"], lines


def swept(
    model: Any, tokenizer: Any, behaviour: str, vector: SteeringVector, test_items: list[ABItem], out: Path
) -> str:
    """Sweep layers x multipliers (tables and plots under ``out``); the row of the sweep table."""
    vector.save(out / f"{behaviour}.safetensors")
    sweep = sweep_ab(model, tokenizer, test_items, vector, MULTIPLIERS, LAYERS, behaviour=behaviour)
    write_table(sweep, out / f"{behaviour}_sweep")
    plot_sweep(sweep, out / f"{behaviour}_sweep")
    plot_sweep(sweep, out / f"{behaviour}_steerability", metric="steerability")
    best_layer = sweep.best_layer()
    at = {r["multiplier"]: r for r in sweep.rows if r["layer"] == best_layer}
    plain = ab_scores(model, tokenizer, test_items, vector.select(best_layer), [-2.0, 0.0, 2.0], chat=False)
    plain_means = plain.mean(0).tolist()
    best = at[0.0]
    return (
        f"| {behaviour} | {best_layer} | {sweep.unsteered_mean:.3f} | "
        + " / ".join(
            f"{at[m]['p_matching']:.3f} [{at[m]['p_matching_low']:.3f}, {at[m]['p_matching_high']:.3f}]"
            for m in (-2.0, 0.0, 2.0)
        )
        + f" | {plain_means[0]:.3f} / {plain_means[1]:.3f} / {plain_means[2]:.3f} | "
        f"{best['steerability']:.4f} [{best['steerability_low']:.4f}, {best['steerability_high']:.4f}] | "
        f"{100 * best['anti_steerable_fraction']:.0f}% |"
    )


def sentiment_section(model: Any, tokenizer: Any, out: Path) -> list[str]:
    """(b): the shipped sentiment vector over multipliers, VADER and perplexity; samples and plot under ``out``."""
    vector = train_steering_vector(model, tokenizer, sentiment_pairs(tokenizer), layers=[6])
    generations = open_ended(model, tokenizer, sentiment_prompts(), vector, SENTIMENT_MULTIPLIERS, max_new_tokens=40)
    summary = summarize_generations(generations)
    write_table(summary, out / "sentiment_sweep")
    (out / "sentiment_samples.json").write_text(json.dumps([g.__dict__ for g in generations], indent=1))
    plot_behaviour_vs_fluency(
        generations,
        out / "sentiment_tradeoff.png",
        "sentiment: mean vector (layer 6) on SmolLM2-135M-Instruct",
        "mean VADER compound",
    )
    base = next(s for s in summary if s["multiplier"] == 0.0)
    lines = [
        "",
        "## (b) Sentiment vector (shipped pairs, layer 6): VADER vs multiplier and perplexity",
        "",
        f"{len(sentiment_prompts())} held-out prompts, greedy, 40 new tokens; perplexity of each reply under the "
        "unsteered model (median); distinct-2 for repetition.",
        "",
        "| multiplier | mean VADER compound [95% CI] | median perplexity | x unsteered | distinct-2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        lines.append(
            f"| {s['multiplier']:+g} | {s['judge']:+.3f} [{s['judge_low']:+.3f}, {s['judge_high']:+.3f}] | "
            f"{s['perplexity']:.2f} | "
            f"{s['perplexity'] / base['perplexity']:.2f} | {s['distinct2']:.2f} |"
        )
    return lines + ["", _sentiment_verdict(summary, base["perplexity"]), "", "![trade-off](sentiment_tradeoff.png)", ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.evaluation_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_argument(parser)
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/results/evaluation")
    args = parser.parse_args(argv)
    files = {b: behaviour_files(b) for b in BEHAVIOURS}
    caa = caa_data(args.data, *(f for pair in files.values() for f in pair), prog=parser.prog)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = smollm2()
    lines, sweep_lines = intro(args), sweep_intro(args)
    for behaviour, (train_file, test_file) in files.items():
        train_items = load_ab_dataset(caa / train_file)[: args.train]
        test_items = load_ab_dataset(caa / test_file)[: args.test]
        vector, rows = diagnosed(model, tokenizer, behaviour, train_items, test_items)
        lines += rows
        sweep_lines.append(swept(model, tokenizer, behaviour, vector, test_items, out))
    lines += sweep_lines
    lines += [
        "",
        "Curves (one line per layer, 95% intervals, chance and unsteered lines), steerability by layer, and",
        "layer x multiplier heatmaps:",
        "",
    ]
    for behaviour in BEHAVIOURS:
        lines.append(
            f"![{behaviour}]({behaviour}_sweep_curves.png) ![{behaviour}]({behaviour}_steerability_curves.png) "
            f"![{behaviour}]({behaviour}_sweep_heatmap.png)"
        )
    lines += sentiment_section(model, tokenizer, out)
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
