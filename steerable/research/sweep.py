"""Sweeps over multipliers (and layers) with honest statistics: per-item scores, seeded bootstrap
confidence intervals on every mean, tidy tables (CSV and JSON) and plots (matplotlib) that show the
intervals, chance and the unsteered model, so noise does not pass for an effect."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerable.research.arguments import nonempty
from steerable.research.evaluation import ABItem, Generation, ab_scores, steerability
from steerable.research.undefined import defined, dumps, shown, strict, undefined
from steerable.vectors import SteeringVector, model_name_of


def bootstrap_ci(
    values: Sequence[float] | Tensor, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap interval, the same for the same seed.
    NaN values make all three undefined: NaN, with an ``UndefinedStatisticWarning``."""
    data = torch.as_tensor(values, dtype=torch.float64).flatten()
    if data.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value: values is empty")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    nans = int(data.isnan().sum())
    if nans:
        nan = undefined("the bootstrap mean (and its interval)", f"{nans} of the {data.numel()} values are NaN")
        return nan, nan, nan
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, data.numel(), (resamples, data.numel()), generator=generator)
    means = data[picks].mean(1)
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return float(data.mean()), float(low), float(high)


@dataclass
class Sweep:
    """What ``sweep_ab`` measured. ``rows``: one per (layer, multiplier) with the mean p(matching) and
    its interval, and the layer's mean steerability with its interval. ``scores[layer]``: the per-item
    scores ``[items, multipliers]``; ``unsteered``: each item's score without steering."""

    rows: list[dict[str, Any]]
    scores: dict[int, Float[Tensor, "items multipliers"]]
    unsteered: Float[Tensor, " items"]
    multipliers: list[float]
    title: str = ""
    confidence: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def unsteered_mean(self) -> float:
        return float(self.unsteered.mean())

    def best_layer(self) -> int:
        """The layer with the largest mean steerability (layers where it is undefined are passed over)."""
        measured = [r for r in self.rows if r["steerability"] is not None]
        if not measured:
            raise ValueError(
                "steerability is undefined at every layer: it is a slope over multipliers, so sweep at least two "
                "different multipliers (e.g. -1, 0, 1), on scores that are not NaN"
            )
        return int(max(measured, key=lambda r: r["steerability"])["layer"])

    def item_rows(self) -> list[dict[str, Any]]:
        """A tidy per-item table: (layer, multiplier, item, p_matching)."""
        return [
            {"layer": layer, "multiplier": m, "item": k, "p_matching": float(scores[k, j])}
            for layer, scores in self.scores.items()
            for k in range(scores.shape[0])
            for j, m in enumerate(self.multipliers)
        ]


def sweep_ab(
    model: Any,
    tokenizer: Any,
    items: Sequence[ABItem],
    vector: SteeringVector,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
    chat: bool = True,
    batch_size: int = 16,
    show_progress: bool | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    behaviour: str | None = None,
) -> Sweep:
    """Steer each layer alone with its own direction from ``vector`` at each multiplier; score every
    item (p(matching)); report means with seeded bootstrap intervals, per-item slopes (steerability)
    and the anti-steerable fraction. Progress bars are on unless ``show_progress=False``. Undefined
    values (steerability over one multiplier, means of NaN scores) are None in ``rows``, with a warning."""
    multipliers = [float(m) for m in nonempty(multipliers, "multipliers", "the multipliers to sweep, e.g. [-1, 0, 1]")]
    items = nonempty(items, "items", "the A/B items to score (load_ab_dataset reads a CAA file)")
    progress = True if show_progress is None else show_progress
    unsteered = ab_scores(model, tokenizer, items, None, (0.0,), chat, batch_size, False)[:, 0]
    rows: list[dict[str, Any]] = []
    scores: dict[int, Tensor] = {}
    layer_list = list(layers) if layers is not None else vector.layers
    for layer in layer_list:
        alone = vector.select(layer)
        scores[layer] = ab_scores(model, tokenizer, items, alone, multipliers, chat, batch_size, progress)
        slopes, anti = steerability(scores[layer], multipliers)
        # NaN slopes: steerability has already said why they are undefined
        slope, slope_low, slope_high = (None,) * 3 if slopes.isnan().any() else _interval(slopes, confidence, seed)
        for j, multiplier in enumerate(multipliers):
            mean, low, high = _interval(scores[layer][:, j], confidence, seed)
            rows.append(
                {
                    "layer": layer,
                    "multiplier": multiplier,
                    "p_matching": mean,
                    "p_matching_low": low,
                    "p_matching_high": high,
                    "steerability": slope,
                    "steerability_low": slope_low,
                    "steerability_high": slope_high,
                    "anti_steerable_fraction": defined(anti),
                    "n_items": len(items),
                }
            )
    model_name = model_name_of(getattr(model, "config", None)) or vector.model_name or "model"
    vector_name = vector.description or (f"{vector.method} vector" if vector.method else "steering vector")
    title = f"{behaviour or 'A/B behaviour'}: {vector_name} on {model_name}"
    return Sweep(rows, scores, unsteered, multipliers, title, confidence)


