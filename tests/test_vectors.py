"""SteeringVector: arithmetic (property-based), conversion, metadata, and saving and loading its files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from steerable import SteeringVector
from steerable.vectors import model_name_of

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


def test_vectors_of_mixed_dtypes_save_and_load(tmp_path) -> None:
    mixed = SteeringVector({1: torch.randn(8)}) + SteeringVector({2: torch.randn(8).half()})
    assert {v.dtype for _, v in mixed.items()} == {torch.float32}  # fp32 + fp16 promotes, as tensors do
    hand_made = SteeringVector({1: torch.randn(8), 2: torch.randn(8).half()})
    hand_made.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(tmp_path / "v.safetensors")
    assert loaded[2].dtype == torch.float16 and torch.equal(loaded[1], hand_made[1])


# -- files ----------------------------------------------------------------------------------------
def _write_vector_file(tmp_path, tensors, **metadata):
    from safetensors.torch import save_file

    base = {"format": "steerable.steering_vector", "format_version": "1", "site": "block", "hidden_size": "4"}
    path = tmp_path / "v.safetensors"
    save_file(tensors, str(path), metadata={**base, **metadata})
    return path


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"layer.1": torch.zeros(4, dtype=torch.float8_e4m3fn)}, dict(layers="[1]", dtype="float8_e4m3fn"), "float16"),
        ({"layer.1": torch.tensor(1.0)}, dict(layers="[1]", dtype="float32"), r"has shape \[\]"),
        ({"layer.1": torch.zeros(4)}, dict(layers="[1.7]", dtype="float32"), "layers must be a list of integers"),
        ({"layer.1": torch.zeros(4)}, dict(layers="[1]", dtype="float32", num_layers="x"), "num_layers"),
    ],
)
def test_bad_safetensors_files(tmp_path, tensors, metadata, message) -> None:
    with pytest.raises(ValueError, match=message):
        SteeringVector.load(_write_vector_file(tmp_path, tensors, **metadata))


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


def test_model_name_is_never_a_local_path(tmp_path) -> None:
    class Config:
        name_or_path = str(tmp_path / "cache" / "SmolLM2-135M-Instruct")

    assert model_name_of(Config()) == "SmolLM2-135M-Instruct"
    Config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model_name_of(Config()) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    Config.name_or_path = ""
    assert model_name_of(Config()) is None


def sample() -> SteeringVector:
    return SteeringVector(
        {2: torch.randn(8), -1: torch.randn(8)},
        site="mlp",
        model_type="llama",
        model_name="tiny",
        method="mean",
        description="a test vector",
    )


def test_round_trip_is_exact_with_metadata(tmp_path) -> None:
    vec = sample()
    vec.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(tmp_path / "v.safetensors")
    assert back.metadata() == vec.metadata() and back.layers == vec.layers
    assert all(torch.equal(back[i], vec[i]) for i in vec.layers)
    rows = SteeringVector({0: torch.randn(3, 8, dtype=torch.float64)})
    rows.save(tmp_path / "r.safetensors")
    again = SteeringVector.load(tmp_path / "r.safetensors")
    assert again.rows == 3 and again[0].dtype == torch.float64 and torch.equal(again[0], rows[0])


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(st.integers(-40, 40), st.integers(0, 2**31 - 1), min_size=1, max_size=4),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_round_trip_property(tmp_path_factory, seeds: dict[int, int], dtype: torch.dtype) -> None:
    vec = SteeringVector(
        {k: torch.randn(5, generator=torch.Generator().manual_seed(s)).to(dtype) for k, s in seeds.items()}
    )
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    vec.save(path)
    back = SteeringVector.load(path)
    assert back.layers == vec.layers and all(torch.equal(back[i], vec[i]) for i in vec.layers)


def _write(path, tensors, metadata) -> None:
    save_file(tensors, str(path), metadata=metadata)


GOOD_META = {
    "format": "steerable.steering_vector",
    "format_version": "1",
    "site": "block",
    "layers": "[1]",
    "hidden_size": "4",
    "dtype": "float32",
}


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"layer.1": torch.ones(4)}, {}, "missing steerable metadata"),
        ({"layer.1": torch.ones(4)}, {k: v for k, v in GOOD_META.items() if k != "site"}, "metadata is missing site"),
        ({"layer.1": torch.ones(4)}, {**GOOD_META, "format_version": "9"}, "format version 9"),
        ({"layer.2": torch.ones(4)}, GOOD_META, "do not match the layers"),
        ({"layer.1": torch.ones(5)}, GOOD_META, r"has shape \[5\], expected \[4\]"),
        ({"layer.1": torch.ones(4, dtype=torch.float64)}, GOOD_META, "has dtype torch.float64, metadata says float32"),
        ({"layer.1": torch.tensor([1.0, float("nan"), 0, 0])}, GOOD_META, "non-finite"),
        ({"layer.1": torch.ones(4, dtype=torch.int32)}, {**GOOD_META, "dtype": "int32"}, "not floating point"),
        ({"layer.1": torch.ones(4)}, {**GOOD_META, "layers": "one"}, "malformed metadata"),
    ],
)
def test_bad_files_error_clearly(tmp_path, tensors, metadata, message) -> None:
    path = tmp_path / "bad.safetensors"
    _write(path, tensors, metadata)
    with pytest.raises(ValueError, match=message):
        SteeringVector.load(path)


def test_truncated_corrupt_and_pickle_files_are_refused(tmp_path) -> None:
    sample().save(tmp_path / "v.safetensors")
    data = (tmp_path / "v.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SteeringVector.load(tmp_path / "cut.safetensors")
    header = json.dumps({"layer.1": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", len(header) + 100) + header)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SteeringVector.load(tmp_path / "junk.safetensors")
    torch.save({"1": torch.ones(4)}, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="pickle files are refused"):
        SteeringVector.load(tmp_path / "v.pt")
    with pytest.raises(FileNotFoundError):
        SteeringVector.load(tmp_path / "missing.safetensors")
