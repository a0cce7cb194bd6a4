"""Importing vectors from steering-vectors and repeng steers identically."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import hooked
from steerable.testing.tiny_models import tiny_model

IDS = torch.tensor([[5, 17, 33, 8, 61, 12]])


def test_steering_vectors_import_steers_identically() -> None:
    sv = pytest.importorskip("steering_vectors")
    direction = torch.randn(32, generator=torch.Generator().manual_seed(3))
    for layer_type, site in [("decoder_block", "block"), ("mlp", "mlp"), ("self_attn", "attn")]:
        theirs = sv.SteeringVector({1: direction, 2: -direction}, layer_type)
        vanilla = tiny_model("llama")
        with theirs.apply(vanilla, multiplier=1.5):
            expected = vanilla(IDS).logits
        model = SteerableModel.wrap(tiny_model("llama"))
        ours = SteeringVector.from_steering_vectors(theirs)
        assert ours.site == site and ours.layers == [1, 2]
        with model.steer(ours, 1.5):
            got = model(IDS).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=layer_type)


def test_repeng_import_maps_layers_to_block_outputs() -> None:
    # repeng's ControlModel adds directions[i] to the output of block i: the same as a hook on block i
    control = SimpleNamespace(model_type="llama", directions={1: np.ones(32, dtype=np.float32) * 0.5})
    vanilla = tiny_model("llama")
    with hooked(vanilla, {1: lambda h: h + 2.0 * 0.5}):
        expected = vanilla(IDS).logits
    model = SteerableModel.wrap(tiny_model("llama"))
    vec = SteeringVector.from_repeng(control)
    assert vec.model_type == "llama" and vec.site == "block"
    with model.steer(vec, 2.0):
        torch.testing.assert_close(model(IDS).logits, expected, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="directions dict"):
        SteeringVector.from_repeng(object())
