"""Hostile and unusual input: each a clear error (type and message) or the right value."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from steerable import ArchitectureSpec, SteerableModel, SteeringVector, register_architecture, train_steering_vector
from steerable.architectures import ARCHITECTURES
from steerable.testing.hooks import hooked, left_pad
from steerable.testing.tiny_models import tiny_model

IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]])


@pytest.fixture
def pair():
    return tiny_model("llama"), SteerableModel.wrap(tiny_model("llama"))


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kwargs).logits


# -- valid input that used to fail ------------------------------------------------------------------
def test_clamp_with_per_row_vectors_and_a_plain_multiplier_equals_a_hook(pair) -> None:
    vanilla, model = pair
    torch.manual_seed(0)
    rows = torch.randn(3, 32)
    units = (rows / rows.norm(dim=-1, keepdim=True))[:, None, :]
    with model.steer(SteeringVector({1: rows}), 0.5, operator="clamp"):
        got = logits(model)
    with hooked(vanilla, {1: lambda h: h + (0.5 - (h * units).sum(-1, keepdim=True)) * units}):
        expected = logits(vanilla)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_vectors_of_mixed_dtypes_save_and_load(tmp_path) -> None:
    mixed = SteeringVector({1: torch.randn(8)}) + SteeringVector({2: torch.randn(8).half()})
    assert {v.dtype for _, v in mixed.items()} == {torch.float32}  # fp32 + fp16 promotes, as tensors do
    hand_made = SteeringVector({1: torch.randn(8), 2: torch.randn(8).half()})
    hand_made.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(tmp_path / "v.safetensors")
    assert loaded[2].dtype == torch.float16 and torch.equal(loaded[1], hand_made[1])


def test_a_registered_custom_site_steers_records_and_trains(pair) -> None:
    vanilla, _ = pair
    register_architecture("llama_custom_site", ArchitectureSpec("model.layers", {"gate": "mlp.gate_proj"}))
    try:
        model = tiny_model("llama")
        model.config.model_type = "llama_custom_site"
        model = SteerableModel.wrap(model)
        v = SteeringVector({1: torch.randn(64)}, site="gate")  # gate_proj's width: the MLP's hidden size
        with model.steer(v, 1.0):
            got = logits(model)
        handle = vanilla.model.layers[1].mlp.gate_proj.register_forward_hook(lambda m, i, o: o + v[1])
        expected = logits(vanilla)
        handle.remove()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        with model.record(layers=[1], site="gate") as acts, torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
        assert acts[1].shape == (3, 5, 64)
        from steerable.testing.tiny_models import tiny_tokenizer

        trained = train_steering_vector(model, tiny_tokenizer(), [("w5 w6", "w7 w8")], layers=[1], site="gate")
        assert trained.site == "gate" and trained[1].shape == (64,)
        calls = []
        model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
        with pytest.raises(ValueError, match="site 'nope' is not available"):
            train_steering_vector(model, tiny_tokenizer(), [("w5 w6", "w7 w8")], layers=[1], site="nope")
        assert not calls  # refused before any forward
    finally:
        ARCHITECTURES.pop("llama_custom_site", None)


def test_per_row_multipliers_follow_num_return_sequences_in_generate(pair) -> None:
    _, model = pair
    torch.manual_seed(2)
    v = SteeringVector({1: torch.randn(32)})
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, num_beams=2, num_return_sequences=2)
    multipliers = torch.tensor([4.0, -4.0, 0.0])
    with model.steer(v, multipliers):
        repeated = model.generate(input_ids=IDS, attention_mask=MASK, **settings)
    for row in range(3):
        with model.steer(v, float(multipliers[row])):
            alone = model.generate(input_ids=IDS[row : row + 1, MASK[row].bool()], **settings)
        assert torch.equal(repeated[2 * row : 2 * row + 2, -4:], alone[:, -4:]), row


def test_a_recording_iterates_counts_and_keeps_forwards_apart(pair) -> None:
    _, model = pair
    with model.record(layers=[0, -1]) as acts, torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
        model(input_ids=IDS[:1], attention_mask=MASK[:1])
    assert list(acts) == [0, -1] and len(acts) == 2
    assert [t.shape[0] for t in acts.forwards(0)] == [3, 1]
    assert torch.equal(acts.forwards(2)[0], acts.forwards(-1)[0])  # -1 and n-1 name one layer
    with pytest.raises(ValueError, match=r"batch sizes \[3, 1\].*recording.forwards\(layer\)"):
        acts[0]
    with pytest.raises(ValueError, match="layers is empty"):
        with model.record(layers=[]):
            pass


def test_unwrapping_inside_a_record_block_is_clean(pair) -> None:
    vanilla, model = pair
    with model.record(layers=[1]) as acts:
        with torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
        SteerableModel.unwrap(model)
    assert acts[1].shape == (3, 5, 32)
    assert type(model) is type(vanilla) and torch.equal(logits(model), logits(vanilla))


def test_pickle_and_torch_save_store_the_plain_model_which_re_wraps(pair) -> None:
    vanilla, model = pair
    with model.steer(SteeringVector({1: torch.randn(32)}), 2.0, min_token_index=1):
        blob = pickle.dumps(model)
        buffer = io.BytesIO()
        torch.save(model, buffer)
    plain = pickle.loads(blob)
    assert type(plain) is type(vanilla) and type(plain.model.layers[1]) is type(vanilla.model.layers[1])
    assert not any("steering" in name for name, _ in plain.named_buffers())
    assert torch.equal(logits(plain), logits(vanilla))
    buffer.seek(0)
    again = SteerableModel.wrap(torch.load(buffer, weights_only=False))
    v = SteeringVector({1: torch.randn(32)})
    with again.steer(v, 2.0), model.steer(v, 2.0):
        assert torch.equal(logits(again), logits(model))


def test_a_handle_made_in_inference_mode_works_with_grad_later(pair) -> None:
    _, model = pair
    with torch.inference_mode():
        handle = model.steer(SteeringVector({1: torch.randn(32)}), 2.0, operator="ablate_then_add", min_token_index=1)
    out = model(input_ids=IDS, attention_mask=MASK).logits
    out.sum().backward()  # inference tensors would refuse to be saved for backward
    with torch.inference_mode():
        handle.update(multiplier=3.0)
    handle.update(vector=SteeringVector({1: torch.randn(32)}))
    model(input_ids=IDS, attention_mask=MASK).logits.sum().backward()
    handle.remove()


# -- input that must be refused -------------------------------------------------------------------
def test_values_are_copied_on_the_way_in(pair) -> None:
    _, model = pair
    multiplier, mask = torch.tensor([1.0, 2.0, 3.0]), torch.ones(5, dtype=torch.bool)
    with model.steer(SteeringVector({1: torch.randn(32)}), multiplier, positions=mask):
        before = logits(model)
        multiplier.fill_(float("nan"))
        mask.fill_(False)
        assert torch.equal(logits(model), before)


def test_overflow_after_scaling_or_the_cast_is_an_error(pair) -> None:
    _, model = pair
    with pytest.raises(ValueError, match="multiplier x vector overflows"):
        model.steer(SteeringVector({1: torch.full((32,), 1e30)}), 1e30)
    half = SteerableModel.wrap(tiny_model("llama", dtype=torch.float16))
    with pytest.raises(ValueError, match="overflows the layer's torch.float16"):
        half.steer(SteeringVector({1: torch.full((32,), 100.0)}), 1000.0)
    assert not model.is_steering and not half.is_steering


def test_a_token_mask_whose_rows_do_not_match_is_an_error_outside_generate(pair) -> None:
    _, model = pair
    with model.steer(SteeringVector({1: torch.randn(32)}), positions=torch.ones(1, 5, dtype=torch.bool)):
        with pytest.raises(ValueError, match="the token mask has 1 rows but the batch has 3.*only inside generate"):
            logits(model)


def test_multiplier_types(pair) -> None:
    _, model = pair
    v = SteeringVector({1: torch.randn(32)})
    with pytest.raises(TypeError, match="a multiplier tensor must hold numbers, got torch.bool"):
        model.steer(v, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="the token mask is on the meta device"):
        model.steer(v, positions=torch.ones(5, dtype=torch.bool, device="meta"))
    with model.steer(v, np.float32(2.0)):
        numpy_scalar = logits(model)
    with model.steer(v, 2.0):
        assert torch.equal(logits(model), numpy_scalar)
    assert not model.is_steering


def test_a_callable_aggregator_of_the_wrong_width_is_refused(pair) -> None:
    _, model = pair
    from steerable.testing.tiny_models import tiny_tokenizer

    with pytest.raises(ValueError, match=r"layer 1: half returned \[16\]; an aggregator must return a tensor \[32\]"):
        train_steering_vector(model, tiny_tokenizer(), [("w5 w6", "w7 w8")], layers=[1], method=half)


def half(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return (pos - neg).mean(0)[:16]


# -- files ----------------------------------------------------------------------------------------
def _write(tmp_path, tensors, **metadata):
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
        SteeringVector.load(_write(tmp_path, tensors, **metadata))


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


def test_bad_gguf_files(tmp_path) -> None:
    flat = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="one 1-D direction per layer"):
        SteeringVector.from_gguf(_gguf(tmp_path, {"direction.1": np.zeros((2, 4), dtype=np.float32)}))
    with pytest.raises(ValueError, match="'direction.1' and 'direction.01' both give layer 1"):
        SteeringVector.from_gguf(_gguf(tmp_path, {"direction.1": flat, "direction.01": flat}))
    with pytest.raises(ValueError, match="v.gguf: the controlvector.model_hint field is not valid UTF-8"):
        SteeringVector.from_gguf(_gguf(tmp_path, {"direction.1": flat}, hint=b"\xff\xfe"))


def test_the_cli_reports_bad_files_in_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    from steerable.cli import main

    path = _write(tmp_path, {"layer.1": torch.zeros(4, dtype=torch.float8_e4m3fn)}, layers="[1]", dtype="float8_e4m3fn")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steerable info: error: v.safetensors:") and "\n" not in err


def test_numpy_numbers_are_numbers_everywhere(pair) -> None:
    _, model = pair
    v = SteeringVector({np.int64(1): torch.randn(32)})
    assert v.layers == [1] and torch.equal((v * np.float32(2.0))[1], v[1] * 2.0)
    with model.steer(v, np.float64(1.5), min_token_index=np.int64(1)):
        got = logits(model)
    with model.steer(v, 1.5, min_token_index=1):
        assert torch.equal(logits(model), got)
    with model.record(layers=[np.int64(0)]) as acts, torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    assert acts[0].shape == (3, 5, 32)


def test_record_positions_outside_the_forward_are_a_clear_error(pair) -> None:
    _, model = pair
    with pytest.raises(
        ValueError, match=r"record positions \[-1, 7\] are outside row 0, which has 5 non-padding tokens"
    ):
        with model.record(layers=[0], positions=[-1, 7]), torch.no_grad():
            model(input_ids=IDS, attention_mask=MASK)
    assert not model.is_steering and model._steerable.taps == 0
