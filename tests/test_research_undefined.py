"""Undefined statistics are reported as undefined: NaN inside with a warning, None in records and
"undefined" in reports, and every JSON written is strict (no NaN literals)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steerable import SteerableModel, SteeringVector
from steerable.research.ab import ABItem
from steerable.research.diagnostics import auc, diagnose, separation_report
from steerable.research.evaluation import Generation, steerability
from steerable.research.sweep import bootstrap_ci, summarize_generations, sweep_ab, write_table
from steerable.research.undefined import UndefinedStatisticWarning, dumps, shown, strict
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer


def ab_items(n: int = 4) -> list[ABItem]:
    return [ABItem(f"w{5 + k} w{20 + k}\n(A) w{40 + k}\n(B) w{60 + k}", "AB"[k % 2], "BA"[k % 2]) for k in range(n)]


def test_auc_of_nan_scores_is_undefined_not_a_half() -> None:
    with pytest.warns(UndefinedStatisticWarning, match="1 of its 3 scores are NaN"):
        value = auc(torch.tensor([math.nan, 1.0]), torch.tensor([0.0]))
    assert math.isnan(value)  # it was 0.5: the NaN counted as a loss, the 1.0 as a win
    assert auc(torch.tensor([2.0, 1.0]), torch.tensor([0.0])) == 1.0  # defined scores are unchanged


def test_steerability_over_one_multiplier_is_undefined_not_zero_anti_steerable() -> None:
    scores = torch.tensor([[0.2], [0.7]])
    with pytest.warns(UndefinedStatisticWarning, match="at least two different multipliers"):
        slopes, anti = steerability(scores, [1.0])
    assert slopes.isnan().all() and math.isnan(anti)  # anti was 0.0: "no item is anti-steerable"
    with pytest.warns(UndefinedStatisticWarning, match="1 of 2 items' slopes are NaN"):
        _, anti = steerability(torch.tensor([[0.1, math.nan], [0.2, 0.9]]), [0.0, 1.0])
    assert math.isnan(anti)


def test_bootstrap_of_nan_values_is_undefined() -> None:
    with pytest.warns(UndefinedStatisticWarning, match="1 of the 3 values are NaN"):
        mean, low, high = bootstrap_ci([0.1, math.nan, 0.3])
    assert math.isnan(mean) and math.isnan(low) and math.isnan(high)


def test_a_one_multiplier_sweep_reports_steerability_as_none_and_writes_strict_json(tmp_path) -> None:
    model, tok = SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()
    vector = SteeringVector({0: torch.randn(32, generator=torch.Generator().manual_seed(0))})
    with pytest.warns(UndefinedStatisticWarning, match="steerability is undefined"):
        sweep = sweep_ab(model, tok, ab_items(), vector, [1.0], chat=False, show_progress=False)
    (row,) = sweep.rows
    assert row["steerability"] is None and row["steerability_low"] is None and row["steerability_high"] is None
    assert row["anti_steerable_fraction"] is None  # was 0.0
    assert 0.0 <= row["p_matching"] <= 1.0  # p(matching) at one multiplier is still measured
    with pytest.raises(ValueError, match="steerability is undefined at every layer.*at least two"):
        sweep.best_layer()
    paths = write_table(sweep, tmp_path / "sweep")
    text = paths[1].read_text()
    assert "NaN" not in text and json.loads(text)[0]["steerability"] is None
    assert paths[0].read_text().splitlines()[1].split(",")[5] == ""  # an empty CSV cell, not "nan"


def test_diagnose_on_nan_activations_reports_undefined_not_wrong_way(tmp_path) -> None:
    model, tok = SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(math.nan)
    vector = SteeringVector({0: torch.ones(32), 1: torch.ones(32)})
    with pytest.warns(UndefinedStatisticWarning, match="the AUC is undefined"):
        diagnosis = diagnose(model, tok, vector, ab_items(), chat=False, show_progress=False)
    for row in diagnosis.rows():
        assert row["behaviour_auc"] is None and row["letter_auc"] is None  # was 0.0: "points the wrong way"
        assert row["letter_driven"] is False
    json.dumps(diagnosis.rows(), allow_nan=False)
    report = diagnosis.report()
    assert "undefined" in report and "0.000" not in report and "the AUC is undefined" in report
    diagnosis.plots(tmp_path)  # undefined values are gaps, not an error
    pairs = [(f"w{5 + k} w40", f"w{5 + k} w41") for k in range(4)]
    with pytest.raises(ValueError, match="non-finite"):  # training on NaN reads refuses, before any AUC
        separation_report(model, tok, pairs, layers=[0], held_out=0.5)


def test_summaries_leave_undefined_perplexity_out_of_the_median() -> None:
    generations = [Generation("p", 1.0, t, 0.5, ppl, 1.0) for t, ppl in (("", math.nan), ("a", 4.0), ("b", 6.0))]
    (summary,) = summarize_generations(generations)
    assert summary["perplexity"] == 5.0  # statistics.median sorted the NaN in: 6.0 or nan by position
    (alone,) = summarize_generations([generations[0]])
    assert alone["perplexity"] is None


def test_strict_json_turns_every_non_finite_float_into_null() -> None:
    data = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": "nan"}
    assert strict(data) == {"a": None, "b": [1.0, None, [None, 2]], "c": "nan"}
    assert json.loads(dumps(data)) == {"a": None, "b": [1.0, None, [None, 2]], "c": "nan"}
    assert shown(math.nan) == "undefined" and shown(None) == "undefined" and shown(0.25, ".2f") == "0.25"
