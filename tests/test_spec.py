"""steerable.Steering: one frozen value that steer, steer_rows, handles, the CLI and requests share."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch._dynamo.testing

from steerable import Condition, RowSteering, SteerableModel, Steering, SteeringVector
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import tiny_model

IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12]])


def vector(seed: int = 0, layers: tuple[int, ...] = (0, 1, 2)) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({i: torch.randn(32, generator=generator) for i in layers})


@pytest.fixture(scope="module")
def model():
    return SteerableModel.wrap(tiny_model("llama"))


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kwargs).logits


def test_a_spec_steers_exactly_as_the_keyword_arguments_it_holds(model) -> None:
    v = vector()
    spec = Steering(v, 2.5, operator="ablate_then_add", min_token_index=2, norm_preserving=True)
    with model.steer(spec) as handle:
        from_spec = logits(model)
        assert handle.steering is spec
    with model.steer(v, 2.5, operator="ablate_then_add", min_token_index=2, norm_preserving=True) as handle:
        from_kwargs = logits(model)
        assert dataclasses.asdict(handle.steering).keys() == dataclasses.asdict(spec).keys()
    assert torch.equal(from_spec, from_kwargs)
    assert not torch.equal(from_spec, logits(model))


def test_a_spec_is_frozen_and_replace_validates_again() -> None:
    spec = Steering(vector(), 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.multiplier = 2.0  # type: ignore[misc]
    assert spec.replace(multiplier=3).multiplier == 3.0
    with pytest.raises(ValueError, match="the multiplier must be finite"):
        spec.replace(multiplier=float("nan"))
    with pytest.raises(TypeError, match="Steering has no field layer_type"):
        spec.replace(layer_type="decoder_block")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"multiplier": True}, TypeError, "multiplier must be a number"),
        ({"multiplier": float("inf")}, ValueError, "multiplier must be finite"),
        ({"multiplier": torch.tensor([1.0, float("nan")])}, ValueError, "multiplier has non-finite values"),
        ({"operator": "nope"}, ValueError, "unknown operator 'nope'"),
        ({"positions": "middle"}, ValueError, "unknown positions 'middle'"),
        ({"positions": "assistant"}, ValueError, r"pass tokenizer=\.\.\."),
        ({"min_token_index": -1}, ValueError, "min_token_index must be an int >= 0"),
        ({"rows": [1, 0]}, ValueError, "rows must be a non-empty 1-D boolean mask"),
        ({"condition": 3}, TypeError, "conditions combine with conditions"),
    ],
)
def test_validation_happens_once_when_the_spec_is_made(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        Steering(vector(), **kwargs)


def test_row_steering_is_the_spec_and_its_fields_include_the_tokenizer() -> None:
    assert RowSteering is Steering
    assert "tokenizer" in {f.name for f in dataclasses.fields(Steering)}


def test_update_is_a_replace_of_the_handles_spec(model) -> None:
    v, w = vector(0), vector(1)
    with model.steer(v, 1.0, min_token_index=1) as handle:
        handle.update(multiplier=-2.0, vector=w)
        updated = logits(model)
        assert handle.steering.multiplier == -2.0 and handle.steering.vector is w
        assert handle.steering.min_token_index == 1
        with pytest.raises(ValueError, match="not operator"):
            handle.update(operator="clamp")
    with model.steer(w, -2.0, min_token_index=1):
        fresh = logits(model)
    assert torch.equal(updated, fresh)


def test_dicts_round_trip_with_names_paths_conditions_masks_and_rows(tmp_path) -> None:
    v, c = vector(0), vector(5)
    path = tmp_path / "happy.safetensors"
    v.save(path)
    loaded = SteeringVector.load(path)
    condition = Condition(c, 1, 0.25, "<") | Condition(c, 2, -0.5, score="cosine")
    spec = Steering(
        loaded,
        1.5,
        operator="clamp",
        positions=torch.tensor([True, False, True]),
        condition=condition,
        rows=[True, False],
    )
    data = spec.to_dict(names={"topic": c})
    assert json.loads(json.dumps(data)) == data
    assert data["vector"] == str(path) and data["operator"] == "clamp" and data["positions"] == [True, False, True]
    assert data["condition"] == {
        "any_of": [
            {"vector": "topic", "layer": 1, "threshold": 0.25, "comparator": "<", "score": "projection"},
            {"vector": "topic", "layer": 2, "threshold": -0.5, "comparator": ">", "score": "cosine"},
        ]
    }
    back = Steering.from_dict(data, vectors={"topic": c})
    assert back.to_dict(names={"topic": c}) == data
    assert torch.equal(back.vector[1], v[1])
    assert Steering(v).to_dict(names={"happy": v}) == {"vector": "happy"}  # defaults are left out


def test_from_dict_errors_name_the_problem() -> None:
    v = vector()
    with pytest.raises(KeyError, match="unknown vector 'sad': known vectors are happy"):
        Steering.from_dict({"vector": "sad"}, vectors={"happy": v})
    with pytest.raises(KeyError, match="unknown vector 'x.safetensors'"):
        Steering.from_dict({"vector": "x.safetensors"}, vectors={"happy": v}, allow_paths=False)
    with pytest.raises(ValueError, match=r"unknown steering keys \['strength'\]"):
        Steering.from_dict({"vector": "happy", "strength": 2}, vectors={"happy": v})
    with pytest.raises(ValueError, match="needs 'vector'"):
        Steering.from_dict({"multiplier": 2}, vectors={"happy": v})
    with pytest.raises(ValueError, match="unknown positions 'middle'"):
        Steering.from_dict({"vector": "happy", "positions": "middle"}, vectors={"happy": v})
    with pytest.raises(ValueError, match="has no name"):
        Steering(v).to_dict()
    with pytest.raises(ValueError, match="a request steers one sequence"):
        Steering(v, [1.0, 2.0]).to_request(names={"happy": v})


def test_steer_takes_a_spec_alone() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    with pytest.raises(TypeError, match="give a Steering alone"):
        model.steer(Steering(vector()), 2.0)


def test_five_new_conditions_of_one_shape_add_no_graph_after_the_first() -> None:
    torch._dynamo.reset()
    model = SteerableModel.wrap(tiny_model("llama"))
    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(model, backend=counter)
    graphs = []
    with torch.no_grad():
        for i in range(5):
            condition = Condition(vector(10 + i), 1, -0.2 + 0.1 * i, ">" if i % 2 else "<")
            with model.steer(vector(i, layers=(1, 2)), 2.0, condition=condition):
                got = compiled(input_ids=IDS, attention_mask=MASK).logits
                assert torch.equal(got, model(input_ids=IDS, attention_mask=MASK).logits)
            graphs.append(counter.frame_count)
    assert graphs == [graphs[0]] * 5
