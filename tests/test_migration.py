"""The migration guide (docs/migrating.md) runs, and each of issue #22's nine findings about porting
steering-vectors, repeng and CAST code holds with values: what a literal port got wrong, and the fix."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_extraction import PAIRS, tokenizer

import steerable
from steerable import Condition, SteerableModel, SteeringVector, train_steering_vector
from steerable.testing.tiny_models import tiny_model

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"
FENCE = re.compile(r"^```python\n(?P<body>.*?)^```[ ]*$", re.M | re.S)
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


@pytest.fixture
def model():
    return SteerableModel.wrap(tiny_model("llama"))


def test_the_guide_runs_and_its_vectors_hold(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = GUIDE.read_text()
    namespace: dict[str, object] = {"__name__": "docs_migrating"}
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 2
        tree = ast.increment_lineno(ast.parse(match["body"], str(GUIDE)), line - 1)
        exec(compile(tree, str(GUIDE), "exec"), namespace)
    assert len(FENCE.findall(text)) >= 6
    analysis = json.loads((tmp_path / "analysis.json").read_text())
    assert analysis["best_direction"] in ("larger", "smaller") and analysis["best_f1_score"] > 0
    assert namespace["cast_center"].layers == [1]  # type: ignore[attr-defined]
    # every table row's old call appears with its new one
    for old in ("aggregator=pca_aggregator()", "layer_type=", "vec.apply(", "operator=", "larger", "pca_pairwise"):
        assert old in text


# 1. Scale: steerable's direction methods are scaled to the mean projection; the others' are unit.
@pytest.mark.parametrize("method", ["pca_diff", "pca_center", "logistic"])
def test_1_scale_normalize_gives_the_unit_vectors_others_return(model, method) -> None:
    scaled = train_steering_vector(model, tokenizer(), PAIRS, layers=[1, 2], method=method)
    unit = train_steering_vector(model, tokenizer(), PAIRS, layers=[1, 2], method=method, normalize=True)
    mean = train_steering_vector(model, tokenizer(), PAIRS, layers=[1, 2])
    for layer in (1, 2):
        assert unit[layer].norm() == pytest.approx(1, abs=1e-5)
        projection = float(mean[layer] @ unit[layer])  # the scale steerable puts on the unit direction
        torch.testing.assert_close(scaled[layer], unit[layer] * projection, rtol=1e-4, atol=1e-5)
        assert abs(float(scaled[layer].norm()) - 1) > 0.1  # not unit: a ported multiplier means something else


# 2. Method names collide: repeng's pca_diff centres, CAST's pca_pairwise is steerable's pca_center.
def test_2_method_names_map_across_libraries() -> None:
    from sklearn.decomposition import PCA

    from steerable.compat.repeng.extract import direction
    from steerable.train.aggregators import pca_center, pca_diff

    generator = torch.Generator().manual_seed(0)
    shared = 10 * torch.randn(40, 1, generator=generator) * torch.eye(16)[0]  # each pair's own content, large
    pos = shared + torch.randn(40, 16, generator=generator) + 3 * torch.randn(16, generator=generator)
    neg = shared + torch.randn(40, 16, generator=generator)
    cos = lambda a, b: abs(float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)))  # noqa: E731
    repeng_diff = torch.tensor(PCA(1).fit((pos - neg).numpy()).components_[0])
    assert cos(direction(pos, neg, "pca_diff"), repeng_diff) > 0.9999
    assert cos(pca_diff(pos, neg), repeng_diff) < 0.9  # same name, another direction
    centre = (pos + neg) / 2
    pairwise = torch.tensor(PCA(1).fit(torch.cat([pos - centre, neg - centre]).numpy()).components_[0])
    assert cos(pca_center(pos, neg), pairwise) > 0.9999  # CAST's pca_pairwise
    data = torch.cat([pos, neg])
    global_centre = torch.tensor(PCA(1).fit(data.numpy()).components_[0])  # CAST's pca_center
    assert cos(pca_center(pos, neg), global_centre) < 0.99


# 3. Operator form: repeng's operator returns the new state, steerable's a delta.
def test_3_a_literal_port_of_a_repeng_operator_is_off_and_the_compat_one_is_not() -> None:
    from steerable.compat.repeng import ControlModel, ControlVector
    from steerable.testing.hooks import hooked

    vanilla, model = tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))
    v = torch.randn(32, generator=torch.Generator().manual_seed(1))
    repeng_operator = lambda current, control: current + control  # noqa: E731
    with torch.no_grad():
        with hooked(vanilla, {1: lambda h: h + v}):
            intended = vanilla(IDS).logits
        with hooked(vanilla, {1: lambda h: 2 * h + v}):
            doubled = vanilla(IDS).logits
        with model.steer(SteeringVector({1: v}), operator=repeng_operator):
            literal = model(IDS).logits
        torch.testing.assert_close(literal, doubled, rtol=0, atol=1e-5)  # the hidden state counted twice
        assert not torch.allclose(literal, intended, atol=1e-2)
        control = ControlModel(model, [1])
        control.set_control(ControlVector("llama", {1: v.numpy()}), 1.0, operator=repeng_operator)
        torch.testing.assert_close(control(IDS).logits, intended, rtol=0, atol=1e-5)
        control.reset()


# 4. CAST's numbering (input of layer L) and comparator ("larger" fires below the threshold).
def test_4_cast_layer_and_comparator_map_to_steerables(model) -> None:
    vanilla = tiny_model("llama")
    prompts = [p for pair in PAIRS[:4] for p in pair]
    vector = train_steering_vector(model, tokenizer(), PAIRS, method="pca_center", normalize=True)
    cast_layer = 2
    sims = []
    for text in prompts:  # CAST's LeashLayer: the input of layer L, mean over tokens, tanh of the projection
        ids = tokenizer()([text], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = vanilla(ids, output_hidden_states=True).hidden_states[cast_layer][0].mean(0)
        u = vector[cast_layer - 1] / vector[cast_layer - 1].norm()
        projected = torch.tanh(torch.outer(u, u) @ h)
        sims.append(float(h @ projected / (h.norm() * projected.norm())))
    threshold = float(np.median(sims))
    cast_fires = [s < threshold for s in sims]  # "larger": condition_met = similarity < threshold
    from steerable.train.condition_search import prompt_scores

    def fires(condition: Condition) -> list[bool]:
        scores = prompt_scores(model, tokenizer(), prompts, vector, [condition.layer])[condition.layer]
        return (scores < condition.threshold if condition.comparator == "<" else scores > condition.threshold).tolist()

    assert fires(Condition.from_cast(vector, cast_layer, threshold, "larger")) == cast_fires
    assert sum(cast_fires) == 4
    naive = fires(Condition(vector, cast_layer, threshold, ">"))
    assert naive != cast_fires
    with pytest.raises(ValueError, match="comparator='<' here"):
        model.steer(vector.select([2]), condition=Condition(vector, 1, threshold, "larger"))  # type: ignore[arg-type]


# 5. Negative layer keys: merged in arithmetic, resolved for GGUF, selectable after a GGUF load.
def test_5_negative_layers_merge_and_convert(model, tmp_path) -> None:
    v = train_steering_vector(model, tokenizer(), PAIRS, layers=[-1])
    w = SteeringVector({2: torch.ones(32)})
    assert v.layers == [2] and (v - w).layers == [2]
    torch.testing.assert_close((v - w)[2], v[2] - 1)
    with model.steer(v - w):  # steers, where [-1, 2] was refused
        pass
    loose = SteeringVector({-1: torch.ones(32), 1: torch.ones(32)})
    with pytest.raises(ValueError, match="with_num_layers"):
        loose.to_gguf(tmp_path / "v.gguf")
    loose.with_num_layers(3).to_gguf(tmp_path / "v.gguf")
    read = SteeringVector.from_gguf(tmp_path / "v.gguf", num_layers=3)
    assert read.layers == [1, 2] and read.select(range(-1, -3, -1)).layers == [1, 2]
    assert SteeringVector.from_gguf(tmp_path / "v.gguf").num_layers is None


# 6. Float 0/1 token masks (the seed's docs build them with torch.zeros) are accepted.
def test_6_float_token_masks_equal_boolean_ones(model) -> None:
    v = SteeringVector({1: torch.randn(32)})
    mask = torch.zeros(6)
    mask[[1, 4]] = 1.0
    with torch.no_grad():
        with model.steer(v, token_indices=mask):
            floats = model(IDS).logits
        with model.steer(v, positions=torch.tensor([False, True, False, False, True, False])):
            bools = model(IDS).logits
    assert torch.equal(floats, bools)
    with pytest.raises(ValueError, match="only 0 and 1"):
        model.steer(v, token_indices=torch.tensor([0.0, 0.5]))


# 7. Seed and repeng spellings: each error names steerable's spelling.
def test_7_foreign_spellings_name_steerables(model) -> None:
    sv = pytest.importorskip("steering_vectors")
    tok = tokenizer()
    cases = [
        (lambda: train_steering_vector(model, tok, PAIRS, aggregator=None), "method="),
        (lambda: train_steering_vector(model, tok, PAIRS, layer_type="mlp"), "site="),
        (lambda: train_steering_vector(model, tok, PAIRS, layer_config={}), "register_architecture"),
        (lambda: steerable.extract_activations(model, tok, PAIRS, layer_type="mlp"), "site="),
        (lambda: SteeringVector({1: torch.ones(32)}, layer_type="mlp"), "site="),
        (lambda: steerable.record_activations(model, layer_type="decoder_block"), "site="),
        (lambda: steerable.record_activations(model), "model.record"),
        (lambda: SteeringVector({1: torch.ones(32)}).apply(model), "model.steer"),
        (lambda: SteeringVector({1: torch.ones(32)}).patch_activations(model), "model.steer"),
        (lambda: model.steer(sv.SteeringVector({1: torch.ones(32)})), "from_steering_vectors"),
    ]
    for call, spelling in cases:
        with pytest.raises((TypeError, AttributeError)) as caught:
            call()
        assert spelling in str(caught.value), (spelling, str(caught.value))
    assert not model.is_steering


# 8. Other libraries' samples are training pairs.
@dataclass
class CastPair:  # CAST's activation_steering.utils.ContrastivePair: positive, negative
    positive: str
    negative: str


def test_8_other_libraries_samples_train_the_same_vector(model) -> None:
    sv = pytest.importorskip("steering_vectors")
    from steerable.compat.repeng import DatasetEntry

    expected = train_steering_vector(model, tokenizer(), PAIRS, layers=[1])
    for samples in (
        [sv.SteeringVectorTrainingSample(p, n) for p, n in PAIRS],
        [DatasetEntry(p, n) for p, n in PAIRS],
        [CastPair(p, n) for p, n in PAIRS],
        [steerable.ContrastivePair(positive_str=p, negative_str=n) for p, n in PAIRS],
    ):
        torch.testing.assert_close(train_steering_vector(model, tokenizer(), samples, layers=[1])[1], expected[1])
    read_first = sv.SteeringVectorTrainingSample(PAIRS[0][0], PAIRS[0][1], 0, 0)
    first = train_steering_vector(model, tokenizer(), [read_first], layers=[1])
    torch.testing.assert_close(first[1], torch.zeros(32), atol=1e-6, rtol=0)  # both read token 0: the same word


# 9. CAST's search options.
def test_9_cast_search_options(model, tmp_path) -> None:
    vector = train_steering_vector(model, tokenizer(), PAIRS, method="pca_center", normalize=True)
    positive, negative = [p for p, _ in PAIRS], [n for _, n in PAIRS]
    found = steerable.find_best_condition_point(
        model,
        tokenizer(),
        positive,
        negative,
        vector,
        cast_layer_range=(1, 4),
        threshold_range=(-1.0, 1.0),
        threshold_step=0.05,
        max_layers_to_combine=2,
        held_out=0,
        file_path=tmp_path / "out" / "a.json",
    )
    grid = {round(-1.0 + 0.05 * k, 6) for k in range(40)}
    assert all(round(row["threshold"], 6) in grid for row in found.table)
    assert {tuple(row["layers"]) for row in found.table} == {(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)}
    best = max(found.table, key=lambda row: row["train_f1"])
    assert found.train["f1"] == pytest.approx(best["train_f1"])
    assert found.held_out == {}  # held_out=0: CAST's search on every prompt
    analysis = json.loads((tmp_path / "out" / "a.json").read_text())
    assert analysis["best_layers"] == best["layers"]
    assert analysis["best_cast_layers"] == [layer + 1 for layer in best["layers"]]
    assert len(analysis["scores"]["0"]["positive"]) == len(positive)
    formatted = steerable.find_best_condition_point(
        model, tokenizer(), positive, negative, vector, layer_range=(1, 2), chat_template=True, held_out=0
    )
    plain = steerable.find_best_condition_point(
        model,
        tokenizer(),
        [f"Question: {p}\nAnswer:" for p in positive],
        [f"Question: {n}\nAnswer:" for n in negative],
        vector,
        layers=[1],
        held_out=0,
    )
    assert formatted.table[0]["threshold"] == plain.table[0]["threshold"]