def _interval(values: Tensor, confidence: float, seed: int) -> tuple[float | None, float | None, float | None]:
    """``bootstrap_ci`` with undefined values as None (its warning says why)."""
    mean, low, high = bootstrap_ci(values, confidence, seed=seed)
    return defined(mean), defined(low), defined(high)


def write_table(rows: Sequence[dict[str, Any]] | Sweep, path_stem: str | Path) -> list[Path]:
    """``stem.csv`` and ``stem.json`` (for a ``Sweep``, also the per-item ``stem_items.csv``). The JSON
    is strict: undefined values are ``null`` (and empty CSV cells), never ``NaN``."""
    table = rows.rows if isinstance(rows, Sweep) else rows
    if isinstance(table, dict):
        raise TypeError("rows must be a list of row dicts or a Sweep, not one dict: wrap it in a list ([row])")
    table = [strict(row) for row in nonempty(table, "rows", "a Sweep or a list of row dicts (one per table row)")]
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [_csv(table, stem.with_suffix(".csv"))]
    json_path = stem.with_suffix(".json")
    json_path.write_text(dumps(table))
    paths.append(json_path)
    if isinstance(rows, Sweep):
        paths.append(_csv([strict(row) for row in rows.item_rows()], stem.with_name(stem.name + "_items.csv")))
    return paths


def _csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


_LABELS = {
    "p_matching": "p(answer matching the behaviour)",
    "steerability": "steerability (mean slope of p(matching) per unit multiplier)",
}


def plot_sweep(sweep: Sweep, path_stem: str | Path, metric: str = "p_matching", fixed_axis: bool = False) -> list[Path]:
    """``stem_curves.png``: ``metric`` by multiplier, a line per layer with interval bars, the chance
    (0.5) and unsteered lines (``metric="steerability"``: steerability by layer, with intervals);
    ``stem_heatmap.png``: layer x multiplier with the values written in the cells. ``fixed_axis``:
    p(matching) on a fixed 0-1 axis."""
    from matplotlib.figure import Figure  # figures of their own: the caller's backend is left alone

    if metric not in _LABELS:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(_LABELS)}")
    stem = Path(path_stem)
    rows = nonempty(sweep.rows, "sweep.rows", "a Sweep that measured something (sweep_ab makes one)")
    layers = sorted({r["layer"] for r in rows})
    multipliers = sorted({r["multiplier"] for r in rows})
    at = {(r["layer"], r["multiplier"]): r for r in rows}
    interval = f"{100 * sweep.confidence:g}% bootstrap interval"
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    if metric == "steerability":
        values, errors = _with_errors([at[(layer, multipliers[0])] for layer in layers], "steerability")
        ax.errorbar(layers, values, yerr=errors, marker="o", capsize=3, label=f"mean steerability ({interval})")
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=1, label="no effect")
        ax.set_xlabel("Layer")
    else:
        for layer in layers:
            values, errors = _with_errors([at[(layer, m)] for m in multipliers], "p_matching")
            ax.errorbar(multipliers, values, yerr=errors, marker="o", capsize=3, label=f"layer {layer}")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
        ax.axhline(sweep.unsteered_mean, color="black", linestyle=":", linewidth=1.2, label="unsteered")
        ax.set_xlabel("Multiplier")
        if fixed_axis:
            ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(_LABELS[metric])
    ax.set_title(sweep.title, fontsize="medium")
    ax.legend(fontsize="small", ncol=2, title=f"bars: {interval}", title_fontsize="x-small")
    ax.grid(alpha=0.3)
    curves = stem.with_name(stem.name + "_curves.png")
    fig.tight_layout()
    fig.savefig(curves, dpi=120)

    fig = Figure(figsize=(1.0 * len(multipliers) + 2.5, 0.45 * len(layers) + 1.8))
    ax = fig.subplots()
    grid = [[_value(at[(layer, m)]["p_matching"]) for m in multipliers] for layer in layers]
    low, high = (0.0, 1.0) if fixed_axis else (None, None)
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", origin="lower", vmin=low, vmax=high)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, shown(value, ".2f"), ha="center", va="center", fontsize="x-small")
    ax.set_xticks(range(len(multipliers)), [f"{m:+g}" for m in multipliers])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("Multiplier")
    ax.set_ylabel("Layer")
    ax.set_title(sweep.title, fontsize="small")
    fig.colorbar(image, label=_LABELS["p_matching"])
    heatmap = stem.with_name(stem.name + "_heatmap.png")
    fig.tight_layout()
    fig.savefig(heatmap, dpi=120)
    return [curves, heatmap]


