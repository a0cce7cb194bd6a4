"""optimize_steering_vector: likelihood and BiPO objectives, options and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_cli import tiny_dir  # noqa: F401 - a fixture

from steerable import Completion, Preference, SteerableModel, SteeringVector, optimize_steering_vector
from steerable.testing.hooks import hooked
from steerable.testing.tiny_models import tiny_model, tiny_tokenizer
from steerable.train.learned import _objective, encode, sequence_logprobs

COMPLETIONS = [Completion("w5 w6 w7", "w40 w41"), Completion("w8 w9", "w40 w42 w41"), Completion("w10", "w40 w41")]


PREFERENCES = [
    Preference("w5 w6 w7", "w40 w41", "w50 w51 w52"),
    Preference("w8 w9", "w40 w42", "w50"),
    Preference("w10 w11 w12 w13", "w40", "w51 w50"),
    Preference("w14", "w41 w40", "w52"),
]


def tokenizer(side: str = "left"):
    tok = tiny_tokenizer()
    tok.padding_side = side
    return tok


@pytest.fixture
def model():
    return SteerableModel.wrap(tiny_model("llama"))


def logprob(model, items, vector=None, multiplier=1.0) -> float:
    batch = encode(tokenizer(), [i.prompt for i in items], [i.completion for i in items], torch.device("cpu"))
    with torch.no_grad():
        if vector is None:
            return float(sequence_logprobs(model, batch).sum())
        with model.steer(vector, multiplier):
            return float(sequence_logprobs(model, batch).sum())


def test_likelihood_learns_lowers_its_loss_and_is_deterministic(model) -> None:
    kwargs = dict(layers=[1], objective="likelihood", lr=0.1, epochs=15, batch_size=2, seed=3)
    first = optimize_steering_vector(model, tokenizer("left"), COMPLETIONS, **kwargs)
    again = optimize_steering_vector(model, tokenizer("left"), COMPLETIONS, **kwargs)
    right = optimize_steering_vector(model, tokenizer("right"), COMPLETIONS, **kwargs)
    assert torch.equal(first[1], again[1])  # the same seed, the same vector
    torch.testing.assert_close(right[1], first[1], rtol=1e-4, atol=1e-5)  # padding side does not matter
    assert first.method == "learned:likelihood" and "objective=likelihood" in first.description
    assert logprob(model, COMPLETIONS, first) > logprob(model, COMPLETIONS) + 1.0
    assert not any(p.grad is not None for p in model.parameters())  # the model stayed frozen
    assert all(p.requires_grad for p in model.parameters())  # and its flags are back


def test_promptless_likelihood_and_a_user_loss(model) -> None:
    promptless = [Completion("", "w40 w41 w40 w41")]
    vec = optimize_steering_vector(model, tokenizer(), promptless, [0], lr=0.1, epochs=10)
    assert logprob(model, promptless, vec) > logprob(model, promptless)

    def prefer_token_7(net, items) -> torch.Tensor:
        return -net(input_ids=torch.tensor([[5, 6, 8]])).logits[0, -1].log_softmax(-1)[7]

    vec = optimize_steering_vector(model, tokenizer(), [None] * 4, [1], prefer_token_7, lr=0.1, epochs=10)
    with torch.no_grad():
        before = prefer_token_7(model, [])
        with model.steer(vec):
            after = prefer_token_7(model, [])
    assert after < before - 0.5 and vec.method == "learned:prefer_token_7"


def _hand_logprob(vanilla, prompt: str, completion: str, edit) -> torch.Tensor:
    tok = tokenizer()
    ids = tok(prompt)["input_ids"] + tok(completion, add_special_tokens=False)["input_ids"]
    start = len(tok(prompt)["input_ids"])
    with hooked(vanilla, {1: edit}):
        logits = vanilla(input_ids=torch.tensor([ids])).logits[0]
    return sum(logits[t - 1].log_softmax(-1)[ids[t]] for t in range(start, len(ids)))


def test_bipo_loss_and_gradient_equal_a_hand_computation() -> None:
    model, vanilla = SteerableModel.wrap(tiny_model("llama")), tiny_model("llama")
    torch.manual_seed(0)
    start = torch.randn(32)
    beta = 0.5
    items = PREFERENCES[:2]

    v = torch.nn.Parameter(start.clone())
    with model.steer(SteeringVector({1: v}), 1.0) as handle:
        summed, count = _objective("bipo", tokenizer(), beta)(model, handle, 1.0, items, torch.device("cpu"))
        loss = summed / count  # a sum over the items, and their number
        loss.backward()
    assert count == len(items)

    w = start.clone().requires_grad_(True)
    terms = []
    for item in items:

        def logp(text: str, sign: float, prompt: str = item.prompt) -> torch.Tensor:
            return _hand_logprob(vanilla, prompt, text, lambda h, s=sign: h + s * w)

        ref_c, ref_r = logp(item.chosen, 0.0).detach(), logp(item.rejected, 0.0).detach()
        plus = beta * ((logp(item.chosen, 1.0) - ref_c) - (logp(item.rejected, 1.0) - ref_r))
        minus = beta * ((logp(item.chosen, -1.0) - ref_c) - (logp(item.rejected, -1.0) - ref_r))
        terms.append(-(F.logsigmoid(plus) + F.logsigmoid(-minus)) / 2)
    expected = torch.stack(terms).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v.grad, w.grad, rtol=1e-4, atol=1e-6)


def test_bipo_moves_the_preference_both_ways(model) -> None:
    vec = optimize_steering_vector(model, tokenizer(), PREFERENCES, [1], "bipo", lr=0.05, epochs=20, beta=1.0)
    chosen = [Completion(p.prompt, p.chosen) for p in PREFERENCES]
    rejected = [Completion(p.prompt, p.rejected) for p in PREFERENCES]

    def margin(multiplier: float | None) -> float:
        if multiplier is None:
            return logprob(model, chosen) - logprob(model, rejected)
        return logprob(model, chosen, vec, multiplier) - logprob(model, rejected, vec, multiplier)

    assert margin(1.0) > margin(None) + 1.0 > margin(-1.0) + 2.0
    assert vec.method == "learned:bipo"


def test_options_init_max_norm_patience_steps_and_bad_input(model) -> None:
    init = SteeringVector({1: torch.full((32,), 0.5)})
    capped = optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], lr=0.5, steps=5, init=init, max_norm=0.3)
    assert float(capped[1].norm()) <= 0.3 + 1e-6
    assert "steps=5" in capped.description
    stopped = optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], lr=0.0001, epochs=50, patience=1)
    assert int(stopped.description.split("steps=")[1].split()[0]) < 50 * 2  # stopped before 50 epochs of 2 steps
    accumulated = optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], batch_size=1, accumulate=3, epochs=2)
    assert "steps=2" in accumulated.description  # 3 batches of 1, 3 per step: 1 step per epoch
    with pytest.raises(ValueError, match="unknown objective 'dpo'"):
        optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], "dpo")
    with pytest.raises(TypeError, match=r"expected a Preference or a \(prompt, chosen, rejected\)"):
        optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], "bipo")
    with pytest.raises(ValueError, match="data is empty"):
        optimize_steering_vector(model, tokenizer(), [], [1])
    assert not model.is_steering and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["bipo", "likelihood"])
def test_the_cli_trains_learned_vectors(tiny_dir, tmp_path, method) -> None:  # noqa: F811 - the fixture
    from steerable.cli import main

    data = tmp_path / "prefs.json"
    data.write_text(
        json.dumps([{"prompt": p.prompt, "positive": p.chosen, "negative": p.rejected} for p in PREFERENCES])
    )
    out = tmp_path / "v.safetensors"
    args = ["train", "--model", str(tiny_dir), "--data", str(data), "--layers", "1", "--method", method]
    assert main([*args, "--epochs", "2", "--out", str(out)]) == 0
    vec = SteeringVector.load(out)
    assert vec.method == f"learned:{method}" and vec.layers == [1] and float(vec[1].norm()) > 0


# -- hardening: mode, grad mode, refused options, non-finite and disconnected losses -------------------
def _dropout_model():
    """A tiny GPT-2 with its default dropout (0.1), in training mode: dropout would make runs differ."""
    net = SteerableModel.wrap(tiny_model("gpt2"))
    assert net.config.resid_pdrop == 0.1
    return net.train()


def test_optimisation_runs_in_eval_mode_and_restores_each_modules_mode() -> None:
    net = _dropout_model()
    net.transformer.h[0].eval()  # a mixed model: each module gets its own mode back
    kwargs = dict(lr=0.1, steps=4, batch_size=2, seed=1)
    first = optimize_steering_vector(net, tokenizer(), COMPLETIONS, [1], **kwargs)
    again = optimize_steering_vector(net, tokenizer(), COMPLETIONS, [1], **kwargs)
    modes = [m.training for m in net.modules()]
    assert net.training and not net.transformer.h[0].training and not net.transformer.h[0].attn.training
    assert modes == [m.training for m in net.modules()] and sum(modes) > 10
    reference = optimize_steering_vector(net.eval(), tokenizer(), COMPLETIONS, [1], **kwargs)
    assert torch.equal(first[1], again[1]) and torch.equal(first[1], reference[1])  # no dropout in it
    assert float(first[1].norm()) > 0.1
    net.train()
    bipo = optimize_steering_vector(net, tokenizer(), PREFERENCES, [1], "bipo", lr=0.05, steps=3, beta=1.0)
    bipo_eval = optimize_steering_vector(net.eval(), tokenizer(), PREFERENCES, [1], "bipo", lr=0.05, steps=3, beta=1.0)
    torch.testing.assert_close(bipo[1], bipo_eval[1], rtol=0, atol=0)  # one model for reference and steered


def test_gradient_checkpointing_in_training_mode_learns_the_eval_vector() -> None:
    net = _dropout_model()
    kwargs = dict(lr=0.1, steps=3, batch_size=2)
    reference = optimize_steering_vector(net.eval(), tokenizer(), COMPLETIONS, [1], **kwargs)
    net.gradient_checkpointing_enable()
    net.train()
    checkpointed = optimize_steering_vector(net, tokenizer(), COMPLETIONS, [1], **kwargs)
    torch.testing.assert_close(checkpointed[1], reference[1], rtol=1e-5, atol=1e-6)
    assert net.training


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_optimisation_works_under_no_grad_and_inference_mode(model, mode) -> None:
    kwargs = dict(lr=0.1, steps=3, batch_size=2)
    reference = optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], **kwargs)
    with getattr(torch, mode)():
        inside = optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], **kwargs)
        assert not torch.is_grad_enabled()  # the caller's grad mode is back
    torch.testing.assert_close(inside[1], reference[1], rtol=0, atol=0)
    assert float(inside[1].norm()) > 0.1


def test_numpy_scalars_are_numbers() -> None:
    import numpy as np

    model = SteerableModel.wrap(tiny_model("llama"))
    given = optimize_steering_vector(
        model, tokenizer(), COMPLETIONS, [1], lr=np.float32(0.01), multiplier=np.float64(1.0), steps=np.int64(2)
    )
    plain = optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], lr=float(np.float32(0.01)), steps=2)
    torch.testing.assert_close(given[1], plain[1], rtol=0, atol=0)
    assert "lr=0.01 steps=2" in given.description


def test_a_non_finite_loss_stops_at_its_step(model) -> None:
    calls = []

    def blows_up(net, items) -> torch.Tensor:
        calls.append(1)
        loss = -net(input_ids=torch.tensor([[5, 6, 8]])).logits[0, -1].log_softmax(-1)[7]
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(ValueError, match="the loss is nan at step 3 of 10"):
        optimize_steering_vector(model, tokenizer(), [None] * 2, [1], blows_up, steps=10, batch_size=2)
    assert len(calls) == 3  # stopped there, not after all 10 steps
    assert not model.is_steering and all(p.requires_grad for p in model.parameters())


def test_a_loss_that_does_not_depend_on_the_vector_is_refused(model) -> None:
    def constant(net, items) -> torch.Tensor:
        return torch.ones((), requires_grad=True) * 2.0

    def zero_gradient(net, items) -> torch.Tensor:
        return net(input_ids=torch.tensor([[5, 6, 8]])).logits.sum() * 0.0

    with pytest.raises(ValueError, match=r"does not depend on the steering vector at layers \[1\].*missing"):
        optimize_steering_vector(model, tokenizer(), [None], [1], constant, steps=2)
    with pytest.raises(ValueError, match=r"does not depend on the steering vector at layers \[1\].*zero"):
        optimize_steering_vector(model, tokenizer(), [None], [1], zero_gradient, steps=2)

    def reads_layer_0(net, items) -> torch.Tensor:  # the block-0 output does not see layer 2's vector
        return net(input_ids=torch.tensor([[5, 6, 8]]), output_hidden_states=True).hidden_states[1].sum()

    with pytest.raises(ValueError, match=r"at layers \[2\]"):
        optimize_steering_vector(model, tokenizer(), [None], [0, 2], reads_layer_0, steps=2)
    assert not model.is_steering


@pytest.mark.parametrize(
    "option, message",
    [
        (dict(multiplier=0), "multiplier must be a finite non-zero number"),
        (dict(multiplier=float("inf")), "multiplier must be a finite non-zero number"),
        (dict(patience=-1), "patience must be an int >= 1, got -1"),
        (dict(patience=0), "patience must be an int >= 1, got 0"),
        (dict(lr=True), "lr must be a finite number > 0"),
        (dict(max_norm=float("nan")), "max_norm must be a finite number > 0"),
        (dict(beta=0.0), "beta must be a finite number > 0"),
        (dict(steps=0), "steps must be an int >= 1"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(model, option, message) -> None:
    with pytest.raises(ValueError, match=message):
        optimize_steering_vector(model, tokenizer(), COMPLETIONS, [1], **option)
    assert not model.is_steering and all(p.requires_grad for p in model.parameters())
