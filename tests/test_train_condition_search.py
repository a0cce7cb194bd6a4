"""find_best_condition_point, the threshold helper and classification of prompts."""

from __future__ import annotations

import pytest
import torch

from steerable import SteerableModel
from steerable.testing.tiny_models import tiny_model
from steerable.train.condition_search import best_threshold, classification, find_best_condition_point


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


def test_the_threshold_helper_recovers_a_planted_threshold() -> None:
    generator = torch.Generator().manual_seed(0)
    positive = 0.3 + 0.5 * torch.rand(40, generator=generator)
    negative = 0.3 - 0.5 * torch.rand(40, generator=generator)
    scores, labels = torch.cat([positive, negative]), torch.tensor([True] * 40 + [False] * 40)
    threshold, comparator, f1 = best_threshold(scores, labels)
    assert comparator == ">" and f1 == 1.0 and float(negative.max()) < threshold < float(positive.min())
    threshold, comparator, f1 = best_threshold(scores, ~labels)
    assert comparator == "<" and f1 == 1.0
    assert classification(torch.tensor([True, True, False]), torch.tensor([True, False, True])) == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    )


def test_find_best_condition_point_on_a_separable_topic(model) -> None:
    from steerable.testing.tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    positive = [f"w80 w80 w80 w{20 + k}" for k in range(12)]  # the "topic" is w80
    negative = [f"w81 w81 w81 w{20 + k}" for k in range(12)]
    from steerable import train_steering_vector

    topic = train_steering_vector(
        model, tok, list(zip(positive, negative, strict=True)), layers=[0, 1], read_token_index=slice(0, None)
    )
    search = find_best_condition_point(model, tok, positive, negative, topic, held_out=0.25, seed=0)
    assert search.condition.layer in (0, 1) and search.train["f1"] == 1.0
    assert set(search.held_out) == {"precision", "recall", "f1"} and search.held_out["f1"] > 0.8
    assert [(r["layer"], r["comparator"]) for r in search.table] == [(0, ">"), (0, "<"), (1, ">"), (1, "<")]
