"""Diagnostics and the A/B letter confound: a planted letter is caught, and balancing removes it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from steerable import SteerableModel, SteeringVector, train_steering_vector
from steerable.research.ab import (
    ABItem,
    LetterImbalanceWarning,
    ab_pairs,
    balance_letters,
    check_letter_balance,
    letter_counts,
    swap_answer_order,
    swap_options,
)
from steerable.research.diagnostics import auc, cosine_matrix, diagnose, project, separation_report
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


def items(n: int, matching: str | None = None, start: int = 0) -> list[ABItem]:
    """A/B items over made-up words; the matching letter is ``matching``, or alternates."""
    out = []
    for k in range(start, start + n):
        letter = matching or ("A" if k % 2 == 0 else "B")
        question = f"w{3 + k % 40} w{10 + (k * 7) % 50} w{20 + (k * 3) % 60}\n(A) w{30 + k % 45}\n(B) w{40 + k % 35}"
        out.append(ABItem(question, letter, "B" if letter == "A" else "A"))
    return out


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


def test_letter_balance_is_checked_and_fixed() -> None:
    unbalanced = items(43, "A") + items(37, "B", start=43)
    with pytest.warns(LetterImbalanceWarning, match=r"unbalanced \(43 A / 37 B of 80 items\)"):
        assert not check_letter_balance(unbalanced)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_letter_balance(items(40, "A") + items(41, "B", start=40))  # one apart is as even as it gets
    subsampled = balance_letters(unbalanced, seed=3)
    assert letter_counts(subsampled) == {"A": 37, "B": 37}
    assert balance_letters(unbalanced, seed=3) == subsampled  # seeded
    assert all(item in unbalanced for item in subsampled)
    swapped = swap_answer_order(unbalanced)
    assert letter_counts(swapped) == {"A": 80, "B": 80} and swapped[0] == unbalanced[0]
    with pytest.raises(ValueError, match="every item's matching answer is"):
        balance_letters(items(5, "A"))


def test_swapping_exchanges_the_option_texts() -> None:
    item = ABItem("Question?\n\nChoices:\n (A) Yes, gladly\n (B) No, never", "A", "B")
    swapped = swap_options(item)
    assert swapped == ABItem("Question?\n\nChoices:\n (A) No, never\n (B) Yes, gladly", "B", "A")
    assert swap_options(swapped) == item
    with pytest.raises(ValueError, match=r"cannot find the options \(A\) and \(B\)"):
        swap_options(ABItem("no options here", "A", "B"))


def test_a_planted_letter_is_caught_and_balancing_removes_it(setup) -> None:
    """All-A training items plant the letter: the vector is the letter direction. Each question in both
    orders (the CAA design) cancels it; so does training on balanced letters."""
    model, tok = setup
    train, held_out = items(40, "A"), items(16, start=100)
    with pytest.warns(LetterImbalanceWarning):
        planted = train_steering_vector(model, tok, ab_pairs(tok, train, chat=False), layers=[0, 1, 2])
    swapped = train_steering_vector(model, tok, ab_pairs(tok, train, chat=False, balance="swap"), layers=[0, 1, 2])
    mixed = items(40, start=0)  # alternating letters: balanced
    balanced = train_steering_vector(model, tok, ab_pairs(tok, mixed, chat=False), layers=[0, 1, 2])
    bad = diagnose(model, tok, planted, held_out, chat=False)
    assert bad.letter_driven_layers == [0, 1, 2]
    assert all(row.letter_auc > 0.95 and abs(row.letter_cosine) > 0.9 for row in bad.layers)
    assert "WARNING: at layers [0, 1, 2] the vector is mostly the answer-letter direction" in bad.report()
    for fixed in (swapped, balanced):
        good = diagnose(model, tok, fixed, held_out, chat=False)
        for before, after in zip(bad.layers, good.layers, strict=True):
            # the vector's component along the letter direction shrinks at least tenfold
            assert abs(after.letter_cosine) * after.norm < 0.1 * abs(before.letter_cosine) * before.norm
    assert bad.letters == {"A": 8, "B": 8} and bad.n_pairs == 32  # held-out items in both orders


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
