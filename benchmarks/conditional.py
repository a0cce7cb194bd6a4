"""Conditional and per-request steering on SmolLM2-135M-Instruct: does it work, and what does it cost?

    python -m benchmarks.conditional [--tokens 32] [--repeats 5]

Efficacy: a condition vector (logistic, read over the last user turn) trained on 30 food and 30 other
prompts (steerable/data/topic_prompts.json); layer, threshold and comparator picked by
``find_best_condition_point``; precision, recall and F1 on the 20 held-out prompts. The shipped
sentiment vector (layer 6) conditioned on it, in one mixed batch of the held-out prompts: VADER of
greedy replies, steered vs unsteered, for rows where the condition fired and rows where it did not.

Performance (interleaved repeats, medians): decode ms/token of unconditional vs conditional steering
(vs the idle model), batch 1 and 8; and N requests with N different vectors batched in one
``generate`` (``steer_rows``) vs N sequential ``generate`` calls, tokens/s, N = 1, 4, 8, 16.
Writes benchmarks/results/conditional/ (report.md, results.json).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import seconds
from steerable import Condition, SteeringVector, train_steering_vector
from steerable.chat_roles import chat_prompt
from steerable.research.datasets import sentiment_pairs, sentiment_prompts, topic_prompts
from steerable.research.evaluation import vader_judge
from steerable.research.sweep import bootstrap_ci
from steerable.testing import smollm2
from steerable.train.condition_search import find_best_condition_point

CONDITION_LAYERS = [2, 4, 6]
BEHAVIOUR_LAYER = 6
MULTIPLIERS = [-4.0, 4.0]


def batch(tokenizer: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def replies(model: Any, tokenizer: Any, inputs: dict[str, torch.Tensor], tokens: int) -> list[str]:
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def condition_for_food(model: Any, tokenizer: Any) -> tuple[SteeringVector, Any, list[str], list[str]]:
    """(the logistic topic vector, ``find_best_condition_point``'s search, held-out food and other prompts)."""
    food, other = topic_prompts()
    rng = random.Random(0)
    rng.shuffle(food)
    rng.shuffle(other)
    food = [chat_prompt(tokenizer, p) for p in food]
    other = [chat_prompt(tokenizer, p) for p in other]
    train_food, test_food, train_other, test_other = food[:30], food[30:], other[:30], other[30:]
    topic = train_steering_vector(
        model,
        tokenizer,
        list(zip(train_food, train_other, strict=True)),
        layers=CONDITION_LAYERS,
        method="logistic",
        read_token_index="last_user_turn",
        show_progress=False,
    )
    search = find_best_condition_point(
        model, tokenizer, train_food, train_other, topic, test_positive=test_food, test_negative=test_other
    )
    return topic, search, test_food, test_other


def efficacy_intro(condition: Condition, search: Any, tokens: int) -> list[str]:
    held = search.held_out
    return [
        "## Efficacy: food condition x sentiment vector",
        "",
        f"Condition: logistic topic vector (food vs other), read over the last user turn, layers {CONDITION_LAYERS}; "
        f"`find_best_condition_point` picked layer {condition.layer}, score {condition.comparator} "
        f"{condition.threshold:.4f} (projection similarity, CAST's). Training F1 {search.train['f1']:.3f}.",
        "",
        f"Held-out prompts (10 food, 10 other): precision {held['precision']:.3f}, recall {held['recall']:.3f}, "
        f"**F1 {held['f1']:.3f}** (target >= 0.9: {'met' if held['f1'] >= 0.9 else 'MISSED'}).",
        "",
        f"Mixed batch of the 20 held-out prompts, greedy, {tokens} new tokens, the sentiment vector (layer "
        f"{BEHAVIOUR_LAYER}) conditioned on food. VADER compound, mean [95% bootstrap interval]; shift = steered "
        "minus unsteered, per row.",
        "",
        "| multiplier | rows | n | unsteered VADER | steered VADER | shift | rows whose reply changed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]


def shifts(
    multiplier: float, fired: list[bool], plain: list[str], steered: list[str], lines: list[str]
) -> list[dict[str, Any]]:
    """VADER before and after steering, for the rows where the condition fired and where it did not."""
    judge = vader_judge()
    run = []
    for group, wanted in (("condition fired", True), ("condition not fired", False)):
        rows = [k for k in range(len(plain)) if fired[k] == wanted]
        if not rows:
            continue
        before = [judge(plain[k]) for k in rows]
        after = [judge(steered[k]) for k in rows]
        shift = bootstrap_ci([a - b for a, b in zip(after, before, strict=True)])
        changed = sum(plain[k] != steered[k] for k in rows)
        lines.append(
            f"| {multiplier:+g} | {group} | {len(rows)} | {statistics.fmean(before):+.3f} | "
            f"{statistics.fmean(after):+.3f} | {shift[0]:+.3f} [{shift[1]:+.3f}, {shift[2]:+.3f}] | {changed} |"
        )
        run.append({"group": group, "rows": rows, "before": before, "after": after, "changed": changed})
    return run


def efficacy(model: Any, tokenizer: Any, tokens: int, lines: list[str]) -> dict[str, Any]:
    topic, search, test_food, test_other = condition_for_food(model, tokenizer)
    condition: Condition = search.condition
    sentiment = train_steering_vector(model, tokenizer, sentiment_pairs(tokenizer), layers=[BEHAVIOUR_LAYER])
    prompts = test_food + test_other
    is_food = [True] * len(test_food) + [False] * len(test_other)
    inputs = batch(tokenizer, prompts)
    plain = replies(model, tokenizer, inputs, tokens)
    # which rows the condition fires on: the search's own scores, recomputed on this batch
    from steerable.conditions import met
    from steerable.train.condition_search import prompt_scores

    fired = met(
        prompt_scores(model, tokenizer, prompts, topic, [condition.layer])[condition.layer],
        condition.threshold,
        condition.comparator,
    ).tolist()
    lines += efficacy_intro(condition, search, tokens)
    result: dict[str, Any] = {
        "condition": {"layer": condition.layer, "comparator": condition.comparator, "threshold": condition.threshold},
        "train": search.train,
        "held_out": search.held_out,
        "fired": fired,
        "is_food": is_food,
        "runs": {},
    }
    for multiplier in MULTIPLIERS:
        with model.steer(sentiment, multiplier, condition=condition):
            steered = replies(model, tokenizer, inputs, tokens)
        run = shifts(multiplier, fired, plain, steered, lines)
        result["runs"][str(multiplier)] = {"groups": run, "steered": steered}
    result["unsteered"] = plain
    lines.append("")
    return result


class Decoder:
    """Greedy decoding of exactly ``tokens`` new tokens: idle, under ``steer_rows``, or one request at a time."""

    def __init__(self, model: Any, tokenizer: Any, tokens: int) -> None:
        self.model, self.tokenizer, self.tokens = model, tokenizer, tokens

    def decode(self, inputs: dict[str, torch.Tensor]) -> None:
        with torch.inference_mode():
            self.model.generate(
                **inputs,
                max_new_tokens=self.tokens,
                min_new_tokens=self.tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )

    def batched(self, vectors: list[SteeringVector], inputs: dict[str, torch.Tensor]) -> None:
        with self.model.steer_rows(vectors):
            self.decode(inputs)

    def sequential(self, vectors: list[SteeringVector], each: list[dict[str, torch.Tensor]]) -> None:
        for v, inputs in zip(vectors, each, strict=True):
            with self.model.steer(v, 1.0):
                self.decode(inputs)


def decode_costs(
    dec: Decoder, prompts: list[str], vector: SteeringVector, condition: Condition, repeats: int, lines: list[str]
) -> dict[int, Any]:
    """Decode ms/token idle, steered and conditionally steered, at batch 1 and 8."""
    lines += [
        "## Performance",
        "",
        f"Decode: greedy, {dec.tokens} new tokens (forced), ms per generated token per batch, median of {repeats} "
        "interleaved repeats.",
        "",
        "| batch | idle | unconditional | conditional | conditional / unconditional |",
        "| --- | --- | --- | --- | --- |",
    ]
    result: dict[int, Any] = {}
    for size in (1, 8):
        inputs = batch(dec.tokenizer, (prompts * 8)[:size])
        times: dict[str, list[float]] = {"idle": [], "unconditional": [], "conditional": []}
        dec.decode(inputs)  # warm-up
        for _ in range(repeats):
            times["idle"].append(seconds(dec.decode, inputs))
            with dec.model.steer(vector, 1.0):
                times["unconditional"].append(seconds(dec.decode, inputs))
            with dec.model.steer(vector, 1.0, condition=condition):
                times["conditional"].append(seconds(dec.decode, inputs))
        ms = {k: 1000 * statistics.median(v) / dec.tokens for k, v in times.items()}
        result[size] = ms | {"raw_s": times}
        lines.append(
            f"| {size} | {ms['idle']:.2f} | {ms['unconditional']:.2f} | {ms['conditional']:.2f} | "
            f"{ms['conditional'] / ms['unconditional']:.3f} |"
        )
    return result


def request_rates(dec: Decoder, prompts: list[str], repeats: int, lines: list[str]) -> dict[int, Any]:
    """Tokens/s of N requests with N vectors: one batched ``generate`` vs N sequential ones."""
    lines += [
        "",
        f"Per-request serving: N requests, each with its own vector (random, layer {BEHAVIOUR_LAYER}), {dec.tokens} "
        "new tokens each; one batched `generate` with `steer_rows` vs N sequential `generate` calls (each under its "
        f"own `steer`). Tokens/s, median of {repeats} interleaved repeats.",
        "",
        "| N | batched tok/s | sequential tok/s | speed-up |",
        "| --- | --- | --- | --- |",
    ]
    result: dict[int, Any] = {}
    for n in (1, 4, 8, 16):
        vectors = [SteeringVector({BEHAVIOUR_LAYER: torch.randn(576) * 2}) for _ in range(n)]
        chosen = (prompts * 4)[:n]
        together = batch(dec.tokenizer, chosen)
        alone = [batch(dec.tokenizer, [p]) for p in chosen]
        dec.batched(vectors, together)
        runs: dict[str, list[float]] = {"batched": [], "sequential": []}
        for _ in range(repeats):
            runs["batched"].append(seconds(dec.batched, vectors, together))
            runs["sequential"].append(seconds(dec.sequential, vectors, alone))
        rate = {k: n * dec.tokens / statistics.median(v) for k, v in runs.items()}
        result[n] = rate | {"raw_s": runs}
        speedup = rate["batched"] / rate["sequential"]
        lines.append(f"| {n} | {rate['batched']:.1f} | {rate['sequential']:.1f} | {speedup:.2f}x |")
    return result


def performance(model: Any, tokenizer: Any, tokens: int, repeats: int, lines: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    vector = SteeringVector({BEHAVIOUR_LAYER: torch.randn(576) * 2})
    condition = Condition(torch.randn(576), 4, 0.0, ">")  # fires on about half of the rows: the cost is the same
    prompts = [chat_prompt(tokenizer, p) for p in sentiment_prompts()] + [
        chat_prompt(tokenizer, p) for p in topic_prompts()[0][:2]
    ]
    dec = Decoder(model, tokenizer, tokens)
    result: dict[str, Any] = {
        "decode": decode_costs(dec, prompts, vector, condition, repeats, lines),
        "requests": request_rates(dec, prompts, repeats, lines),
    }
    eight = result["requests"][8]
    verdict = "met" if eight["batched"] / eight["sequential"] >= 4 else "MISSED"
    lines += ["", f"Target (8 requests batched >= 4x 8 sequential generates): {verdict}.", ""]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.conditional",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/conditional")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = smollm2()
    lines = [
        "# Conditional and per-request steering: SmolLM2-135M-Instruct (fp32, CPU)",
        "",
        f"Command: `python -m benchmarks.conditional --tokens {args.tokens} --repeats {args.repeats}`; "
        f"torch threads {torch.get_num_threads()}.",
        "",
    ]
    results = {
        "efficacy": efficacy(model, tokenizer, 40, lines),
        "performance": performance(model, tokenizer, args.tokens, args.repeats, lines),
    }
    lines.append(f"Total time {time.perf_counter() - start:.0f} s.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
