"""steering-vectors' aggregators, on steerable's: the same directions, at the seed's scale (PCA and
logistic directions have unit norm; steerable's own methods scale them to the mean projection unless
``normalize=True``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from steerable.train import aggregators as native

Aggregator = Callable[[Tensor, Tensor], Tensor]


def _unit(direction: Tensor) -> Tensor:
    return torch.nn.functional.normalize(direction, dim=0)


def mean_aggregator() -> Aggregator:
    """The mean of the positive-minus-negative differences (CAA)."""

    def _mean_aggregator(pos_acts: Tensor, neg_acts: Tensor) -> Tensor:
        return (pos_acts - neg_acts).mean(dim=0)

    return _mean_aggregator


def pca_aggregator() -> Aggregator:
    """The first principal component of the differences, uncentred, unit norm, pointing with the mean
    difference (steerable's ``pca_diff`` normalized)."""

    @torch.no_grad()
    def _pca_aggregator(pos_acts: Tensor, neg_acts: Tensor) -> Tensor:
        return _unit(native.pca_diff(pos_acts, neg_acts))

    return _pca_aggregator


#: scikit-learn ``LogisticRegression`` options the steerable solver takes, and how
_SKLEARN_OPTIONS = ("C", "max_iter", "penalty")


def logistic_aggregator(sklearn_kwargs: dict[str, Any] | None = None) -> Aggregator:
    """Logistic regression (no intercept) on midpoint-centred activations, unit norm. Of scikit-learn's
    options, ``C``, ``max_iter`` and ``penalty`` (``"l2"`` or ``None``) are honoured; steerable solves the
    same objective with L-BFGS in float64 (scikit-learn is not needed)."""
    options = dict(sklearn_kwargs or {})
    unknown = sorted(set(options) - set(_SKLEARN_OPTIONS))
    if unknown:
        raise ValueError(
            f"logistic_aggregator: sklearn_kwargs {unknown} are not supported; steerable solves L2 logistic "
            f"regression itself and takes {', '.join(_SKLEARN_OPTIONS)}; for another probe pass your own "
            "aggregator callable (pos [n, d], neg [n, d]) -> [d]"
        )
    penalty = options.get("penalty", "l2")
    if penalty not in ("l2", None):
        raise ValueError(f"logistic_aggregator: penalty {penalty!r} is not supported; use 'l2' or None")
    c = 1e4 if penalty is None else float(options.get("C", 1.0))  # no penalty: a negligible one
    max_iter = int(options.get("max_iter", 500))

    @torch.no_grad()
    def _logistic_aggregator(pos_acts: Tensor, neg_acts: Tensor) -> Tensor:
        return _unit(native.logistic(pos_acts, neg_acts, c=c, max_iter=max_iter))

    return _logistic_aggregator
