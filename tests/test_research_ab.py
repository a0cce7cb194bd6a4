"""A/B items: letter balance, option swapping and malformed items."""

from __future__ import annotations

import json
import warnings

import pytest
from ab_cases import ITEMS, items

from steerable import SteerableModel, train_steering_vector
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
from steerable.research.diagnostics import diagnose
from steerable.research.evaluation import load_ab_dataset
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def setup():
    return SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()


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


def test_malformed_items_are_named(tmp_path) -> None:
    bad = [ITEMS[0], {"question": "w5", "answer_matching_behavior": "(A)"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="item 1 needs string fields"):
        load_ab_dataset(tmp_path / "bad.json")
    (tmp_path / "same.json").write_text(json.dumps([{**ITEMS[0], "answer_not_matching_behavior": "(A)"}]))
    with pytest.raises(ValueError, match="item 0 answers must be two different letters"):
        load_ab_dataset(tmp_path / "same.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_ab_dataset(tmp_path / "junk.json")
