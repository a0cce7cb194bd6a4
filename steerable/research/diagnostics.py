"""Diagnostics: is this vector the behaviour, or something else?

- ``project``: activations onto a vector's direction (unit length), per token or per read.
- ``cosine_matrix``: cosine between the layers of two vectors (or one vector with itself).
- ``auc``: how well one set of scores separates from another (0.5: not at all, 1.0: perfectly).
- ``separation_report``: train on part of the pairs, report per layer the AUC of positive vs negative
  projections on the training part and on the held-out part.
- ``diagnose``: for a trained vector and labelled data, per layer: the behaviour AUC, and for A/B data
  the *letter* AUC (A-texts vs B-texts) and the cosine with the letter direction. A vector whose letter
  AUC is high and behaviour AUC near 0.5 encodes the answer letter, not the behaviour.
- ``plot_pca``: a scatter of positive vs negative reads per layer on their first two principal axes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from steerable.research.ab import ABItem, ab_pairs, letter_counts
from steerable.research.arguments import nonempty
from steerable.research.undefined import defined, shown, strict, undefined
from steerable.train.extraction import aggregate_activations, extract_activations
from steerable.train.pairs import ContrastivePair, ReadIndex
from steerable.vectors import SteeringVector

#: A vector whose cosine with the letter direction is at least this (in size) is letter-driven.
LETTER_COSINE_FLAG = 0.5
#: Projections whose letter AUC is at least this sort by letter more than chance allows.
LETTER_AUC_FLAG = 0.75


def project(
    activations: Float[Tensor, "*batch d_model"], direction: Float[Tensor, " d_model"]
) -> Float[Tensor, "*batch"]:
    """The scalar projection of each activation onto ``direction`` (made unit length)."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    return activations.float() @ unit.to(activations.device)


def cosine_matrix(a: SteeringVector, b: SteeringVector | None = None) -> Float[Tensor, "layers_a layers_b"]:
    """``[i, j]``: cosine between layer ``a.layers[i]`` of ``a`` and layer ``b.layers[j]`` of ``b``
    (``b`` defaults to ``a``: how much the direction turns from layer to layer)."""
    b = a if b is None else b
    if a.hidden_size != b.hidden_size:
        raise ValueError(f"cannot compare vectors of hidden size {a.hidden_size} and {b.hidden_size}")

    def unit(v: SteeringVector) -> Tensor:
        rows = torch.stack([(t.float().mean(0) if t.ndim == 2 else t.float()).detach().cpu() for _, t in v.items()])
        return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    return unit(a) @ unit(b).T


def auc(positive: Float[Tensor, " n"], negative: Float[Tensor, " m"]) -> float:
    """P(a positive score > a negative score), ties counting half (the Mann-Whitney U statistic).
    NaN scores make it undefined: NaN with an ``UndefinedStatisticWarning`` (a NaN compares as neither
    greater nor equal, so counting it would pass for a valid AUC)."""
    positive, negative = torch.as_tensor(positive).float().flatten(), torch.as_tensor(negative).float().flatten()
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    nans = int(positive.isnan().sum() + negative.isnan().sum())
    if nans:
        total = positive.numel() + negative.numel()
        return undefined("the AUC", f"{nans} of its {total} scores are NaN (the activations or the vector hold NaN)")
    diff = rearrange(positive, "n -> n 1") - rearrange(negative, "m -> 1 m")
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


@dataclass
class LayerDiagnosis:
    layer: int
    norm: float
    behaviour_auc: float | None  # positive vs negative projections; < 0.5: the vector points the wrong way
    # (None: undefined, the projections hold NaN)
    letter_auc: float | None = None  # A/B data: A-texts vs B-texts, direction-free (max(auc, 1 - auc))
    letter_cosine: float | None = None  # with the letter direction (mean A-read minus mean B-read)

    @property
    def letter_driven(self) -> bool:
        """The vector is largely the letter direction (the imbalanced-training failure)."""
        return self.letter_cosine is not None and abs(self.letter_cosine) >= LETTER_COSINE_FLAG

    @property
    def letter_sorted(self) -> bool:
        """Projections onto the vector sort by letter, whatever the vector's share of the letter direction:
        at this read position the letter dominates the activations."""
        return self.letter_auc is not None and self.letter_auc >= LETTER_AUC_FLAG


