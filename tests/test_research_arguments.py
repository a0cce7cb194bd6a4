"""Empty or one-pass arguments to the research functions: a clear error naming the argument and what
to give, and generators read once (not used up by a first pass)."""

from __future__ import annotations

import pytest
import torch

from steerable import SteerableModel, SteeringVector
from steerable.research.ab import ABItem
from steerable.research.diagnostics import diagnose, plot_pca
from steerable.research.evaluation import Generation, ab_scores, open_ended
from steerable.research.sweep import Sweep, plot_sweep, summarize_generations, sweep_ab, write_table
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer

ITEMS = [ABItem(f"w{5 + k} w{20 + k}\n(A) w{40 + k}\n(B) w{60 + k}", "AB"[k % 2], "BA"[k % 2]) for k in range(4)]


@pytest.fixture(scope="module")
def setup():
    model = SteerableModel.wrap(tiny_model("llama"))
    vector = SteeringVector({0: torch.randn(32, generator=torch.Generator().manual_seed(0)), 1: torch.randn(32)})
    return model, tiny_tokenizer(), vector


def test_sweeps_refuse_no_multipliers_and_no_items(setup) -> None:
    model, tok, vector = setup
    with pytest.raises(ValueError, match=r"multipliers is empty: give the multipliers to sweep, e\.g\. \[-1, 0, 1\]"):
        sweep_ab(model, tok, ITEMS, vector, [], chat=False, show_progress=False)  # returned an empty Sweep
    with pytest.raises(ValueError, match="items is empty: give the A/B items"):
        sweep_ab(model, tok, [], vector, [0.0, 1.0], chat=False, show_progress=False)  # "bootstrap_ci needs..."
    with pytest.raises(ValueError, match="items is empty"):
        ab_scores(model, tok, [], vector, [0.0], chat=False)
    with pytest.raises(ValueError, match="prompts is empty"):
        open_ended(model, tok, [], vector, [0.0], judge=len, chat=False)


def test_generators_are_read_once(setup) -> None:
    model, tok, vector = setup
    listed = sweep_ab(model, tok, ITEMS, vector, [-1.0, 1.0], layers=[0], chat=False, show_progress=False)
    generated = sweep_ab(
        model, tok, (i for i in ITEMS), vector, (m for m in (-1.0, 1.0)), layers=[0], chat=False, show_progress=False
    )
    assert generated.rows == listed.rows
    from_list = diagnose(model, tok, vector, ITEMS, chat=False, show_progress=False)
    from_generator = diagnose(model, tok, vector, (i for i in ITEMS), chat=False, show_progress=False)
    assert from_generator.rows() == from_list.rows()  # a generator said "pairs is empty"
    with pytest.raises(ValueError, match="data is empty: give held-out A/B items or contrastive pairs"):
        diagnose(model, tok, vector, iter([]), chat=False)
    generations = [Generation("p", m, "t", 0.1 * m, 3.0, 1.0) for m in (0.0, 1.0)]
    assert summarize_generations(iter(generations)) == summarize_generations(generations)


def test_empty_tables_and_plots_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="rows is empty: give a Sweep or a list of row dicts"):
        write_table([], tmp_path / "t")  # was an IndexError
    with pytest.raises(TypeError, match=r"not one dict: wrap it in a list \(\[row\]\)"):
        write_table({"a": 1}, tmp_path / "t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generations is empty"):
        summarize_generations([])
    with pytest.raises(ValueError, match="layers is empty"):
        plot_pca({}, {}, tmp_path / "p.png")
    with pytest.raises(ValueError, match="sweep.rows is empty: give a Sweep that measured something"):
        plot_sweep(Sweep([], {}, torch.zeros(0), []), tmp_path / "s")  # was an IndexError or an empty plot
    assert not list(tmp_path.iterdir())  # nothing written before the check
