"""Sweeps over multipliers (and layers): a tidy table (CSV and JSON) and plots (matplotlib)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerable.evaluation import ABItem, Generation, ab_scores, steerability
from steerable.vectors import SteeringVector


def sweep_ab(
    model: Any,
    tokenizer: Any,
    items: Sequence[ABItem],
    vector: SteeringVector,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
    chat: bool = True,
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per (layer, multiplier): mean p(matching), mean steerability and the anti-steerable
    fraction over items. Each layer is steered alone with its own direction from ``vector``."""
    rows = []
    for layer in layers if layers is not None else vector.layers:
        alone = SteeringVector({layer: vector[layer]}, **vector.metadata())
        scores = ab_scores(model, tokenizer, items, alone, multipliers, chat, batch_size, show_progress)
        slopes, anti = steerability(scores, multipliers)
        for j, multiplier in enumerate(multipliers):
            rows.append(
                {
                    "layer": layer,
                    "multiplier": float(multiplier),
                    "p_matching": float(scores[:, j].mean()),
                    "steerability": float(slopes.mean()),
                    "anti_steerable_fraction": anti,
                }
            )
    return rows


def write_table(rows: Sequence[dict[str, Any]], path_stem: str | Path) -> list[Path]:
    """``stem.csv`` and ``stem.json``."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(list(rows), indent=1))
    return [csv_path, json_path]


def plot_sweep(rows: Sequence[dict[str, Any]], path_stem: str | Path, metric: str = "p_matching") -> list[Path]:
    """``stem_curves.png`` (metric vs multiplier, a line per layer) and ``stem_heatmap.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(path_stem)
    layers = sorted({r["layer"] for r in rows})
    multipliers = sorted({r["multiplier"] for r in rows})
    value = {(r["layer"], r["multiplier"]): r[metric] for r in rows}
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in layers:
        ax.plot(multipliers, [value[(layer, m)] for m in multipliers], marker="o", label=f"layer {layer}")
    ax.set_xlabel("multiplier")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    curves = stem.with_name(stem.name + "_curves.png")
    fig.tight_layout()
    fig.savefig(curves, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(layers) + 1.5))
    grid = [[value[(layer, m)] for m in multipliers] for layer in layers]
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", origin="lower")
    ax.set_xticks(range(len(multipliers)), [f"{m:g}" for m in multipliers])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("multiplier")
    ax.set_ylabel("layer")
    fig.colorbar(image, label=metric)
    heatmap = stem.with_name(stem.name + "_heatmap.png")
    fig.tight_layout()
    fig.savefig(heatmap, dpi=120)
    plt.close(fig)
    return [curves, heatmap]


def plot_behaviour_vs_fluency(generations: Sequence[Generation], path: str | Path) -> Path:
    """Mean judge score and mean perplexity per multiplier: the trade-off for picking a multiplier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize_generations(generations)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([s["perplexity"] for s in summary], [s["judge"] for s in summary], marker="o")
    for s in summary:
        ax.annotate(f"{s['multiplier']:g}", (s["perplexity"], s["judge"]), fontsize="small")
    ax.set_xlabel("perplexity under the unsteered model")
    ax.set_ylabel("mean judge score")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def summarize_generations(generations: Sequence[Generation]) -> list[dict[str, float]]:
    """Per multiplier: mean judge, median perplexity, mean distinct-2."""
    import statistics

    out = []
    for m in sorted({g.multiplier for g in generations}):
        group = [g for g in generations if g.multiplier == m]
        out.append(
            {
                "multiplier": m,
                "judge": statistics.fmean(g.judge for g in group),
                "perplexity": statistics.median(g.perplexity for g in group),
                "distinct2": statistics.fmean(g.distinct2 for g in group),
            }
        )
    return out
