"""GGUF control vectors: round trips, reader view, and files that cannot be read."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerable import SteeringVector


def test_gguf_round_trip_and_reader_view(tmp_path) -> None:
    vec = SteeringVector({1: torch.randn(32), 2: torch.randn(32)}, model_type="llama")
    path = tmp_path / "v.gguf"
    vec.to_gguf(path)
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    hint = reader.get_field("controlvector.model_hint")
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = reader.get_field("controlvector.layer_count")
    assert int(count.parts[count.data[0]][0]) == 2
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [32]
    back = SteeringVector.from_gguf(path)
    assert back.layers == [1, 2] and back.site == "block" and back.model_type == "llama"
    assert all(torch.equal(back[i], vec[i]) for i in (1, 2))


@settings(max_examples=20, deadline=None)
@given(st.dictionaries(st.integers(1, 60), st.integers(0, 2**31 - 1), min_size=1, max_size=4))
def test_gguf_round_trip_property(tmp_path_factory, seeds: dict[int, int]) -> None:
    vec = SteeringVector({k: torch.randn(6, generator=torch.Generator().manual_seed(s)) for k, s in seeds.items()})
    path = tmp_path_factory.mktemp("g") / "v.gguf"
    vec.to_gguf(path)
    back = SteeringVector.from_gguf(path)
    assert back.layers == vec.layers and all(torch.equal(back[i], vec[i]) for i in vec.layers)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (SteeringVector({1: torch.ones(4)}, site="mlp"), "block outputs only"),
        (SteeringVector({0: torch.ones(4), 1: torch.ones(4)}), "layer 0 cannot be written"),
        (SteeringVector({-1: torch.ones(4)}), "negative"),
        (SteeringVector({1: torch.ones(2, 4)}), "one vector per layer"),
    ],
)
def test_gguf_refuses_what_it_cannot_express(tmp_path, vector, message) -> None:
    with pytest.raises(ValueError, match=message):
        vector.to_gguf(tmp_path / "v.gguf")


def test_bad_gguf_files(tmp_path) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 7)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        SteeringVector.from_gguf(tmp_path / "junk.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    writer.add_tensor("direction.1", np.ones(4, dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ValueError, match="is 'llama', not 'controlvector'"):
        SteeringVector.from_gguf(tmp_path / "model.gguf")
    for name, data, message in [
        ("direction.0", np.ones(4, dtype=np.float32), "direction.0 is invalid"),
        ("weights", np.ones(4, dtype=np.float32), "unexpected tensor 'weights'"),
        ("direction.2", np.ones(4, dtype=np.float16), "expected F32"),
    ]:
        writer = gguf.GGUFWriter(str(tmp_path / "cv.gguf"), "controlvector")
        writer.add_tensor(name, data)
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        with pytest.raises(ValueError, match=message):
            SteeringVector.from_gguf(tmp_path / "cv.gguf")
    with pytest.raises(FileNotFoundError):
        SteeringVector.from_gguf(tmp_path / "missing.gguf")
