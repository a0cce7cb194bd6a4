"""Tiny randomly initialised models, one per supported architecture, built from configs in code."""

from __future__ import annotations

from typing import Any

import torch
import transformers

VOCAB = 96
_LLAMA_LIKE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

_GPT_LIKE = dict(
    n_layer=3, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=128, bos_token_id=1, eos_token_id=2, pad_token_id=0
)

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", _GPT_LIKE),
    "llama": ("LlamaConfig", _LLAMA_LIKE),
    "mistral": ("MistralConfig", _LLAMA_LIKE),
    "gemma": ("GemmaConfig", dict(_LLAMA_LIKE, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(_LLAMA_LIKE, head_dim=8, sliding_window=4)),
    "gemma3_text": ("Gemma3TextConfig", dict(_LLAMA_LIKE, head_dim=8, sliding_window=4)),
    "gpt_neox": ("GPTNeoXConfig", dict(_LLAMA_LIKE, num_key_value_heads=None)),
    "qwen2": ("Qwen2Config", _LLAMA_LIKE),
    "qwen3": ("Qwen3Config", dict(_LLAMA_LIKE, head_dim=8)),
    "phi3": ("Phi3Config", _LLAMA_LIKE),
    "olmo2": ("Olmo2Config", _LLAMA_LIKE),
    "gptj": ("GPTJConfig", dict(_GPT_LIKE, rotary_dim=4)),
    "falcon": (
        "FalconConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            vocab_size=VOCAB,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    ),
}
ARCHS = list(CONFIGS)


def tiny_config(arch: str) -> transformers.PretrainedConfig:
    name, kwargs = CONFIGS[arch]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return getattr(transformers, name)(**kwargs)


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A fresh tiny model in eval mode. Weights are scaled up so greedy decoding has clear winners."""
    torch.manual_seed(seed)
    config = tiny_config(arch)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.15)
    return model.to(dtype).eval()


def tiny_tokenizer() -> Any:
    """A word-level tokenizer over made-up words ("w3" ... "w89") and the few symbols of A/B questions
    ("(", ")", "A", "B", "Answer", ":"), built offline; punctuation is split off."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    symbols = ["(", ")", "A", "B", "Answer", ":"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB - len(symbols))}}
    vocab.update({s: VOCAB - len(symbols) + k for k, s in enumerate(symbols)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )


def tiny_llama_config(layers: int = 4, hidden_size: int = 64, **overrides: Any) -> transformers.LlamaConfig:
    """A Llama config of a given depth and width (benchmarks: the overhead-dominated worst case, or a real
    model's shape with ``overrides``); heads 4 / 2, a 256-token vocabulary and 1,024 positions unless
    overridden."""
    kwargs: dict[str, Any] = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=1024,
        pad_token_id=0,
    )
    return transformers.LlamaConfig(**(kwargs | overrides))


def tiny_llama(layers: int = 4, hidden_size: int = 64, seed: int = 0, **overrides: Any) -> Any:
    """A random Llama from ``tiny_llama_config`` with transformers' own initialisation (seeded), in eval mode."""
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(tiny_llama_config(layers, hidden_size, **overrides)).eval()