@dataclass
class Diagnosis:
    """What ``diagnose`` found: one row per layer, and (for A/B data) the letter counts."""

    layers: list[LayerDiagnosis]
    n_pairs: int
    letters: dict[str, int] | None = None
    positive: dict[int, Tensor] = field(default_factory=dict, repr=False)
    negative: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def letter_driven_layers(self) -> list[int]:
        return [row.layer for row in self.layers if row.letter_driven]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer, undefined values None: ``json.dumps(rows, allow_nan=False)`` holds."""
        return [
            strict(row.__dict__ | {"letter_driven": row.letter_driven, "letter_sorted": row.letter_sorted})
            for row in self.layers
        ]

    def report(self) -> str:
        lines = [f"{self.n_pairs} pairs" + (f"; matching letters {self.letters}" if self.letters else "")]
        ab = self.letters is not None
        lines.append("layer    norm  behaviour AUC" + ("  letter AUC  cos(letter)" if ab else ""))
        for row in self.layers:
            line = f"{row.layer:>5} {shown(row.norm):>7} {shown(row.behaviour_auc):>14}"
            if ab:
                mark = "  <- letter-driven" if row.letter_driven else "  (sorts by letter)" if row.letter_sorted else ""
                line += f" {shown(row.letter_auc):>11} {shown(row.letter_cosine):>12}{mark}"
            lines.append(line)
        undefined_layers = [row.layer for row in self.layers if row.behaviour_auc is None]
        if undefined_layers:
            lines.append(
                f"WARNING: at layers {undefined_layers} the AUC is undefined: the projections hold NaN. Check the "
                "model's activations (dtype overflow?) and the vector for NaN or inf."
            )
        flagged = self.letter_driven_layers
        if flagged:
            lines.append(
                f"WARNING: at layers {flagged} the vector is mostly the answer-letter direction (|cos| >= "
                f"{LETTER_COSINE_FLAG}): it encodes which letter is present, not the behaviour. Retrain with "
                "balance='swap' (each question in both answer orders) or balance='subsample'."
            )
        sorted_only = [row.layer for row in self.layers if row.letter_sorted and not row.letter_driven]
        if sorted_only:
            lines.append(
                f"NOTE: at layers {sorted_only} projections still sort by answer letter (letter AUC >= "
                f"{LETTER_AUC_FLAG}) although the vector is not the letter direction: the letter dominates the "
                "activations read there. Judge the vector by its behaviour AUC, and prefer steering to reading."
            )
        return "\n".join(lines)

    def plots(self, out: str | Path, title: str = "") -> list[Path]:
        """``pca.png`` (positive vs negative reads per layer) and ``auc_by_layer.png``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        return [
            plot_pca(self.positive, self.negative, out / "pca.png", title=title),
            plot_auc_by_layer(self, out / "auc_by_layer.png", title=title),
        ]


def diagnose(
    model: Any,
    tokenizer: Any,
    vector: SteeringVector,
    data: Sequence[ABItem] | Sequence[ContrastivePair | tuple[str, str]],
    layers: Sequence[int] | None = None,
    chat: bool = True,
    read_token_index: ReadIndex = -1,
    batch_size: int = 16,
    show_progress: bool | None = None,
) -> Diagnosis:
    """Project held-out ``data`` (A/B items, or contrastive pairs) onto ``vector`` at ``layers``
    (default: the vector's) and report how well it separates behaviour, and for A/B items the letter."""
    given: list[Any] = nonempty(data, "data", "held-out A/B items or contrastive pairs (positive, negative)")
    layer_list = list(layers) if layers is not None else vector.layers
    missing = [layer for layer in layer_list if layer not in vector]
    if missing:
        raise ValueError(f"layers {missing} are not in the vector (it has {vector.layers})")
    items = [d for d in given if isinstance(d, ABItem)]
    if items and len(items) != len(given):
        raise TypeError("give A/B items or contrastive pairs, not a mix")
    # A/B items in both orders (each item, then it swapped): letter and behaviour independent by design;
    # a positive text ends with its matching letter, which is the item's other letter once swapped
    pairs: list[Any] = ab_pairs(tokenizer, items, chat, balance="swap") if items else given
    pos_letters = [letter for i in items for letter in (i.matching, i.not_matching)]
    positive, negative = extract_activations(
        model, tokenizer, pairs, layer_list, read_token_index, batch_size, vector.site, show_progress
    )
    rows = []
    for layer in layer_list:
        direction = vector[layer]
        direction = direction.float().mean(0) if direction.ndim == 2 else direction.float()
        pos, neg = project(positive[layer], direction), project(negative[layer], direction)
        row = LayerDiagnosis(layer, float(direction.norm()), defined(auc(pos, neg)))
        if items:
            first = pos_letters[0]
            is_first = torch.tensor([letter == first for letter in pos_letters])
            # a positive read ends with its matching letter, a negative with the other one
            letter_scores = torch.cat([pos, neg])
            letter_is_first = torch.cat([is_first, ~is_first])
            raw = defined(auc(letter_scores[letter_is_first], letter_scores[~letter_is_first]))
            row.letter_auc = None if raw is None else max(raw, 1.0 - raw)
            reads = torch.cat([positive[layer], negative[layer]]).float()
            letter_direction = reads[letter_is_first].mean(0) - reads[~letter_is_first].mean(0)
            cosine = torch.nn.functional.cosine_similarity(letter_direction, direction.cpu(), dim=0)
            row.letter_cosine = defined(float(cosine))
        rows.append(row)
    return Diagnosis(rows, len(pairs), letter_counts(items) if items else None, positive, negative)


