"""The seed library's own public-API tests (steering-vectors 0.12.2, tests/test_*.py), run against
``steerable.compat.steering_vectors`` with only the imports changed.

Tiny random models stand in for the hub ones (GPT-2 with its 12 layers, Llama/Gemma/Mistral with 3,
narrow widths: ``GPT2_D`` and ``LLAMA_D`` replace 768 and 1024), SmolLM2's byte-level BPE tokenizer
(offline) stands in for GPT-2's and Vicuna's, right-padding as GPT-2's does, and ``LlamaWrapper`` (the
CAA reference, which transformers 5 breaks) is a forward-hook version of the same two operations:
add a vector to a block's output, and read a block's output. The seed's tests of its private helpers
(token_utils, torch_utils) are not ported: those helpers are not part of its API.
"""
# ruff: noqa: E501, N802, B905

import copy
from collections.abc import Callable

import pytest
import torch
import transformers
from torch.nn.functional import cosine_similarity
from transformers import (
    GemmaForCausalLM,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    MistralForCausalLM,
    PreTrainedTokenizer,
)

from steerable.compat.steering_vectors.aggregators import (
    logistic_aggregator,
    mean_aggregator,
    pca_aggregator,
)
from steerable.compat.steering_vectors.layer_matching import (
    ModelLayerConfig,
    _guess_block_matcher_from_layers,
    enhance_model_config_matchers,
    guess_decoder_block_matcher,
    guess_input_layernorm_matcher,
    guess_mlp_matcher,
    guess_post_attention_layernorm_matcher,
    guess_self_attn_matcher,
)
from steerable.compat.steering_vectors.record_activations import record_activations
from steerable.compat.steering_vectors.steering_operators import (
    ablation_operator,
    ablation_then_addition_operator,
    addition_operator,
)
from steerable.compat.steering_vectors.steering_vector import SteeringVector
from steerable.compat.steering_vectors.train_steering_vector import (
    SteeringVectorTrainingSample,
    _get_token_index,
    train_steering_vector,
)
from steerable.testing.smollm2 import smollm2_path

GPT2_D = 32
LLAMA_D = 64


# ---- the seed's tests/conftest.py, with tiny models ----


@pytest.fixture(scope="session")
def _bpe_tokenizer() -> PreTrainedTokenizer:
    return transformers.AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture
def tokenizer(_bpe_tokenizer) -> PreTrainedTokenizer:
    tok = copy.deepcopy(_bpe_tokenizer)
    tok.padding_side = "right"  # as GPT-2's
    return tok


llama_tokenizer = tokenizer


def _gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=GPT2_D, n_head=4, vocab_size=vocab, n_positions=128)
    return GPT2LMHeadModel(config).eval()


def _llama_like(config_class, model_class, vocab: int):
    torch.manual_seed(0)
    config = config_class(
        num_hidden_layers=3,
        hidden_size=LLAMA_D,
        intermediate_size=2 * LLAMA_D,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=LLAMA_D // 4,
        vocab_size=vocab,
    )
    return model_class(config).eval()


@pytest.fixture(scope="session")
def _built(_bpe_tokenizer) -> dict:
    """Each model built once (building is the slow part); every test gets its own copy."""
    vocab = len(_bpe_tokenizer)
    return {
        "gpt2": _gpt2(vocab),
        "llama": _llama_like(transformers.LlamaConfig, LlamaForCausalLM, vocab),
        "gemma": _llama_like(transformers.GemmaConfig, GemmaForCausalLM, vocab),
        "mistral": _llama_like(transformers.MistralConfig, MistralForCausalLM, vocab),
    }


@pytest.fixture
def model(_built) -> GPT2LMHeadModel:
    return copy.deepcopy(_built["gpt2"])


@pytest.fixture
def empty_llama_model(_built) -> LlamaForCausalLM:
    return copy.deepcopy(_built["llama"])


@pytest.fixture
def empty_gemma_model(_built) -> GemmaForCausalLM:
    return copy.deepcopy(_built["gemma"])


@pytest.fixture
def empty_mistral_model(_built) -> MistralForCausalLM:
    return copy.deepcopy(_built["mistral"])


