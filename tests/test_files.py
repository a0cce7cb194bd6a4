"""SteeringVector.save / load: exact round trips and clear errors for bad files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from steerable import SteeringVector


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
