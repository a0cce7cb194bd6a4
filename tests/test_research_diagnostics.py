"""Diagnostics: AUC, projections, cosine matrices, separation reports and plots."""

from __future__ import annotations

import json

import pytest
import torch
from ab_cases import items

from steerable import SteerableModel, SteeringVector, train_steering_vector
from steerable.research.ab import (
    LetterImbalanceWarning,
    ab_pairs,
)
from steerable.research.diagnostics import auc, cosine_matrix, diagnose, project, separation_report
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def setup():
    return SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()


def test_auc_projection_and_cosine_matrix() -> None:
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])) == 0.5
    assert auc(torch.tensor([2.0]), torch.tensor([2.0])) == 0.5  # ties count half
    acts = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert torch.equal(project(acts, torch.tensor([0.0, 10.0])), torch.tensor([4.0, 0.0]))
    v = SteeringVector({0: torch.tensor([1.0, 0.0]), 1: torch.tensor([1.0, 1.0]), 2: torch.tensor([0.0, -2.0])})
    m = cosine_matrix(v)
    assert m.shape == (3, 3) and torch.allclose(m.diagonal(), torch.ones(3))
    assert abs(float(m[0, 1]) - 2**-0.5) < 1e-6 and abs(float(m[0, 2])) < 1e-6 and float(m[1, 2]) < 0


def test_separation_report_equals_a_direct_computation(setup) -> None:
    import random

    from sklearn.metrics import roc_auc_score

    from steerable import extract_activations

    model, tok = setup
    pairs = [(f"w{3 + k} w{20 + k} w80", f"w{3 + k} w{20 + k} w81") for k in range(20)]
    rows = separation_report(model, tok, pairs, layers=[0, 2], held_out=0.25, seed=1)
    order = list(range(20))
    random.Random(1).shuffle(order)
    test, train = sorted(order[:5]), sorted(order[5:])
    pos, neg = extract_activations(model, tok, pairs, layers=[0, 2])
    for row, layer in zip(rows, [0, 2], strict=True):
        direction = pos[layer][train].mean(0) - neg[layer][train].mean(0)
        for key, part in (("train_auc", train), ("held_out_auc", test)):
            scores = torch.cat([pos[layer][part] @ direction, neg[layer][part] @ direction])
            expected = roc_auc_score([1] * len(part) + [0] * len(part), scores.numpy())
            assert row[key] == pytest.approx(expected, abs=1e-6)
    assert rows[0]["held_out_auc"] > 0.8 and (rows[0]["n_train"], rows[0]["n_held_out"]) == (15, 5)
    same = separation_report(model, tok, [(f"w{3 + k}", f"w{3 + k}") for k in range(8)], layers=[1])
    assert same[0]["train_auc"] == same[0]["held_out_auc"] == 0.5  # nothing to separate
    with pytest.raises(ValueError, match="held_out is the fraction"):
        separation_report(model, tok, pairs, layers=[0], held_out=1.5)


def test_diagnosis_plots_and_rows(setup, tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    model, tok = setup
    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    with pytest.warns(LetterImbalanceWarning):
        vector = train_steering_vector(model, tok, ab_pairs(tok, items(12, "A"), chat=False), layers=[0, 2])
    diagnosis = diagnose(model, tok, vector, items(6, start=50), chat=False)
    paths = diagnosis.plots(tmp_path, title="planted")
    assert [p.name for p in paths] == ["pca.png", "auc_by_layer.png"] and all(p.stat().st_size > 1000 for p in paths)
    pca, by_layer = saved
    assert pca._suptitle.get_text() == "planted"
    assert [ax.get_title() for ax in pca.axes if ax.get_title()] == ["layer 0", "layer 2"]
    assert pca.axes[0].get_xlabel() == "principal axis 1"
    ax = by_layer.axes[0]
    assert ax.get_ylabel() == "AUC of projections onto the vector" and ax.get_ylim() == (0.0, 1.05)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["behaviour AUC", "answer-letter AUC", "chance"]
    rows = diagnosis.rows()
    assert json.loads(json.dumps(rows))[0]["layer"] == 0 and rows[0]["letter_driven"] is True
