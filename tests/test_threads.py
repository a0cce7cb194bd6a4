"""Threads: steering is model-global (like the weights); what differs between forwards travels with
each call, so forwards running at the same time never disturb each other. Recording sees only its own
thread's forwards."""

from __future__ import annotations

import threading

import torch

from steerable import SteerableModel, SteeringVector
from steerable.testing.hooks import left_pad
from steerable.testing.tiny_models import tiny_model

BATCHES = [
    left_pad([[5, 6, 7, 8, 9, 10], [11, 12]]),
    left_pad([[13, 14], [15, 16, 17, 18, 19], [20, 21, 22]]),
]


def run_in_threads(work, n_threads: int) -> list:
    results: list = [None] * n_threads
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def target(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_two_threads_of_200_forwards_with_different_masks_equal_single_thread_results() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    torch.manual_seed(0)
    vector = SteeringVector({i: torch.randn(32) for i in range(3)})
    with model.steer(vector, 3.0, operator="ablate_then_add", min_token_index=1), torch.no_grad():
        expected = [model(input_ids=ids, attention_mask=mask).logits for ids, mask in BATCHES]

        def work(i: int) -> list[bool]:
            ids, mask = BATCHES[i]
            return [torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected[i]) for _ in range(200)]

        results = run_in_threads(work, 2)
    assert all(all(r) for r in results)


def test_generate_in_two_threads_keeps_each_threads_prompt_lengths() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    torch.manual_seed(1)
    vector = SteeringVector({1: torch.randn(32)})
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with model.steer(vector, 6.0, positions="generated"):
        expected = [model.generate(input_ids=ids, attention_mask=mask, **settings) for ids, mask in BATCHES]
        results = run_in_threads(
            lambda i: [
                torch.equal(
                    model.generate(input_ids=BATCHES[i][0], attention_mask=BATCHES[i][1], **settings), expected[i]
                )
                for _ in range(10)
            ],
            2,
        )
    assert all(all(r) for r in results)


def test_a_recording_sees_only_its_own_threads_forwards() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    recorded_shapes = []

    def work(i: int) -> list[tuple[int, int]]:
        ids, mask = BATCHES[i]
        if i == 0:
            with model.record(layers=[1]) as recording:
                for _ in range(20):
                    model(input_ids=ids, attention_mask=mask)
            return [tuple(step[1].shape[:2]) for step in recording.steps]
        for _ in range(40):
            model(input_ids=ids, attention_mask=mask)
        return []

    with torch.no_grad():
        recorded_shapes = run_in_threads(work, 2)[0]
    assert recorded_shapes == [tuple(BATCHES[0][0].shape)] * 20


def test_steering_and_removing_from_many_threads_leaves_a_clean_model() -> None:
    model = SteerableModel.wrap(tiny_model("llama"))
    ids, mask = BATCHES[0]
    with torch.no_grad():
        idle = model(input_ids=ids, attention_mask=mask).logits

    def work(i: int) -> None:
        vector = SteeringVector({i % 3: torch.ones(32)})
        for k in range(50):
            with model.steer(vector, float(k), positions="prompt" if k % 2 else "all"):
                pass

    run_in_threads(work, 4)
    assert not model.is_steering and model._steerable.active is None
    assert not any("steering_" in name for name, _ in model.named_buffers())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, idle)


def test_applying_and_removing_while_another_thread_runs_forwards_gives_whole_steerings() -> None:
    """Each forward runs with the steerings in force when it entered the model: steered by all of a
    configuration or by none of it, never part, and never an error, whatever the other thread does."""
    from steerable import Condition, Steering

    model = SteerableModel.wrap(tiny_model("llama"))
    torch.manual_seed(4)
    v, c = SteeringVector({i: torch.randn(32) for i in range(1, 3)}), SteeringVector({1: torch.randn(32)})
    ids, mask = BATCHES[0]
    configurations = [
        lambda: model.steer(v, 3.0, min_token_index=2),
        lambda: model.steer(v, -2.0, condition=Condition(c, 1, -1.0)),  # fires on every row
        lambda: model.steer_rows([Steering(v, 2.0), Steering(v, 1.0, operator="ablate")]),
    ]
    with torch.no_grad():
        outcomes = [model(input_ids=ids, attention_mask=mask).logits]
        for apply in configurations:
            with apply():
                outcomes.append(model(input_ids=ids, attention_mask=mask).logits)
    assert all(not torch.equal(outcomes[0], other) for other in outcomes[1:])
    stop = threading.Event()

    def work(i: int) -> list[int]:
        if i == 1:  # the other thread: apply and remove, as fast as it can, until the forwards end
            while not stop.is_set():
                for apply in configurations:
                    apply().remove()
            return []
        seen = []
        with torch.no_grad():
            for _ in range(150):
                got = model(input_ids=ids, attention_mask=mask).logits
                seen.append(next((k for k, known in enumerate(outcomes) if torch.equal(got, known)), -1))
        stop.set()
        return seen

    seen = run_in_threads(work, 2)[0]
    assert -1 not in seen, f"{seen.count(-1)} of 150 forwards were partly steered"
    assert not model.is_steering and model._steerable.active is None
