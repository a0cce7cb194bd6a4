"""SteeringVector: arithmetic (property-based), conversion and metadata."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerable import SteeringVector

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def vectors(draw, d: int = 4) -> SteeringVector:
    layers = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True))
    return SteeringVector({i: torch.tensor(draw(st.lists(finite, min_size=d, max_size=d))) for i in layers})


def dense(v: SteeringVector, layers=range(6)) -> torch.Tensor:
    return torch.stack([v[i] if i in v else torch.zeros(v.hidden_size) for i in layers])


@settings(max_examples=50, deadline=None)
@given(vectors(), vectors(), finite)
def test_arithmetic_matches_dense_tensors(a: SteeringVector, b: SteeringVector, k: float) -> None:
    torch.testing.assert_close(dense(a + b), dense(a) + dense(b))
    torch.testing.assert_close(dense(a - b), dense(a) - dense(b))
    torch.testing.assert_close(dense(-a), -dense(a))
    torch.testing.assert_close(dense(k * a), k * dense(a))
    torch.testing.assert_close(dense(a * k), k * dense(a))
    assert (a + b).layers == sorted(set(a.layers) | set(b.layers))
    if abs(k) > 1e-3:  # dividing by a tiny k overflows float32, which the vector rejects
        torch.testing.assert_close(dense(a / k), dense(a) / k)


def test_metadata_is_kept_and_mismatches_error() -> None:
    a = SteeringVector({1: torch.ones(3)}, site="mlp", model_type="llama", model_name="x", method="mean")
    b = (2 * a - a / 4).to(torch.float64)
    assert b.metadata() == a.metadata()
    assert b[1].dtype == torch.float64 and torch.equal(b[1], torch.full((3,), 1.75, dtype=torch.float64))
    assert a.hidden_size == 3 and a.rows is None and a.layers == [1] and len(a) == 1 and 1 in a
    assert "site='mlp'" in repr(a)
    with pytest.raises(ValueError, match="different sites"):
        a + SteeringVector({1: torch.ones(3)})
    with pytest.raises(ValueError, match="hidden size 3 and 4"):
        a + SteeringVector({1: torch.ones(4)}, site="mlp")
    with pytest.raises(ZeroDivisionError):
        a / 0
    with pytest.raises(ValueError, match="cannot scale"):
        a * float("inf")
    with pytest.raises(TypeError):
        a * "2"  # type: ignore[operator]
    rows = SteeringVector({0: torch.ones(5, 3)})
    assert rows.rows == 5 and rows.hidden_size == 3
