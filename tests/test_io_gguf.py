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


def _gguf(tmp_path, tensors, hint: bytes | str = "llama"):
    import gguf

    path = tmp_path / "v.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", hint)  # type: ignore[arg-type]
    writer.add_uint32("controlvector.layer_count", len(tensors))
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_gguf_directions_and_hints(tmp_path) -> None:
    flat = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="one 1-D direction per layer"):
        SteeringVector.from_gguf(_gguf(tmp_path, {"direction.1": np.zeros((2, 4), dtype=np.float32)}))
    with pytest.raises(ValueError, match="'direction.1' and 'direction.01' both give layer 1"):
        SteeringVector.from_gguf(_gguf(tmp_path, {"direction.1": flat, "direction.01": flat}))
    with pytest.raises(ValueError, match="v.gguf: the controlvector.model_hint field is not valid UTF-8"):
        SteeringVector.from_gguf(_gguf(tmp_path, {"direction.1": flat}, hint=b"\xff\xfe"))


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


def test_a_model_hint_that_is_not_a_string_is_refused(tmp_path) -> None:
    vector = SteeringVector({1: torch.ones(4)}, model_type="llama")
    with pytest.raises(TypeError, match="model_hint must be a str .* got int: 7"):
        vector.to_gguf(tmp_path / "v.gguf", model_hint=7)  # type: ignore[arg-type]
    assert not (tmp_path / "v.gguf").exists()
    for add, message in [
        (lambda w: w.add_uint32("controlvector.model_hint", 7), "controlvector.model_hint field is UINT32, not a"),
        (lambda w: w.add_array("controlvector.model_hint", ["llama"]), "model_hint field is ARRAY/STRING, not a"),
        (lambda w: w.add_float32("steerable.method", 1.5), "the steerable.method field is FLOAT32, not a string"),
    ]:
        writer = gguf.GGUFWriter(str(tmp_path / "cv.gguf"), "controlvector")
        add(writer)
        writer.add_tensor("direction.1", np.ones(4, dtype=np.float32))
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        with pytest.raises(ValueError, match=message):
            SteeringVector.from_gguf(tmp_path / "cv.gguf")
    vector.to_gguf(tmp_path / "ok.gguf", model_hint="mistral")  # a string hint still goes through
    assert SteeringVector.from_gguf(tmp_path / "ok.gguf").model_type == "mistral"
