"""Evaluation metrics: A/B scores, steerability, judge, fluency and open-ended generations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ab_cases import ITEMS

from steerable import SteerableModel, SteeringVector
from steerable.research.evaluation import (
    ab_pairs,
    ab_prompt,
    ab_scores,
    distinct_n,
    load_ab_dataset,
    open_ended,
    perplexity,
    steerability,
    vader_judge,
)
from steerable.research.sweep import plot_behaviour_vs_fluency, summarize_generations
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer

MULTIPLIERS = [-2.0, 0.0, 2.0]


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(ITEMS))
    model = SteerableModel.wrap(tiny_model("llama"))
    vector = SteeringVector({i: torch.randn(32, generator=torch.Generator().manual_seed(i)) for i in range(3)})
    return model, tiny_tokenizer(), load_ab_dataset(path), vector


def test_ab_metric_equals_direct_computation_from_logits(setup) -> None:
    model, tok, items, vector = setup
    scores = ab_scores(model, tok, items, vector, MULTIPLIERS, chat=False, batch_size=4)
    for k, item in enumerate(items):
        prompt = ab_prompt(tok, item.question, chat=False)
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
        for j, m in enumerate(MULTIPLIERS):
            with torch.no_grad(), model.steer(vector, m):
                probs = model(ids).logits[0, -1].softmax(-1)
            match, other = (a, b) if item.matching == "A" else (b, a)
            expected = probs[match] / (probs[match] + probs[other])
            assert abs(float(scores[k, j]) - float(expected)) < 1e-5
    assert not torch.allclose(scores[:, 0], scores[:, 2])  # steering moved the metric
    same = ab_scores(model, tok, items, vector, MULTIPLIERS, chat=False, batch_size=1)
    torch.testing.assert_close(scores, same, rtol=0, atol=1e-5)  # per-row batches equal single rows


def test_ab_pairs_read_at_the_letter(setup) -> None:
    _, tok, items, _ = setup
    pairs = ab_pairs(tok, items, chat=False)
    assert pairs[1].positive.endswith("Answer: (B") and pairs[1].negative.endswith("Answer: (A")
    assert pairs[0].positive == ab_prompt(tok, items[0].question, chat=False) + "A"


def test_steerability_matches_least_squares() -> None:
    scores = torch.tensor([[0.2, 0.5, 0.9], [0.6, 0.5, 0.3]])
    slopes, anti = steerability(scores, MULTIPLIERS)
    for k in range(2):
        assert abs(float(slopes[k]) - np.polyfit(MULTIPLIERS, scores[k].numpy(), 1)[0]) < 1e-6
    assert anti == 0.5


def test_judge_and_fluency_equal_direct_computations(setup) -> None:
    model, tok, _, vector = setup
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    text = "What a wonderful, happy day!"
    assert vader_judge()(text) == SentimentIntensityAnalyzer().polarity_scores(text)["compound"]
    assert distinct_n("a b a b a b") == 2 / 5 and distinct_n("a b c d") == 1.0 and distinct_n("a") == 0.0
    prompt, continuation = "w5 w6 w7", " w8 w9 w10"
    ids = tok(prompt + continuation, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = model(ids).logits[0].log_softmax(-1)
    expected = math.exp(-float(sum(logprobs[i - 1, ids[0, i]] for i in range(3, 6)) / 3))
    assert abs(perplexity(model, tok, prompt, continuation) - expected) < 1e-4


def test_open_ended_rows_equal_separate_generations_and_plot(setup, tmp_path) -> None:
    model, tok, _, vector = setup
    calls = []
    judge = lambda text: calls.append(text) or float(len(text.split()))  # noqa: E731
    gens = open_ended(model, tok, ["w5 w6 w7"], vector * 3.0, MULTIPLIERS, judge=judge, max_new_tokens=5, chat=False)
    assert [g.multiplier for g in gens] == MULTIPLIERS and calls == [g.text for g in gens]
    for g in gens:
        ids = tok("w5 w6 w7", return_tensors="pt")["input_ids"]
        with torch.no_grad(), model.steer(vector * 3.0, g.multiplier):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
        assert tok.decode(out[0, 3:], skip_special_tokens=True) == g.text
        assert g.perplexity == perplexity(model, tok, "w5 w6 w7", g.text)
    summary = summarize_generations(gens)
    assert [s["multiplier"] for s in summary] == MULTIPLIERS
    path = plot_behaviour_vs_fluency(gens, tmp_path / "tradeoff.png")
    assert path.stat().st_size > 1000
