"""Role-aware positions: the tokens of the assistant's turns or of the last user turn, found from the
chat template, for steering and for reading. The oracle is the tokenizer's character offsets."""

from __future__ import annotations

import pytest
import torch
import transformers

from steerable import SteerableModel, SteeringVector, train_steering_vector
from steerable.chat_roles import ChatMarkers, role_positions
from steerable.testing import smollm2_path
from steerable.testing.hooks import hooked
from steerable.testing.tiny_models import tiny_config

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend, how are you?"}],
    [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three, please?"},
        {"role": "assistant", "content": "Six, of course."},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_path())
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token  # transformers 4 reads none from the GGUF
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    return SteerableModel.wrap(
        transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    )


def expected_mask(tokenizer, conversations, role: str) -> tuple[dict, torch.Tensor]:
    """From character offsets: a token is in a turn if its characters lie inside that turn's content."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    batch = tokenizer(texts, return_tensors="pt", padding=True, return_offsets_mapping=True)
    mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for row, (text, conversation) in enumerate(zip(texts, conversations, strict=True)):
        spans, start = [], 0
        for message in conversation:
            at = text.index(message["content"], start)
            spans.append((message["role"], at, at + len(message["content"])))
            start = at + len(message["content"])
        if role == "last_user_turn":
            spans = [s for s in spans if s[0] == "user"][-1:]
        wanted = [(a, b) for r, a, b in spans if r in ("assistant", "user") and (role != "assistant" or r == role)]
        for col, (a, b) in enumerate(batch["offset_mapping"][row].tolist()):
            if batch["attention_mask"][row, col] and b > a and any(lo <= a and b <= hi for lo, hi in wanted):
                mask[row, col] = True
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, mask


@pytest.mark.parametrize("role", ["assistant", "last_user_turn"])
def test_role_mask_selects_exactly_the_turn_tokens_with_left_padding(tokenizer, role) -> None:
    batch, expected = expected_mask(tokenizer, CONVERSATIONS, role)
    assert batch["attention_mask"][0, 0] == 0  # the short conversation is left-padded
    got = role_positions(tokenizer, batch["input_ids"], role)
    assert torch.equal(got, expected)
    picked = tokenizer.decode(batch["input_ids"][1][got[1]])
    assert picked == ("Four.Six, of course." if role == "assistant" else "And three plus three, please?")


@pytest.mark.parametrize("role", ["assistant", "last_user_turn"])
def test_steering_a_role_equals_a_hook_adding_at_those_tokens(tokenizer, model, role) -> None:
    batch, expected = expected_mask(tokenizer, CONVERSATIONS, role)
    torch.manual_seed(1)
    v = torch.randn(32)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad(), hooked(base, {1: lambda h: h + 2.0 * v * expected[..., None]}):
        reference = model(**batch).logits
    with torch.no_grad(), model.steer(SteeringVector({1: v}), 2.0, positions=role, tokenizer=tokenizer):
        got = model(**batch).logits
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, reference, atol=1e-3)  # the steering did something


def test_in_generate_the_assistant_is_what_is_generated(tokenizer, model) -> None:
    prompts = [tokenizer.apply_chat_template(c[:1], tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    vector = SteeringVector({1: torch.randn(32) * 4})
    run = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with model.steer(vector, 1.0, positions="generated"):
        generated = model.generate(**batch, **run)
    with model.steer(vector, 1.0, positions="assistant", tokenizer=tokenizer):
        assistant = model.generate(**batch, **run)
    with model.steer(vector, 1.0, positions="last_user_turn", tokenizer=tokenizer):
        user = model.generate(**batch, **run)
    unsteered = model.generate(**batch, **run)
    assert torch.equal(assistant, generated) and not torch.equal(generated, unsteered)
    # the last user turn is in the prompt: the same as a mask over those absolute positions
    turn = role_positions(tokenizer, batch["input_ids"], "last_user_turn")
    by_position = torch.zeros_like(turn)
    for row in range(turn.shape[0]):
        real = batch["attention_mask"][row].bool()
        by_position[row, : int(real.sum())] = turn[row][real]
    with model.steer(vector, 1.0, positions=by_position):
        masked = model.generate(**batch, **run)
    assert torch.equal(user, masked) and not torch.equal(user, unsteered)


def test_training_reads_the_assistant_turn(tokenizer, model) -> None:
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]
    vector = train_steering_vector(model, tokenizer, [(texts[0], texts[1])], layers=[1], read_token_index="assistant")
    batch, expected = expected_mask(tokenizer, CONVERSATIONS, "assistant")
    with torch.no_grad(), model.record(layers=[1]) as recording:
        model(**batch)
    acts = recording[1]
    means = [acts[row][expected[row]].mean(0) for row in range(2)]
    torch.testing.assert_close(vector[1], means[0] - means[1], rtol=1e-4, atol=1e-5)


def test_role_positions_need_a_tokenizer_with_a_template(tokenizer, model) -> None:
    vector = SteeringVector({1: torch.randn(32)})
    with pytest.raises(ValueError, match=r"positions='assistant' finds the turn .* pass tokenizer="):
        model.steer(vector, 1.0, positions="assistant")
    plain = transformers.AutoTokenizer.from_pretrained(smollm2_path())
    plain.chat_template = None
    with pytest.raises(ValueError, match="this tokenizer has none"):
        model.steer(vector, 1.0, positions="assistant", tokenizer=plain)
    assert not model.is_steering
    markers = ChatMarkers.from_tokenizer(tokenizer)
    assert tokenizer.decode(list(markers.assistant_header)) == "<|im_start|>assistant\n"
    assert tokenizer.decode(list(markers.end_of_turn)) == "<|im_end|>"


def test_compiled_role_steering_does_not_recompile_when_the_turns_move(tokenizer, model) -> None:
    import torch._dynamo.testing

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(model, backend=counter)

    def batch(users: list[str], replies: list[str]) -> dict:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": u}, {"role": "assistant", "content": r}], tokenize=False
            )
            for u, r in zip(users, replies, strict=True)
        ]
        return dict(tokenizer(texts, return_tensors="pt", padding=True))

    first = batch(["hello there friend", "good day"], ["yes", "no thanks at all"])
    second = batch(["good day", "hello there friend"], ["no thanks at all", "yes"])  # same width, turns moved
    assert first["input_ids"].shape == second["input_ids"].shape
    assert not torch.equal(*(role_positions(tokenizer, b["input_ids"], "assistant") for b in (first, second)))
    with (
        torch.no_grad(),
        model.steer(SteeringVector({1: torch.randn(32)}), 2.0, positions="assistant", tokenizer=tokenizer),
    ):
        for b in (first, second, first):
            assert torch.equal(compiled(**b).logits, model(**b).logits)
    assert counter.frame_count == 1 and not torch._dynamo.utils.counters["graph_break"]