class LlamaWrapper:
    """CAA's LlamaWrapper (nrimsky/CAA), the two operations the seed's tests use, with forward hooks."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.added: dict[int, torch.Tensor] = {}
        self.last: dict[int, torch.Tensor] = {}
        for index, block in enumerate(model.model.layers):
            block.register_forward_hook(self._hook(index))

    def _hook(self, index: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if index in self.added:
                hidden = hidden + self.added[index]
            self.last[index] = hidden
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def set_add_activations(self, layer: int, activations: torch.Tensor) -> None:
        self.added[layer] = activations

    def reset_all(self) -> None:
        self.added.clear()
        self.last.clear()

    def get_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(tokens).logits

    def get_last_activations(self, layer: int) -> torch.Tensor:
        return self.last[layer]


# ---- ported from steering-vectors tests/test_steering_vector.py ----


@torch.no_grad()
def test_SteeringVector_patch_activations(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    inputs = tokenizer("Hello, world", return_tensors="pt")
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    patch = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch},
        layer_type="decoder_block",
    )
    steering_vector.patch_activations(model)
    patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # The first hidden state is the input embeddings, which are not patched
    assert torch.equal(original_hidden_states[0], patched_hidden_states[0])
    # next is the first decoder block, which is not patched
    assert torch.equal(original_hidden_states[1], patched_hidden_states[1])
    # next is the layer 1, where the patch occurs
    assert not torch.equal(original_hidden_states[2], patched_hidden_states[2])

    expected_hidden_state = original_hidden_states[2] + patch
    assert torch.equal(expected_hidden_state, patched_hidden_states[2])


@torch.no_grad()
def test_SteeringVector_apply(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    inputs = tokenizer("Hello, world", return_tensors="pt")
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    patch = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch},
        layer_type="decoder_block",
    )
    with steering_vector.apply(model):
        patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # The first hidden state is the input embeddings, which are not patched
    assert torch.equal(original_hidden_states[0], patched_hidden_states[0])
    # next is the first decoder block, which is not patched
    assert torch.equal(original_hidden_states[1], patched_hidden_states[1])
    # next is the layer 1, where the patch occurs
    assert not torch.equal(original_hidden_states[2], patched_hidden_states[2])

    expected_hidden_state = original_hidden_states[2] + patch
    assert torch.equal(expected_hidden_state, patched_hidden_states[2])


@torch.no_grad()
def test_SteeringVector_apply_gemma(
    empty_gemma_model: GemmaForCausalLM,
    tokenizer: PreTrainedTokenizer,
) -> None:
    model = empty_gemma_model
    inputs = tokenizer("Hello, world", return_tensors="pt")
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    patch = torch.randn(LLAMA_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch},
        layer_type="decoder_block",
    )
    with steering_vector.apply(model):
        patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # The first hidden state is the input embeddings, which are not patched
    assert torch.equal(original_hidden_states[0], patched_hidden_states[0])
    # next is the first decoder block, which is not patched
    assert torch.equal(original_hidden_states[1], patched_hidden_states[1])
    # next is the layer 1, where the patch occurs
    assert not torch.equal(original_hidden_states[2], patched_hidden_states[2])

    expected_hidden_state = original_hidden_states[2] + patch
    assert torch.equal(expected_hidden_state, patched_hidden_states[2])


@torch.no_grad()
def test_SteeringVector_apply_mistral(
    empty_mistral_model: MistralForCausalLM,
    tokenizer: PreTrainedTokenizer,
) -> None:
    model = empty_mistral_model
    inputs = tokenizer("Hello, world", return_tensors="pt")
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    patch = torch.randn(LLAMA_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch},
        layer_type="decoder_block",
    )
    with steering_vector.apply(model):
        patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # The first hidden state is the input embeddings, which are not patched
    assert torch.equal(original_hidden_states[0], patched_hidden_states[0])
    # next is the first decoder block, which is not patched
    assert torch.equal(original_hidden_states[1], patched_hidden_states[1])
    # next is the layer 1, where the patch occurs
    assert not torch.equal(original_hidden_states[2], patched_hidden_states[2])

    expected_hidden_state = original_hidden_states[2] + patch
    assert torch.equal(expected_hidden_state, patched_hidden_states[2])


@torch.no_grad()
def test_SteeringVector_apply_matches_original_caa(
    empty_llama_model: LlamaForCausalLM, llama_tokenizer: PreTrainedTokenizer
) -> None:
    model = empty_llama_model
    tokenizer = llama_tokenizer
    inputs = tokenizer("Hello, world", return_tensors="pt")
    patch1 = torch.randn(LLAMA_D)
    patch2 = torch.randn(LLAMA_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch1, 2: patch2},
        layer_type="decoder_block",
    )
    original_logits = model(**inputs, output_hidden_states=True).logits
    with steering_vector.apply(model):
        sv_logits = model(**inputs, output_hidden_states=True).logits

    caa_model = LlamaWrapper(model, tokenizer)
    caa_model.set_add_activations(1, patch1)
    caa_model.set_add_activations(2, patch2)

    caa_logits = caa_model.get_logits(inputs["input_ids"])
    assert not torch.allclose(original_logits, sv_logits)
    assert torch.allclose(sv_logits, caa_logits)


@torch.no_grad()
def test_SteeringVector_patch_activations_with_min_token_index(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    inputs = tokenizer(
        "What is cheesier than cheese? Nothing is cheesier than cheese",
        return_tensors="pt",
    )
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    patch = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch},
        layer_type="decoder_block",
    )
    steering_vector.patch_activations(model, min_token_index=5)
    patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # The first 5 tokens should not be patched, due to min_token_index
    assert torch.equal(original_hidden_states[2][0, :5], patched_hidden_states[2][0, :5])
    assert not torch.equal(original_hidden_states[2][0, 5:], patched_hidden_states[2][0, 5:])

    expected_hidden_state = original_hidden_states[2][0, 5:] + patch
    assert torch.equal(expected_hidden_state, patched_hidden_states[2][0, 5:])


@pytest.mark.parametrize(
    "target_token_indices, non_target_token_indices, verification_token_indices",
    [
        ([2, 4, 7], [i for i in range(13) if i not in [2, 4, 7]], [2, 4, 7]),
        (
            torch.tensor([1 if i in [2, 4, 7] else 0 for i in range(13)]),
            [i for i in range(13) if i not in [2, 4, 7]],
            [2, 4, 7],
        ),
        (
            slice(1, 13, 2),
            [i for i in range(13) if i not in list(range(1, 13, 2))],
            list(range(1, 13, 2)),
        ),
    ],
)
@torch.no_grad()
def test_SteeringVector_patch_activations_with_token_indices(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
    target_token_indices: list[int] | torch.Tensor | slice,
    non_target_token_indices: list[int],
    verification_token_indices: list[int],
) -> None:
    """verify that patch_activations works both when target indices is a list of indices or a mask
    target_token_indices: a list, slice, or tensor that is passed to patch_activations to select indices to patch
    non_target_token_indices: a list of token indices that should not be patched, used to test that they haven't changed after patching
    verification_token_indices: a list of token indices that should be patched, used to test that they have changed after patching. We can't use target_token_indices for this as it might be a mask.
    """
    inputs = tokenizer(
        "What is cheesier than cheese? Nothing is cheesier than cheese",
        return_tensors="pt",
    )
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    patch = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch},
        layer_type="decoder_block",
    )
    steering_vector.patch_activations(model, token_indices=target_token_indices)
    patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # only the target tokens (with indices 2, 4, and 7) should be patched
    assert torch.equal(
        original_hidden_states[2][0, non_target_token_indices],
        patched_hidden_states[2][0, non_target_token_indices],
    )
    assert not torch.equal(
        original_hidden_states[2][0, verification_token_indices],
        patched_hidden_states[2][0, verification_token_indices],
    )

    expected_hidden_state = original_hidden_states[2][0, verification_token_indices] + patch
    assert torch.equal(expected_hidden_state, patched_hidden_states[2][0, verification_token_indices])


@torch.no_grad()
def test_SteeringVector_handle_reverts_model_changes(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    inputs = tokenizer("Hello, world", return_tensors="pt")
    original_logits = model(**inputs, output_hidden_states=False).logits
    steering_vector = SteeringVector(
        layer_activations={
            1: torch.randn(GPT2_D),
            -1: torch.randn(GPT2_D),
        },
        layer_type="decoder_block",
    )
    handle = steering_vector.patch_activations(model)
    patched_logits = model(**inputs, output_hidden_states=False).logits
    handle.remove()
    unpatched_logits = model(**inputs, output_hidden_states=False).logits

    assert not torch.equal(original_logits, patched_logits)
    assert torch.equal(original_logits, unpatched_logits)


def test_SteeringVector_to_dtype() -> None:
    vec = SteeringVector(
        layer_activations={
            1: torch.randn(GPT2_D),
            -1: torch.randn(GPT2_D),
        },
        layer_type="decoder_block",
    )
    vec2 = vec.to(torch.float16)
    assert vec2.layer_activations[1].dtype == torch.float16
    assert vec2.layer_activations[-1].dtype == torch.float16
    assert vec2.layer_type == vec.layer_type
    assert vec.layer_activations[1].dtype == torch.float32
    assert vec.layer_activations[-1].dtype == torch.float32


@torch.no_grad()
def test_SteeringVector_mask_batched_activations(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    model.config.pad_token_id = tokenizer.pad_token_id
    model.resize_token_embeddings(len(tokenizer))
    prompts = [
        "Hello world!",
        "This is a prompt.",
        "This is also a prompt.",
        "This is the last pompt.",
    ]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    patch = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: patch},
        layer_type="decoder_block",
    )

    # mask the last token in each prompt of the batch
    last_token_idxs = [
        2,
        4,
        5,
        6,
    ]  # the seed's [2, 4, 5, 7] with GPT-2's tokenizer: SmolLM2's splits "pompt" in two, not three
    token_mask = torch.zeros_like(inputs["input_ids"])
    token_mask[range(4), last_token_idxs] = 1

    steering_vector.patch_activations(model, token_indices=token_mask)
    patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # The first hidden state is the input embeddings, which are not patched
    assert torch.equal(original_hidden_states[0], patched_hidden_states[0])
    # next is the first decoder block, which is not patched
    assert torch.equal(original_hidden_states[1], patched_hidden_states[1])

    # At layer 1, only the activations of the last token in each prompt should be patched

    # Create boolean mask for all tokens except the last token in each prompt
    non_last_token_mask = torch.ones_like(token_mask).bool()
    non_last_token_mask[range(4), last_token_idxs] = False

    # Verify non-last token activations are unchanged
    assert torch.equal(
        original_hidden_states[2][non_last_token_mask],
        patched_hidden_states[2][non_last_token_mask],
    )

    # Verify the last token activations are patched correctly
    expected_hidden_states = original_hidden_states[2][range(4), last_token_idxs] + patch
    assert torch.equal(expected_hidden_states, patched_hidden_states[2][range(4), last_token_idxs])


# ---- ported from steering-vectors tests/test_train_steering_vector.py ----


def test_train_steering_vector_reads_from_final_token_by_default(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizer
) -> None:
    pos_train_sample = "[INST] 2 + 2 = ? A: 2, B: 4 [/INST] The answer is B"
    neg_train_sample = "[INST] 2 + 2 = ? A: 2, B: 4 [/INST] The answer is A"
    training_data = [(pos_train_sample, neg_train_sample)]

    pos_inputs = tokenizer(pos_train_sample, return_tensors="pt")
    neg_inputs = tokenizer(neg_train_sample, return_tensors="pt")
    pos_train_outputs = model(**pos_inputs, output_hidden_states=True)
    neg_train_outputs = model(**neg_inputs, output_hidden_states=True)

    steering_vector = train_steering_vector(model, tokenizer, training_data, layers=[2, 3, 4])

    assert sorted(list(steering_vector.layer_activations.keys())) == [2, 3, 4]
    for layer, vector in steering_vector.layer_activations.items():
        pos_vector = pos_train_outputs.hidden_states[layer + 1][0, -1, :]
        neg_vector = neg_train_outputs.hidden_states[layer + 1][0, -1, :]
        assert torch.allclose(vector, pos_vector - neg_vector)


def test_train_steering_vector_works_with_multiple_token_indices_by_passing_indices(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizer
) -> None:
    def get_x_index(prompt: str) -> int:
        tokenization = tokenizer.convert_ids_to_tokens(tokenizer.encode(prompt))
        return tokenization.index("ĠX")

    training_data: list[SteeringVectorTrainingSample] = [
        SteeringVectorTrainingSample(
            "This is a short positive example. X <- probe here.",
            "This is a short negative example with different token length. X <- probe here.",
            get_x_index("This is a short positive example. X <- probe here."),
            get_x_index("This is a short negative example with different token length. X <- probe here."),
        ),
        SteeringVectorTrainingSample(
            "Dummy text. This is a much longer positive example. X <- probe here. More dummy text.",
            "Dummy text. This is a much longer negative example with different token length. X <- probe here. More dummy text.",
            get_x_index("Dummy text. This is a much longer positive example. X <- probe here. More dummy text."),
            get_x_index(
                "Dummy text. This is a much longer negative example with different token length. X <- probe here. More dummy text."
            ),
        ),
    ]
    pos_examples = [p.positive_str for p in training_data]
    neg_examples = [p.negative_str for p in training_data]

    x_indices = [p.read_positive_token_index for p in training_data] + [
        p.read_negative_token_index for p in training_data
    ]
    pos_acts = []
    neg_acts = []

    for pos_example in pos_examples:
        pos_inputs = tokenizer(pos_example, return_tensors="pt")
        pos_outputs = model(**pos_inputs, output_hidden_states=True)
        pos_acts.append(pos_outputs.hidden_states)

    for neg_example in neg_examples:
        neg_inputs = tokenizer(neg_example, return_tensors="pt")
        neg_outputs = model(**neg_inputs, output_hidden_states=True)
        neg_acts.append(neg_outputs.hidden_states)

    steering_vector = train_steering_vector(model, tokenizer, training_data, layers=[2, 3, 4])

    for layer, vector in steering_vector.layer_activations.items():
        diffs = []
        for pos_act, neg_act, pos_token, neg_token in zip(pos_acts, neg_acts, x_indices[:2], x_indices[2:]):
            pos_act = pos_act[layer + 1][0, pos_token, :]
            neg_act = neg_act[layer + 1][0, neg_token, :]
            diff = pos_act - neg_act
            diffs.append(diff)
        mean_diff = torch.stack(diffs).mean(dim=0)
        assert torch.allclose(vector, mean_diff)


def test_train_steering_vector_works_with_multiple_token_indices_by_passing_callable(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizer
) -> None:
    def get_x_index(prompt: str) -> int:
        tokenization = tokenizer.convert_ids_to_tokens(tokenizer.encode(prompt))
        return tokenization.index("ĠX")

    training_data = [
        (
            "This is a short positive example. X <- probe here.",
            "This is a short negative example with different token length. X <- probe here.",
        ),
        (
            "Dummy text. This is a much longer positive example. X <- probe here. More dummy text.",
            "Dummy text. This is a much longer negative example with different token length. X <- probe here. More dummy text.",
        ),
    ]
    pos_examples = [p[0] for p in training_data]
    neg_examples = [p[1] for p in training_data]

    x_indices = [get_x_index(p[0]) for p in training_data] + [get_x_index(p[1]) for p in training_data]
    pos_acts = []
    neg_acts = []

    for pos_example in pos_examples:
        pos_inputs = tokenizer(pos_example, return_tensors="pt")
        pos_outputs = model(**pos_inputs, output_hidden_states=True)
        pos_acts.append(pos_outputs.hidden_states)

    for neg_example in neg_examples:
        neg_inputs = tokenizer(neg_example, return_tensors="pt")
        neg_outputs = model(**neg_inputs, output_hidden_states=True)
        neg_acts.append(neg_outputs.hidden_states)

    steering_vector = train_steering_vector(
        model, tokenizer, training_data, layers=[2, 3, 4], read_token_index=get_x_index
    )

    for layer, vector in steering_vector.layer_activations.items():
        diffs = []
        for pos_act, neg_act, pos_token, neg_token in zip(pos_acts, neg_acts, x_indices[:2], x_indices[2:]):
            pos_act = pos_act[layer + 1][0, pos_token, :]
            neg_act = neg_act[layer + 1][0, neg_token, :]
            diff = pos_act - neg_act
            diffs.append(diff)
        mean_diff = torch.stack(diffs).mean(dim=0)
        assert torch.allclose(vector, mean_diff)


def test_train_steering_vector_custom_aggregator(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizer) -> None:
    pos_train_sample = "[INST] 2 + 2 = ? A: 2, B: 4 [/INST] The answer is B"
    neg_train_sample = "[INST] 2 + 2 = ? A: 2, B: 4 [/INST] The answer is A"
    training_data = [(pos_train_sample, neg_train_sample)]

    pos_inputs = tokenizer(pos_train_sample, return_tensors="pt")
    neg_inputs = tokenizer(neg_train_sample, return_tensors="pt")
    pos_train_outputs = model(**pos_inputs, output_hidden_states=True)
    neg_train_outputs = model(**neg_inputs, output_hidden_states=True)

    steering_vector = train_steering_vector(
        model,
        tokenizer,
        training_data,
        layers=[2, 3, 4],
        # custom aggregator adds 1 to the mean difference between the positive and negative
        aggregator=lambda pos, neg: (pos - neg).mean(dim=0) + 1,
    )

    assert sorted(list(steering_vector.layer_activations.keys())) == [2, 3, 4]
    for layer, vector in steering_vector.layer_activations.items():
        pos_vector = pos_train_outputs.hidden_states[layer + 1][0, -1, :]
        neg_vector = neg_train_outputs.hidden_states[layer + 1][0, -1, :]

        assert torch.allclose(vector, (pos_vector - neg_vector) + 1)


def test_train_steering_vector_batching_gives_identical_result_to_unbatched(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizer
) -> None:
    training_data = [
        (
            "This is a short positive example.",
            "This is a short negative example with different token length.",
        ),
        (
            "Dummy text. This is a much longer positive example.",
            "Dummy text. This is a much longer negative example with different token length.",
        ),
    ]

    steering_vector_batch_1 = train_steering_vector(model, tokenizer, training_data, layers=[2, 3, 4], batch_size=1)
    steering_vector_batch_2 = train_steering_vector(model, tokenizer, training_data, layers=[2, 3, 4], batch_size=2)
    for layer in steering_vector_batch_1.layer_activations.keys():
        assert torch.allclose(
            steering_vector_batch_1.layer_activations[layer],
            steering_vector_batch_2.layer_activations[layer],
            atol=1e-5,
        )


def test_train_steering_vector_matches_original_caa(
    empty_llama_model: LlamaForCausalLM, llama_tokenizer: PreTrainedTokenizer
) -> None:
    model = empty_llama_model
    tokenizer = llama_tokenizer

    layers = [0, 1, 2]

    training_data = [
        (
            "[INST] 2 + 2 = ? A: 2, B: 4 [/INST] The answer is B",
            "[INST] 2 + 2 = ? A: 2, B: 4 [/INST] The answer is A",
        ),
        (
            "[INST] 3 + 2 = ? A: 5, B: 7 [/INST] The answer is A",
            "[INST] 3 + 2 = ? A: 5, B: 7 [/INST] The answer is B",
        ),
    ]

    steering_vector = train_steering_vector(model, tokenizer, training_data, layers=layers, read_token_index=-2)

    # hackily translated from generate_vectors.py script
    tokenized_data = [(tokenizer.encode(pos), tokenizer.encode(neg)) for pos, neg in training_data]
    pos_activations: dict[int, list[torch.Tensor]] = dict([(layer, []) for layer in layers])
    neg_activations: dict[int, list[torch.Tensor]] = dict([(layer, []) for layer in layers])
    wrapped_model = LlamaWrapper(model, tokenizer)

    for p_tokens, n_tokens in tokenized_data:
        p_tokens = torch.tensor(p_tokens).unsqueeze(0).to(model.device)
        n_tokens = torch.tensor(n_tokens).unsqueeze(0).to(model.device)
        wrapped_model.reset_all()
        wrapped_model.get_logits(p_tokens)
        for layer in layers:
            p_activations = wrapped_model.get_last_activations(layer)
            p_activations = p_activations[0, -2, :].detach().cpu()
            pos_activations[layer].append(p_activations)
        wrapped_model.reset_all()
        wrapped_model.get_logits(n_tokens)
        for layer in layers:
            n_activations = wrapped_model.get_last_activations(layer)
            n_activations = n_activations[0, -2, :].detach().cpu()
            neg_activations[layer].append(n_activations)

    caa_vecs_by_layer = {}
    for layer in layers:
        all_pos_layer = torch.stack(pos_activations[layer])
        all_neg_layer = torch.stack(neg_activations[layer])
        caa_vecs_by_layer[layer] = (all_pos_layer - all_neg_layer).mean(dim=0)

    for layer in layers:
        assert torch.allclose(steering_vector.layer_activations[layer], caa_vecs_by_layer[layer])


@pytest.mark.parametrize(
    "custom_idx, default_idx, prompt, expected_output",
    [
        (None, 0, "prompt1", 0),
        (1, 0, "prompt2", 1),
        (None, lambda x: len(x), "prompt3", 7),
        (2, lambda x: len(x), "prompt4", 2),
    ],
)
def test_get_token_index(
    custom_idx: int | None,
    default_idx: int | Callable[[str], int],
    prompt: str,
    expected_output: int,
) -> None:
    actual_output = _get_token_index(custom_idx, default_idx, prompt)
    assert actual_output == expected_output


# ---- ported from steering-vectors tests/test_record_activations.py ----


def test_record_activations_matches_decoder_hidden_states(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizer
) -> None:
    with record_activations(model) as recorded_activations:
        inputs = tokenizer("Hello world", return_tensors="pt")
        hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    # the first hidden state is the input embeddings, which we don't record
    # the last hidden state (at least for neox) has the final layer norm applied, so skip that
    assert len(recorded_activations) == len(hidden_states) - 1
    for recorded_activation, hidden_state in zip(list(recorded_activations.values())[:-1], hidden_states[1:-1]):
        assert torch.equal(recorded_activation[0], hidden_state)


def test_record_activations_positive_vs_negative_indices(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizer
) -> None:
    positive_layer_nums = [11, 9]  # positive layer indices
    negative_layer_nums = [-1, -3]  # corresponding negative layer indices

    with record_activations(model, layer_nums=positive_layer_nums) as recorded_activations_positive:
        inputs = tokenizer("Hello world", return_tensors="pt")
        model(**inputs)

    with record_activations(model, layer_nums=negative_layer_nums) as recorded_activations_negative:
        inputs = tokenizer("Hello world", return_tensors="pt")
        model(**inputs)

    assert list(recorded_activations_positive.keys()) == list(recorded_activations_negative.keys())

    for key in recorded_activations_positive.keys():
        assert torch.equal(recorded_activations_positive[key][0], recorded_activations_negative[key][0])


# ---- ported from steering-vectors tests/test_steering_operators.py ----


def test_ablation_operator_removes_the_projection_of_the_steering_vec() -> None:
    act = torch.randn(1, 3, 30)
    steering_vec = torch.randn(30)
    operator = ablation_operator()
    delta = operator(act, steering_vec.reshape(1, 1, -1))
    steered_act = act + delta

    assert steered_act @ steering_vec == pytest.approx(0, abs=1e-4)


def test_addition_operator_acts_as_identity() -> None:
    act = torch.randn(1, 3, 30)
    steering_vec = torch.randn(30)
    operator = addition_operator()
    delta = operator(act, steering_vec.reshape(1, 1, -1))
    assert torch.allclose(delta, steering_vec)


def test_ablation_then_addition_operator_applies_both_ablation_and_addition() -> None:
    act = torch.randn(1, 3, 30)
    steering_vec = 5 * torch.randn(30)
    operator = ablation_then_addition_operator()
    delta = operator(act, steering_vec.reshape(1, 1, -1))
    steered_act = act + delta

    steering_vec_dir = steering_vec / torch.norm(steering_vec)

    # the component on the resulting activation on the steering direction should match the steering vector
    assert (steered_act @ steering_vec_dir).sum() == pytest.approx(
        float(3 * steering_vec.norm()),
        abs=1e-4,  # float(): this pytest's approx no longer takes a 0-d tensor
    )


@torch.no_grad()
def test_ablation_operator_works_with_patch_activations(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    inputs = tokenizer("Hello, world", return_tensors="pt")
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    vec = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: vec},
        layer_type="decoder_block",
    )
    steering_vector.patch_activations(model, operator=ablation_operator())
    patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # layer 1 is where the patch occurs
    assert not torch.equal(original_hidden_states[2], patched_hidden_states[2])
    assert original_hidden_states[2].shape == patched_hidden_states[2].shape
    # the projection of the steering vector on the hidden state should be zero
    assert (patched_hidden_states[2] @ vec).sum() == pytest.approx(0, abs=1e-3)


@torch.no_grad()
def test_ablation_then_addition_operator_works_with_patch_activations(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    inputs = tokenizer("Hello, world", return_tensors="pt")
    original_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    vec = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: vec},
        layer_type="decoder_block",
    )
    steering_vector.patch_activations(model, operator=ablation_then_addition_operator())
    patched_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # layer 1 is where the patch occurs
    assert not torch.equal(original_hidden_states[2], patched_hidden_states[2])
    assert original_hidden_states[2].shape == patched_hidden_states[2].shape
    # the projection of the steering vector on the hidden state be 3 times the norm of the steering vector squared
    # since the ablation operator first removes the projection of the steering vector before adding the steering vector
    # the seed's "3" is GPT-2's token count for "Hello, world"; this tokenizer's count stands in for it
    # (transformers 4 reads SmolLM2's tokenizer with one more token)
    n_tokens = inputs["input_ids"].shape[1]
    assert (patched_hidden_states[2] @ vec).sum() == pytest.approx(
        float(n_tokens * vec.norm() ** 2),
        abs=1e-3,  # float(): this pytest's approx no longer takes a 0-d tensor
    )


@torch.no_grad()
def test_addition_operator_matches_default_behavior_with_steering_vector_apply(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizer,
) -> None:
    inputs = tokenizer("Hello, world", return_tensors="pt")
    vec = torch.randn(GPT2_D)
    steering_vector = SteeringVector(
        layer_activations={1: vec},
        layer_type="decoder_block",
    )
    with steering_vector.apply(model, operator=ablation_then_addition_operator()):
        default_hidden_states = model(**inputs, output_hidden_states=True).hidden_states
    with steering_vector.apply(model, operator=ablation_then_addition_operator()):
        add_op_hidden_states = model(**inputs, output_hidden_states=True).hidden_states

    # layer 1 is where the patch occurs
    assert torch.equal(default_hidden_states[2], add_op_hidden_states[2])


# ---- ported from steering-vectors tests/test_aggregators.py ----


def test_logistic_aggregator() -> None:
    delta = torch.randn(100)
    pos = torch.randn(64, 100)
    noise = torch.randn(64, 100) * 0.2
    neg = pos - delta + noise

    vec = logistic_aggregator()(pos, neg)
    assert vec.shape == (100,)
    assert vec.norm() == pytest.approx(1)
    assert cosine_similarity(vec, delta, dim=0) > 0.99


def test_logistic_aggregator_with_custom_sklearn_params() -> None:
    delta = torch.randn(100)
    pos = torch.randn(64, 100)
    noise = torch.randn(64, 100) * 0.2
    neg = pos - delta + noise
    aggregator = logistic_aggregator(sklearn_kwargs={"penalty": None, "max_iter": 50})

    vec = aggregator(pos, neg)
    assert vec.shape == (100,)
    assert vec.norm() == pytest.approx(1)
    assert cosine_similarity(vec, delta, dim=0) > 0.99


def test_pca_aggregator_with_single_difference() -> None:
    delta = torch.randn(100)
    pos = torch.randn(100)
    neg = pos - delta

    vec = pca_aggregator()(pos.unsqueeze(0), neg.unsqueeze(0))
    assert vec.shape == (100,)
    assert vec.norm() == pytest.approx(1)
    assert cosine_similarity(vec, delta, dim=0) == pytest.approx(1)


def test_pca_aggregator_with_synth_data() -> None:
    delta = torch.randn(100)
    pos = torch.randn(50, 100)
    noise = torch.randn(50, 100) * 0.2
    neg = pos - delta.unsqueeze(0) + noise

    vec = pca_aggregator()(pos, neg)
    assert vec.shape == (100,)
    assert vec.norm() == pytest.approx(1)
    assert cosine_similarity(vec, delta, dim=0) > 0.99


def test_pca_aggregator_and_mean_aggregator_give_similar_results() -> None:
    delta = torch.randn(100)
    pos = torch.randn(50, 100)
    noise = torch.randn(50, 100)
    neg = pos - delta.unsqueeze(0) + noise

    pca_vec = pca_aggregator()(pos, neg)
    mean_vec = mean_aggregator()(pos, neg)
    assert pca_vec.shape == (100,)
    assert mean_vec.shape == (100,)
    assert cosine_similarity(mean_vec, pca_vec, dim=0) > 0.99


# ---- ported from steering-vectors tests/test_layer_matching.py ----

LlamaLayerConfig: ModelLayerConfig = {
    "decoder_block": "model.layers.{num}",
    "self_attn": "model.layers.{num}.self_attn",
    "mlp": "model.layers.{num}.mlp",
    "input_layernorm": "model.layers.{num}.input_layernorm",
    "post_attention_layernorm": "model.layers.{num}.post_attention_layernorm",
}

Gpt2LayerConfig: ModelLayerConfig = {
    "decoder_block": "transformer.h.{num}",
    "self_attn": "transformer.h.{num}.attn",
    "mlp": "transformer.h.{num}.mlp",
    "input_layernorm": "transformer.h.{num}.ln_1",
    "post_attention_layernorm": "transformer.h.{num}.ln_2",
}


def test_guess_block_matcher_from_layers() -> None:
    layers = [
        "x.e",
        "x.y.0",
        "x.y.0.attn",
        "x.y.1",
        "x.y.1.attn",
        "x.y.2",
        "x.y.2.attn",
        "x.lm_head",
    ]
    assert _guess_block_matcher_from_layers(layers) == "x.y.{num}"


def test_guess_matchers_for_llama(
    empty_llama_model: LlamaForCausalLM,
) -> None:
    assert guess_decoder_block_matcher(empty_llama_model) == "model.layers.{num}"
    assert guess_self_attn_matcher(empty_llama_model) == "model.layers.{num}.self_attn"
    assert guess_mlp_matcher(empty_llama_model) == "model.layers.{num}.mlp"
    assert guess_input_layernorm_matcher(empty_llama_model) == "model.layers.{num}.input_layernorm"
    assert guess_post_attention_layernorm_matcher(empty_llama_model) == "model.layers.{num}.post_attention_layernorm"


def test_guess_matchers_for_gpt2(model: GPT2LMHeadModel) -> None:
    assert guess_decoder_block_matcher(model) == "transformer.h.{num}"
    assert guess_self_attn_matcher(model) == "transformer.h.{num}.attn"
    assert guess_mlp_matcher(model) == "transformer.h.{num}.mlp"
    assert guess_input_layernorm_matcher(model) == "transformer.h.{num}.ln_1"
    assert guess_post_attention_layernorm_matcher(model) == "transformer.h.{num}.ln_2"


def test_guess_matchers_for_gemma(empty_gemma_model: GemmaForCausalLM) -> None:
    assert guess_decoder_block_matcher(empty_gemma_model) == "model.layers.{num}"
    assert guess_self_attn_matcher(empty_gemma_model) == "model.layers.{num}.self_attn"
    assert guess_mlp_matcher(empty_gemma_model) == "model.layers.{num}.mlp"
    assert guess_input_layernorm_matcher(empty_gemma_model) == "model.layers.{num}.input_layernorm"
    assert guess_post_attention_layernorm_matcher(empty_gemma_model) == "model.layers.{num}.post_attention_layernorm"


def test_guess_matchers_for_mistral(empty_mistral_model: MistralForCausalLM) -> None:
    assert guess_decoder_block_matcher(empty_mistral_model) == "model.layers.{num}"
    assert guess_self_attn_matcher(empty_mistral_model) == "model.layers.{num}.self_attn"
    assert guess_mlp_matcher(empty_mistral_model) == "model.layers.{num}.mlp"
    assert guess_input_layernorm_matcher(empty_mistral_model) == "model.layers.{num}.input_layernorm"
    assert guess_post_attention_layernorm_matcher(empty_mistral_model) == "model.layers.{num}.post_attention_layernorm"


def test_enhance_model_config_matchers_guesses_fields_if_not_provided_for_gpt2(
    model: GPT2LMHeadModel,
) -> None:
    enhanced_config = enhance_model_config_matchers(model, {})
    # it should correctly guess every field, resulting in the correct Gpt2LayerConfig
    assert enhanced_config == Gpt2LayerConfig


def test_enhance_model_config_matchers_guesses_fields_if_not_provided_for_llama(
    empty_llama_model: LlamaForCausalLM,
) -> None:
    enhanced_config = enhance_model_config_matchers(empty_llama_model, {})
    # it should correctly guess every field, resulting in the correct LlamaLayerConfig
    assert enhanced_config == LlamaLayerConfig


def test_enhance_model_config_matchers_leaves_provided_fields_as_is(
    model: GPT2LMHeadModel,
) -> None:
    enhanced_config = enhance_model_config_matchers(model, {"decoder_block": "my.{num}.matcher"})
    assert enhanced_config["decoder_block"] == "my.{num}.matcher"