def separation_report(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[ContrastivePair | tuple[str, str]],
    layers: Sequence[int],
    method: str = "mean",
    held_out: float = 0.25,
    seed: int = 0,
    read_token_index: ReadIndex = -1,
    batch_size: int = 16,
    site: str = "block",
) -> list[dict[str, Any]]:
    """Per layer: the AUC of positive vs negative projections onto a vector trained (with ``method``)
    on a seeded random ``1 - held_out`` of the pairs, on those pairs and on the held-out rest."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out is the fraction of pairs kept out of training, in (0, 1); got {held_out}")
    pairs = nonempty(pairs, "pairs", "contrastive pairs (positive, negative) to train and hold out")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(held_out * len(pairs)))
    if len(pairs) - n_test < 1:
        raise ValueError(f"{len(pairs)} pairs cannot be split into training and held-out parts")
    test, train = sorted(order[:n_test]), sorted(order[n_test:])
    positive, negative = extract_activations(model, tokenizer, pairs, layers, read_token_index, batch_size, site)
    directions = aggregate_activations(
        {k: v[train] for k, v in positive.items()}, {k: v[train] for k, v in negative.items()}, method
    )
    rows = []
    for layer in layers:
        pos, neg = project(positive[layer], directions[layer]), project(negative[layer], directions[layer])
        rows.append(
            {
                "layer": layer,
                "train_auc": defined(auc(pos[train], neg[train])),
                "held_out_auc": defined(auc(pos[test], neg[test])),
                "n_train": len(train),
                "n_held_out": len(test),
            }
        )
    return rows


def plot_pca(
    positive: dict[int, Float[Tensor, "n d_model"]],
    negative: dict[int, Float[Tensor, "n d_model"]],
    path: str | Path,
    layers: Sequence[int] | None = None,
    title: str = "",
) -> Path:
    """One panel per layer: positive and negative reads on the first two principal axes of both."""
    from matplotlib.figure import Figure  # a figure of its own: the caller's backend is left alone

    layer_list = nonempty(layers if layers is not None else positive, "layers", "the layers to plot")
    columns = min(4, len(layer_list))
    rows = -(-len(layer_list) // columns)
    fig = Figure(figsize=(3.2 * columns, 3.0 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, layer in zip(axes.flat, layer_list, strict=False):
        reads = torch.cat([positive[layer], negative[layer]]).float()
        ax.set_title(f"layer {layer}", fontsize="small")
        if not reads.isfinite().all():  # no principal axes of NaN reads: say so rather than fail
            ax.text(0.5, 0.5, "undefined:\nthe reads hold NaN or inf", ha="center", va="center", transform=ax.transAxes)
            continue
        centred = reads - reads.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ v[:2].T
        n = positive[layer].shape[0]
        ax.scatter(xy[:n, 0], xy[:n, 1], s=10, alpha=0.7, label="positive", color="tab:blue")
        ax.scatter(xy[n:, 0], xy[n:, 1], s=10, alpha=0.7, label="negative", color="tab:red")
        ax.set_xlabel("principal axis 1")
        ax.set_ylabel("principal axis 2")
    for ax in list(axes.flat)[len(layer_list) :]:
        ax.axis("off")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize="small")
    fig.suptitle(title or "Positive vs negative activations (PCA per layer)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_auc_by_layer(diagnosis: Diagnosis, path: str | Path, title: str = "") -> Path:
    """Behaviour AUC (and letter AUC for A/B data) by layer, with the 0.5 chance line."""
    from matplotlib.figure import Figure  # a figure of its own: the caller's backend is left alone

    layers = [row.layer for row in diagnosis.layers]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    nan = float("nan")  # an undefined AUC is a gap in the line, not a point
    behaviour = [nan if row.behaviour_auc is None else row.behaviour_auc for row in diagnosis.layers]
    ax.plot(layers, behaviour, marker="o", label="behaviour AUC")
    if diagnosis.letters is not None:
        letter = [nan if row.letter_auc is None else row.letter_auc for row in diagnosis.layers]
        ax.plot(layers, letter, marker="s", label="answer-letter AUC")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("AUC of projections onto the vector")
    ax.set_title(title or "Separation by layer")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
