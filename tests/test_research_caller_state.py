"""The research functions leave the caller's state alone: the matplotlib backend (figures are built
with the object API, no backend is selected) and the tokenizer's padding side."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from steerable import SteerableModel, SteeringVector
from steerable.research.ab import ABItem
from steerable.research.diagnostics import diagnose, separation_report
from steerable.research.evaluation import ab_scores, open_ended, perplexity
from steerable.research.sweep import plot_behaviour_vs_fluency, plot_sweep, sweep_ab, write_table
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer

ITEMS = [ABItem(f"w{5 + k} w{20 + k}\n(A) w{40 + k}\n(B) w{60 + k}", "AB"[k % 2], "BA"[k % 2]) for k in range(4)]


@pytest.fixture
def caller_backend():
    """A backend that is not Agg, as a caller's interactive or notebook backend would be."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(before)


def test_every_public_function_keeps_the_backend_and_the_padding_side(caller_backend, tmp_path) -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    vector = SteeringVector({0: torch.randn(32, generator=torch.Generator().manual_seed(0)), 1: torch.randn(32)})
    tok = tiny_tokenizer()
    tok.padding_side = "right"  # the caller's choice (the tiny tokenizer's default is left)

    def unchanged() -> None:
        assert matplotlib.get_backend() == caller_backend  # plot_* selected Agg for the whole process
        assert tok.padding_side == "right"

    ab_scores(model, tok, ITEMS, vector, [0.0, 1.0], chat=False)
    unchanged()
    sweep = sweep_ab(model, tok, ITEMS, vector, [-1.0, 1.0], chat=False, show_progress=False)
    unchanged()
    write_table(sweep, tmp_path / "sweep")
    plot_sweep(sweep, tmp_path / "sweep")
    unchanged()
    plot_sweep(sweep, tmp_path / "steer", metric="steerability")
    unchanged()
    generations = open_ended(model, tok, ["w5 w6", "w7"], vector, [0.0, 2.0], judge=len, max_new_tokens=3, chat=False)
    perplexity(model, tok, "w5 w6", " w7")
    unchanged()
    assert plot_behaviour_vs_fluency(generations, tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    unchanged()
    diagnosis = diagnose(model, tok, vector, ITEMS, chat=False, show_progress=False)
    paths = diagnosis.plots(tmp_path / "d")
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)  # PNGs without the Agg backend selected
    unchanged()
    separation_report(model, tok, [(f"w{5 + k} w40", f"w{5 + k} w41") for k in range(4)], layers=[0])
    unchanged()
