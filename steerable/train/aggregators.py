"""Aggregators: from positive and negative activations ``[n, d]`` to one direction ``[d]``.

``mean`` is the CAA vector. ``pca_diff`` is the first principal component of the pair differences,
uncentred (the differences and their negatives are symmetric about the origin, as in
``steering-vectors``); ``pca_center`` is the first principal component of the activations centred on
each pair's midpoint (repeng's ``pca_center``); ``logistic`` is the weight vector of an L2-regularised
logistic regression probe (no intercept, C=1, on midpoint-centred activations). The direction
methods choose the sign so the mean difference projects positively, and scale the unit direction by
that projection, so multiplier 1 moves activations as far along it as the mean difference does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

Aggregator = Callable[[Tensor, Tensor], Tensor]


def mean(positive: Float[Tensor, "n d"], negative: Float[Tensor, "n d"]) -> Float[Tensor, " d"]:
    return (positive.double() - negative.double()).mean(0).to(positive.dtype)


def _scaled_to_mean(direction: Float[Tensor, " d"], positive: Tensor, negative: Tensor) -> Float[Tensor, " d"]:
    unit = direction / direction.norm()
    projection = (positive - negative).mean(0) @ unit
    return unit * projection  # sign flips with the projection, so the mean difference projects positively


def _first_component(data: Float[Tensor, "m d"]) -> Float[Tensor, " d"]:
    _, _, vh = torch.linalg.svd(data.double(), full_matrices=False)
    return vh[0].to(data.dtype)


def pca_diff(positive: Float[Tensor, "n d"], negative: Float[Tensor, "n d"]) -> Float[Tensor, " d"]:
    return _scaled_to_mean(_first_component(positive - negative), positive, negative)


def pca_center(positive: Float[Tensor, "n d"], negative: Float[Tensor, "n d"]) -> Float[Tensor, " d"]:
    midpoint = (positive + negative) / 2
    return _scaled_to_mean(_first_component(torch.cat([positive - midpoint, negative - midpoint])), positive, negative)


def logistic(
    positive: Float[Tensor, "n d"], negative: Float[Tensor, "n d"], c: float = 1.0, max_iter: int = 500
) -> Float[Tensor, " d"]:
    """L2-regularised logistic regression, solved with L-BFGS in float64: the same objective as
    scikit-learn's ``LogisticRegression(fit_intercept=False, C=c)``."""
    midpoint = (positive + negative).double() / 2
    x = torch.cat([positive.double() - midpoint, negative.double() - midpoint])
    y = torch.cat([torch.ones(len(positive)), -torch.ones(len(negative))]).double()
    weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights], max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = 0.5 * weights @ weights + c * torch.nn.functional.softplus(-y * (x @ weights)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return _scaled_to_mean(weights.detach().to(positive.dtype), positive, negative)


AGGREGATORS: dict[str, Aggregator] = {
    "mean": mean,
    "pca_diff": pca_diff,
    "pca_center": pca_center,
    "logistic": logistic,
}
