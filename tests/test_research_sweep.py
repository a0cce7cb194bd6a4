"""Sweeps: tables, plots, bootstrap intervals and trade-off plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ab_cases import ITEMS
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from steerable import SteerableModel, SteeringVector
from steerable.research.ab import ABItem
from steerable.research.evaluation import Generation, ab_scores, load_ab_dataset
from steerable.research.sweep import (
    bootstrap_ci,
    plot_behaviour_vs_fluency,
    plot_sweep,
    summarize_generations,
    sweep_ab,
    write_table,
)
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer

MULTIPLIERS = [-2.0, 0.0, 2.0]


@pytest.fixture
def figures(monkeypatch):
    """Every figure the code saves, kept for inspection."""
    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    return saved


def test_bootstrap_is_seeded_and_covers_a_known_mean() -> None:
    values = torch.randn(50, generator=torch.Generator().manual_seed(0)).tolist()
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4)
    assert bootstrap_ci(values, seed=4) != bootstrap_ci(values, seed=5)
    mean, wide_low, wide_high = bootstrap_ci(values)
    assert mean == pytest.approx(float(np.mean(values))) and wide_low < mean < wide_high
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):  # 200 samples of 40 from N(0.3, 1): about 95% of intervals hold 0.3
        sample = rng.normal(0.3, 1.0, 40)
        _, low, high = bootstrap_ci(sample, 0.95, resamples=500, seed=trial)
        covered += low <= 0.3 <= high
    assert 0.88 <= covered / 200 <= 0.99
    _, narrow_low, narrow_high = bootstrap_ci(values, 0.5)
    assert wide_low < narrow_low < narrow_high < wide_high
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


def test_sweep_plots_carry_intervals_chance_unsteered_and_titles(tmp_path, figures) -> None:
    model, tok = SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()
    items = [ABItem(f"w{5 + k} w{20 + k}\n(A) w{40 + k}\n(B) w{60 + k}", "AB"[k % 2], "BA"[k % 2]) for k in range(6)]
    vector = SteeringVector({0: torch.randn(32), 2: torch.randn(32)}, method="mean", description="planted")
    sweep = sweep_ab(model, tok, items, vector, MULTIPLIERS, chat=False, behaviour="refusal", show_progress=False)
    assert sweep.title == "refusal: planted on model"  # a tiny model from a config has no name
    plot_sweep(sweep, tmp_path / "p", fixed_axis=True)
    plot_sweep(sweep, tmp_path / "s", metric="steerability")
    curves, heatmap, by_layer, _ = figures
    ax = curves.axes[0]
    assert ax.get_title() == sweep.title
    assert ax.get_xlabel() == "Multiplier" and ax.get_ylabel() == "p(answer matching the behaviour)"
    assert ax.get_ylim() == (0.0, 1.0)
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(c.has_yerr for c in bars)  # one line per layer, with interval bars
    horizontal = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if len(set(line.get_ydata())) == 1}
    assert horizontal["chance (0.5)"] == 0.5 and horizontal["unsteered"] == pytest.approx(sweep.unsteered_mean)
    cells = [t.get_text() for t in heatmap.axes[0].texts]
    first = next(r for r in sweep.rows if r["layer"] == 0 and r["multiplier"] == -2.0)
    assert len(cells) == 6 and cells[0] == f"{first['p_matching']:.2f}"
    assert [t.get_text() for t in heatmap.axes[0].get_xticklabels()] == ["-2", "+0", "+2"]
    ax = by_layer.axes[0]
    assert ax.get_xlabel() == "Layer" and ax.get_ylabel().startswith("steerability")
    (bar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    xs, ys = bar.lines[0].get_data()
    assert list(xs) == [0, 2] and list(ys) == pytest.approx(
        [next(r["steerability"] for r in sweep.rows if r["layer"] == layer) for layer in (0, 2)]
    )  # steerability by layer, not flat lines over multipliers


def test_tradeoff_plot_keeps_signs_and_intervals(tmp_path, figures) -> None:
    generations = [
        Generation(f"p{k}", m, "text", judge=0.1 * m + 0.05 * k, perplexity=5.0 + abs(m), distinct2=0.9)
        for m in (-3.0, 0.0, 3.0)
        for k in range(4)
    ]
    summary = summarize_generations(generations)
    assert [s["multiplier"] for s in summary] == [-3.0, 0.0, 3.0] and summary[0]["n_prompts"] == 4
    assert all(s["judge_low"] <= s["judge"] <= s["judge_high"] for s in summary)
    plot_behaviour_vs_fluency(generations, tmp_path / "t.png", title="sentiment", judge_label="mean VADER")
    (fig,) = figures
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["-3", "+0", "+3"]
    assert all(t.get_position() != t.xy for t in ax.texts)  # labels sit beside their markers
    assert ax.get_title() == "sentiment" and ax.get_ylabel().startswith("mean VADER")
    assert any(isinstance(c, ErrorbarContainer) and c.has_yerr for c in ax.containers)


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(ITEMS))
    model = SteerableModel.wrap(tiny_model("llama"))
    vector = SteeringVector({i: torch.randn(32, generator=torch.Generator().manual_seed(i)) for i in range(3)})
    return model, tiny_tokenizer(), load_ab_dataset(path), vector


def test_sweep_table_and_plots(setup, tmp_path) -> None:
    model, tok, items, vector = setup
    sweep = sweep_ab(model, tok, items, vector, MULTIPLIERS, layers=[0, 2], chat=False, show_progress=False)
    rows = sweep.rows
    assert [(r["layer"], r["multiplier"]) for r in rows] == [(layer, m) for layer in (0, 2) for m in MULTIPLIERS]
    alone = ab_scores(model, tok, items, SteeringVector({2: vector[2]}), MULTIPLIERS, chat=False)
    assert [r["p_matching"] for r in rows[3:]] == pytest.approx(alone.mean(0).tolist(), abs=1e-6)
    torch.testing.assert_close(sweep.scores[2], alone, rtol=0, atol=1e-6)  # per-item scores are kept
    assert all(r["p_matching_low"] <= r["p_matching"] <= r["p_matching_high"] for r in rows)
    unsteered = ab_scores(model, tok, items, None, [0.0], chat=False)[:, 0]
    torch.testing.assert_close(sweep.unsteered, unsteered, rtol=0, atol=1e-6)
    paths = write_table(sweep, tmp_path / "sweep")
    assert json.loads(paths[1].read_text()) == rows
    assert paths[0].read_text().splitlines()[0].startswith("layer,multiplier,p_matching,p_matching_low,p_matching_high")
    assert len(paths[2].read_text().splitlines()) == 1 + 2 * len(items) * len(MULTIPLIERS)
    for png in plot_sweep(sweep, tmp_path / "sweep"):
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
