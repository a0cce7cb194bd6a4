"""Everyday ergonomics: per-row record positions, vector select/normalize/cosine, scalars and arrays
wherever numbers go, and GGUF files that keep where a vector came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import left_pad, right_pad
from steerable.testing.tiny_models import tiny_model
from steerable.vectors import model_name_of

ROWS = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


@pytest.mark.parametrize("wanted", [[-1], [0, -2], [1]])
def test_record_positions_count_each_rows_own_tokens_with_either_padding(model, wanted) -> None:
    got = {}
    for side, pad in (("left", left_pad), ("right", right_pad)):
        ids, mask = pad(ROWS)
        with torch.no_grad(), model.record(layers=[0, 2], positions=wanted) as recording:
            model(input_ids=ids, attention_mask=mask)
        got[side] = recording
    for layer in (0, 2):
        torch.testing.assert_close(got["left"][layer], got["right"][layer], rtol=0, atol=1e-5)
    assert torch.equal(got["left"].positions[0], got["right"].positions[0])
    # the oracle: each row run alone, unpadded
    for row, tokens in enumerate(ROWS):
        with torch.no_grad(), model.record(layers=[2]) as alone:
            model(input_ids=torch.tensor([tokens]))
        torch.testing.assert_close(got["right"][2][row], alone[2][0, wanted], rtol=0, atol=1e-5)
    expected = torch.tensor([[p % len(r) for p in wanted] for r in ROWS])
    assert torch.equal(got["right"].positions[0], expected)


def test_record_positions_past_a_short_row_name_the_row(model) -> None:
    ids, mask = right_pad(ROWS)
    with pytest.raises(ValueError, match=r"record positions \[3\] are outside row 1, which has 3 non-padding"):
        with torch.no_grad(), model.record(layers=[0], positions=[3]):
            model(input_ids=ids, attention_mask=mask)


def test_select_normalize_cosine() -> None:
    torch.manual_seed(0)
    v = SteeringVector({1: torch.randn(8), 2: torch.randn(8), 3: torch.randn(8)}, method="mean", num_layers=4)
    picked = v.select([1, -1])
    assert picked.layers == [1, 3] and picked.method == "mean" and torch.equal(picked[3], v[3])
    assert v.select(2).layers == [2]
    with pytest.raises(KeyError, match=r"layers \[0\] are not in this vector; it has layers \[1, 2, 3\]"):
        v.select([0, 1])
    unit = v.normalize()
    assert all(abs(n - 1.0) < 1e-6 for n in unit.norms().values())
    torch.testing.assert_close(unit[2] * v[2].norm(), v[2])
    cos = v.cosine(-2.5 * v)
    assert cos.keys() == {1, 2, 3} and all(abs(c + 1.0) < 1e-6 for c in cos.values())
    w = SteeringVector({2: v[2] + 0.0, 5: torch.randn(8)})
    assert v.cosine(w) == pytest.approx({2: 1.0})
    with pytest.raises(ValueError, match="the vectors share no layer"):
        v.cosine(SteeringVector({7: torch.randn(8)}))
    with pytest.raises(ValueError, match="layer 1: the vector is zero"):
        SteeringVector({1: torch.zeros(8)}).normalize()


def test_scaling_by_a_0d_tensor_keeps_gradients() -> None:
    v = SteeringVector({0: torch.ones(4)})
    assert torch.equal((v * torch.tensor(3.0))[0], torch.full((4,), 3.0))
    assert torch.equal((torch.tensor(2.0) * v)[0], torch.full((4,), 2.0))
    assert torch.equal((v / torch.tensor(4.0))[0], torch.full((4,), 0.25))
    scale = torch.tensor(2.0, requires_grad=True)
    (v * scale)[0].sum().backward()
    assert scale.grad == 4.0
    with pytest.raises(ValueError, match="scaled by a number or a 0-d tensor"):
        v * torch.ones(2)


def test_numpy_vectors_and_list_or_array_multipliers_steer_like_tensors(model) -> None:
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(32).astype(np.float32)
    from_numpy = SteeringVector({1: direction})
    assert from_numpy[1].dtype == torch.float32 and torch.equal(from_numpy[1], torch.from_numpy(direction))
    direction[0] = 99.0  # copied on the way in
    assert from_numpy[1][0] != 99.0
    ids, mask = left_pad(ROWS)
    with torch.no_grad():
        with model.steer(from_numpy, torch.tensor([1.0, -2.0, 0.5])):
            reference = model(input_ids=ids, attention_mask=mask).logits
        for multipliers in ([1.0, -2.0, 0.5], (1, -2, 0.5), np.array([1.0, -2.0, 0.5])):
            with model.steer(from_numpy, multipliers):
                assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)
    with pytest.raises(TypeError, match="a multiplier list or array must hold numbers"):
        model.steer(from_numpy, ["a", "b", "c"])
    with pytest.raises(TypeError, match="expected a floating-point array"):
        SteeringVector({1: np.arange(4)})


def test_gguf_keeps_method_model_name_and_description(tmp_path) -> None:
    v = SteeringVector(
        {1: torch.randn(8), 2: torch.randn(8)},
        model_type="llama",
        model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        method="pca_diff",
        description="refusal, balanced A/B",
    )
    v.to_gguf(tmp_path / "v.gguf")
    back = SteeringVector.from_gguf(tmp_path / "v.gguf")
    assert (back.model_type, back.model_name, back.method, back.description) == (
        "llama",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "pca_diff",
        "refusal, balanced A/B",
    )
    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "v.gguf"))
    assert reader.get_field("controlvector.layer_count") is not None  # llama.cpp's keys are still there


def test_model_name_is_never_a_local_path(tmp_path) -> None:
    class Config:
        name_or_path = str(tmp_path / "cache" / "SmolLM2-135M-Instruct")

    assert model_name_of(Config()) == "SmolLM2-135M-Instruct"
    Config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_name_of(Config()) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    Config.name_or_path = ""
    assert model_name_of(Config()) is None