def _with_errors(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[list[float]]]:
    """Values and matplotlib's asymmetric ``yerr`` (distances down to ``key_low`` and up to ``key_high``);
    undefined values are NaN, which matplotlib leaves out."""
    values = [_value(r[key]) for r in rows]
    low = [v - _value(r[f"{key}_low"]) for v, r in zip(values, rows, strict=True)]
    high = [_value(r[f"{key}_high"]) - v for v, r in zip(values, rows, strict=True)]
    return values, [low, high]


def _value(value: float | None) -> float:
    """A table value for plotting: None (undefined) is NaN, a gap."""
    return math.nan if value is None else float(value)


def summarize_generations(
    generations: Sequence[Generation], confidence: float = 0.95, seed: int = 0
) -> list[dict[str, Any]]:
    """Per multiplier: mean judge with its bootstrap interval, median perplexity (over the replies where
    it is defined: an empty reply has none), mean distinct-2. Undefined values are None."""
    generations = nonempty(generations, "generations", "Generation records (open_ended makes them)")
    out: list[dict[str, Any]] = []
    for m in sorted({g.multiplier for g in generations}):
        group = [g for g in generations if g.multiplier == m]
        judge, low, high = _interval(torch.tensor([g.judge for g in group]), confidence, seed)
        perplexities = [g.perplexity for g in group if defined(g.perplexity) is not None]
        out.append(
            {
                "multiplier": m,
                "judge": judge,
                "judge_low": low,
                "judge_high": high,
                "perplexity": statistics.median(perplexities) if perplexities else None,
                "distinct2": statistics.fmean(g.distinct2 for g in group),
                "n_prompts": len(group),
            }
        )
    return out


def plot_behaviour_vs_fluency(
    generations: Sequence[Generation], path: str | Path, title: str = "", judge_label: str = "mean judge score"
) -> Path:
    """Mean judge score (with intervals) against perplexity, one point per multiplier, labelled with
    its signed multiplier: the trade-off for picking a multiplier."""
    from matplotlib.figure import Figure  # a figure of its own: the caller's backend is left alone

    summary = summarize_generations(generations)
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    x = [_value(s["perplexity"]) for s in summary]
    y, errors = _with_errors(summary, "judge")
    ax.errorbar(x, y, yerr=errors, marker="o", capsize=3)
    for s, px, py in zip(summary, x, y, strict=True):
        # offset from the marker, so the marker never covers a label's minus sign
        ax.annotate(f"{s['multiplier']:+g}", (px, py), xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel("Perplexity of the reply under the unsteered model (median)")
    ax.set_ylabel(f"{judge_label} (95% bootstrap interval)")
    ax.set_title(title or "Behaviour vs fluency, by multiplier", fontsize="medium")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)
