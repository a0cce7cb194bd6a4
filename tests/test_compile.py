"""torch.compile: steering slots are stable, so new steerings, new values and position modes neither
recompile nor break the graph. Counted with a counting backend (dynamo's capture; no inductor, which
takes minutes here): the guards and graph breaks are dynamo's, whatever the backend."""

from __future__ import annotations

import torch
import torch._dynamo.testing

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import tiny_model

IDS, MASK = left_pad([[5, 6, 7, 8, 9], [10, 11, 12]])


def compiled_model():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = SteerableModel.wrap(tiny_model("llama"))
    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    return model, torch.compile(model, backend=counter), counter


def random_vector(seed: int) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({i: torch.randn(32, generator=generator) for i in range(3)})


def test_fifty_different_steerings_stay_within_two_graphs_and_equal_eager() -> None:
    model, compiled, counter = compiled_model()
    with torch.no_grad():
        compiled(input_ids=IDS, attention_mask=MASK)
        assert counter.frame_count == 1  # idle
        for i in range(50):
            with model.steer(random_vector(i), 0.5 + i / 10):
                got = compiled(input_ids=IDS, attention_mask=MASK).logits
                expected = model(input_ids=IDS, attention_mask=MASK).logits
            assert torch.equal(got, expected), i
        assert counter.frame_count == 2  # steering on: one more graph, whatever the values
        compiled(input_ids=IDS, attention_mask=MASK)
    assert counter.frame_count == 2  # off again: the idle graph is reused
    assert not torch._dynamo.utils.counters["graph_break"]


def test_position_modes_and_operators_add_no_graph_break_and_reuse_their_graph() -> None:
    model, compiled, counter = compiled_model()
    settings = [
        dict(min_token_index=1),
        dict(positions="prompt"),
        dict(positions=torch.tensor([True, False, True, True, False])),
        dict(operator="clamp", min_token_index=2),
        dict(operator="ablate", norm_preserving=True),
    ]
    with torch.no_grad():
        for kwargs in settings:
            before = counter.frame_count
            for i in range(5):  # new values of the same kind: no new graph
                changed = dict(kwargs)
                if "min_token_index" in changed:
                    changed["min_token_index"] = changed["min_token_index"] + i % 2
                with model.steer(random_vector(i), 1.0 + i, **changed):
                    got = compiled(input_ids=IDS, attention_mask=MASK).logits
                    expected = model(input_ids=IDS, attention_mask=MASK).logits
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
            assert counter.frame_count == before + 1, kwargs
    assert not torch._dynamo.utils.counters["graph_break"]


def test_update_changes_values_without_a_new_graph() -> None:
    model, compiled, counter = compiled_model()
    with torch.no_grad(), model.steer(random_vector(0), torch.tensor([1.0, 2.0]), min_token_index=1) as handle:
        compiled(input_ids=IDS, attention_mask=MASK)
        graphs = counter.frame_count
        for i in range(10):
            handle.update(multiplier=torch.tensor([float(i), -float(i)]), vector=random_vector(i + 100))
            got = compiled(input_ids=IDS, attention_mask=MASK).logits
            assert torch.equal(got, model(input_ids=IDS, attention_mask=MASK).logits)
        assert counter.frame_count == graphs


def test_generate_with_a_compiled_forward_steers_generated_tokens_without_a_graph_break() -> None:
    model, _, counter = compiled_model()
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with model.steer(random_vector(3), 6.0, positions="generated"):
        expected = model.generate(input_ids=IDS, attention_mask=MASK, **settings)
        model.forward = torch.compile(model.forward, backend=counter)
        try:
            got = model.generate(input_ids=IDS, attention_mask=MASK, **settings)
            again = model.generate(input_ids=IDS, attention_mask=MASK, **settings)
        finally:
            del model.forward
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert not torch._dynamo.utils.counters["graph_break"]
