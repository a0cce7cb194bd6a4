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


# -- hardening: scores equal each prompt alone, bad input named, empty classes warned ------------------
PROMPTS = ["w5 w6 w7 w8 w9 w10 w11", "w12 w13", "w14 w15 w16 w17", "w18"]


def _alone(net, prompt_ids: list[int], vector, layer: int, score: str) -> float:
    """The score of one prompt run by itself (no padding): what the steering computes for it."""
    from steerable.conditions import condition_scores

    with torch.no_grad(), net.record(layers=[layer]) as recording:
        net(input_ids=torch.tensor([prompt_ids]))
    return float(
        condition_scores(recording[layer], torch.ones(1, len(prompt_ids), dtype=torch.bool), vector[layer], score)[0]
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("score", ["projection", "cosine"])
def test_prompt_scores_in_padded_batches_equal_each_prompt_alone(arch, score) -> None:
    from steerable import SteeringVector
    from steerable.testing.tiny_models import tiny_tokenizer
    from steerable.train.condition_search import prompt_scores

    net = SteerableModel.wrap(tiny_model(arch))
    vector = SteeringVector({1: torch.randn(32, generator=torch.Generator().manual_seed(4))})
    tok = tiny_tokenizer()
    tok.padding_side = "right"
    tok.pad_token = None  # no pad token (like GPT-2's): the batching helper pads with end-of-sequence
    got = prompt_scores(net, tok, PROMPTS, vector, [1], score, batch_size=4)[1]
    expected = torch.tensor([_alone(net, tok(p)["input_ids"], vector, 1, score) for p in PROMPTS])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert tok.padding_side == "right"  # the caller's tokenizer is not changed


def _setup(model):
    from steerable import SteeringVector
    from steerable.testing.tiny_models import tiny_tokenizer

    vector = SteeringVector({0: torch.randn(32, generator=torch.Generator().manual_seed(5)), 1: torch.ones(32)})
    return tiny_tokenizer(), vector, [f"w80 w{20 + k}" for k in range(6)], [f"w81 w{20 + k}" for k in range(6)]


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(positive="w80 w20"), TypeError, r"positive must be a list of prompts, not one string"),
        (dict(negative="w81"), TypeError, r"negative must be a list of prompts, not one string"),
        (dict(test_positive="w80 w30", test_negative=["w81 w30"]), TypeError, "test_positive must be a list"),
        (dict(positive=["w80", 3]), TypeError, "positive must hold prompt strings, got int"),
        (dict(comparators=[">="]), ValueError, r"unknown comparators \['>='\]: use some of '>', '<'"),
        (dict(comparators=[]), ValueError, "comparators is empty"),
        (dict(score="cos"), ValueError, r"unknown score 'cos': use one of 'projection', 'cosine'"),
        (dict(held_out=-0.5), ValueError, r"held_out must be a fraction in \[0, 1\), got -0.5"),
        (dict(held_out=1.0), ValueError, r"held_out must be a fraction in \[0, 1\), got 1.0"),
        (dict(layers=[2]), ValueError, r"the vector has no layers \[2\] \(it has \[0, 1\]\)"),
        (dict(layers=[]), ValueError, "layers is empty"),
    ],
)
def test_bad_search_input_is_named(model, change, error, message) -> None:
    tok, vector, positive, negative = _setup(model)
    kwargs = {**dict(positive=positive, negative=negative, vector=vector), **change}
    with pytest.raises(error, match=message):
        find_best_condition_point(model, tok, **kwargs)


def test_a_vector_of_another_hidden_size_is_named(model) -> None:
    from steerable import SteeringVector

    tok, _, positive, negative = _setup(model)
    with pytest.raises(ValueError, match="layer 0 has size 16 but the model's hidden size is 32"):
        find_best_condition_point(model, tok, positive, negative, SteeringVector({0: torch.ones(16)}))


def test_a_comparator_string_is_one_comparator(model) -> None:
    tok, vector, positive, negative = _setup(model)
    search = find_best_condition_point(model, tok, positive, negative, vector, comparators="<")
    assert [row["comparator"] for row in search.table] == ["<", "<"]


def test_splits_without_positives_warn_and_f1_0_warns(model) -> None:
    import random
    import warnings

    tok, vector, positive, negative = _setup(model)
    with pytest.warns(UserWarning, match="the held-out split has no positive prompt"):
        find_best_condition_point(model, tok, positive, negative, vector, test_negative=negative)
    # a seed that holds out the only positive prompt: training has none, and every condition has F1 0
    n = 1 + len(negative)
    seed = next(s for s in range(100) if 0 in (lambda o: (random.Random(s).shuffle(o), o)[1])(list(range(n)))[:2])
    with pytest.warns(UserWarning) as caught:
        search = find_best_condition_point(model, tok, positive[:1], negative, vector, held_out=2 / n, seed=seed)
    texts = [str(w.message) for w in caught]
    assert any("the training split has no positive prompt" in t for t in texts)
    assert any("the best condition has F1 0" in t for t in texts) and search.train["f1"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound split warns nothing
        find_best_condition_point(model, tok, positive, negative, vector, held_out=0.0)
