"""Training steering vectors from contrastive pairs, reading activations from the steerable layers.

Positive and negative texts share batches; each layer keeps only the read positions; the forward
stops after the deepest requested layer; ``mean`` aggregates as it streams, so memory does not grow
with the dataset.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from steerable.aggregators import AGGREGATORS, Aggregator
from steerable.vectors import SteeringVector

#: Where to read a text: a token index (negative from the end of the unpadded text), a ``slice``
#: of token indices (activations averaged over the span), or a callable on the text returning either.
ReadIndex = int | slice | Callable[[str], int | slice]


@dataclass(frozen=True)
class ContrastivePair:
    """A positive and a negative text; per-pair read indices override the ``read_token_index`` default."""

    positive: str
    negative: str
    read_positive_token_index: int | slice | None = None
    read_negative_token_index: int | slice | None = None


class _StopForward(Exception):
    """Raised by the deepest recorded layer: nothing after it is needed."""


def train_steering_vector(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[ContrastivePair | tuple[str, str]],
    layers: Iterable[int] | None = None,
    method: str | Aggregator = "mean",
    read_token_index: ReadIndex = -1,
    batch_size: int = 16,
    site: str = "block",
    show_progress: bool | None = None,
    description: str | None = None,
) -> SteeringVector:
    """Train a steering vector on ``pairs`` at ``layers`` (default: all) of a steerable ``model``.

    ``method``: ``"mean"`` (CAA: mean of positive minus negative), ``"pca_diff"``, ``"pca_center"``,
    ``"logistic"`` (see ``steerable.aggregators``), or a callable ``(pos [n, d], neg [n, d]) -> [d]``.
    Results do not depend on ``batch_size`` or the tokenizer's padding side.
    """
    from steerable.model import SteerableModel, resolve_layers, site_module

    if not isinstance(model, SteerableModel):
        raise TypeError("train_steering_vector needs a steerable model: use SteerableModel.wrap(model) first")
    state = model._steerable
    net: Any = model
    texts, reads = _texts_and_reads(pairs, read_token_index)
    aggregate = _aggregator(method)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    layer_list = list(layers) if layers is not None else list(range(len(state.layers)))
    if not layer_list:
        raise ValueError("layers is empty: give at least one layer index")
    resolved = resolve_layers(state, layer_list)
    tokenizer = _with_pad_token(tokenizer)
    pass_positions = "position_ids" in inspect.signature(net.forward).parameters

    streaming = method == "mean"
    n_pairs = len(texts) // 2
    # texts alternate positive, negative; batching them sorted by length wastes little on padding
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    chosen = [_resolve_read(text, read, length) for text, read, length in zip(texts, reads, lengths, strict=True)]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    sums: dict[int, Tensor] = {}  # mean: [2, d] running sums (positive, negative), float64
    stored: dict[int, Tensor] = {}  # other methods: [2, n_pairs, d], only the read positions
    deepest = max(index for _, index in resolved)
    progress = show_progress if show_progress is not None else len(batches) >= 4
    modules, taps = [], []
    gathered: dict[int, Tensor] = {}
    columns: dict[str, Tensor] = {}

    def make_tap(layer: int, index: int) -> Callable[[Tensor, Any], None]:
        def tap(hidden: Tensor, _runtime: Any) -> None:
            gathered[layer] = _read(hidden, columns["index"], columns["weight"])
            if index == deepest:
                raise _StopForward

        return tap

    try:
        for layer, index in resolved:
            module = site_module(state, index, site)
            tap = make_tap(layer, index)
            module._steerable_taps = [*module._steerable_taps, tap]
            modules.append(module)
            taps.append(tap)
        device = next(p for p in net.parameters() if p.device.type != "meta").device
        with torch.inference_mode():
            for batch in tqdm(batches, desc="Training steering vector", disable=not progress):
                batch_texts = [texts[i] for i in batch]
                encoded = tokenizer(batch_texts, return_tensors="pt", padding=True)
                mask = encoded["attention_mask"]
                index_tensor, weight = _read_columns([chosen[i] for i in batch], mask)
                columns["index"], columns["weight"] = index_tensor.to(device), weight.to(device)
                inputs = {"input_ids": encoded["input_ids"].to(device), "attention_mask": mask.to(device)}
                if pass_positions:  # absolute-position models (GPT-2) need them under left padding
                    inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0).to(device)
                try:
                    net(**inputs, use_cache=False)
                except _StopForward:
                    pass
                kinds = torch.tensor([i % 2 for i in batch])  # 0: positive, 1: negative
                pair_ids = torch.tensor([i // 2 for i in batch])
                for layer, _ in resolved:
                    read = gathered.pop(layer).float()
                    if streaming:
                        kinds_here = kinds.to(read.device)
                        batch_sum = torch.stack([read[kinds_here == k].double().sum(0) for k in (0, 1)])
                        sums[layer] = sums[layer] + batch_sum if layer in sums else batch_sum
                    else:
                        if layer not in stored:
                            stored[layer] = torch.zeros(2, n_pairs, read.shape[-1])
                        stored[layer][kinds, pair_ids] = read.cpu()
    finally:
        from steerable.recording import state_release

        for module, tap in zip(modules, taps, strict=True):
            module._steerable_taps = [t for t in module._steerable_taps if t is not tap]
            state_release(state, module)

    vectors: dict[int, Tensor] = {}
    for layer, _ in resolved:
        if streaming:
            vectors[layer] = ((sums[layer][0] - sums[layer][1]) / n_pairs).float()
        else:
            vectors[layer] = aggregate(stored[layer][0], stored[layer][1]).float()
    config = getattr(model, "config", None)
    return SteeringVector(
        vectors,
        site=site,
        model_type=getattr(config, "model_type", None),
        model_name=getattr(config, "name_or_path", None) or None,
        method=method if isinstance(method, str) else getattr(method, "__name__", "custom"),
        description=description,
    )


def _texts_and_reads(
    pairs: Sequence[ContrastivePair | tuple[str, str]], default: ReadIndex
) -> tuple[list[str], list[int | slice]]:
    """Interleave positives and negatives (so a batch holds both) and resolve each text's read index."""
    if len(pairs) == 0:
        raise ValueError("pairs is empty: give at least one (positive, negative) pair")
    texts: list[str] = []
    reads: list[int | slice] = []
    for number, pair in enumerate(pairs):
        if isinstance(pair, ContrastivePair):
            items = [(pair.positive, pair.read_positive_token_index), (pair.negative, pair.read_negative_token_index)]
        elif isinstance(pair, (tuple, list)) and len(pair) == 2:
            items = [(pair[0], None), (pair[1], None)]
        else:
            raise TypeError(f"pair {number} must be a ContrastivePair or a (positive, negative) tuple, got {pair!r}")
        for text, own in items:
            if not isinstance(text, str) or not text:
                raise ValueError(f"pair {number} has an empty or non-string text: {text!r}")
            chosen = own if own is not None else (default(text) if callable(default) else default)
            if isinstance(chosen, bool) or not isinstance(chosen, (int, slice)):
                raise TypeError(f"pair {number}: a read index must be an int or a slice, got {chosen!r}")
            texts.append(text)
            reads.append(chosen)
    return texts, reads


def _resolve_read(text: str, read: int | slice, length: int) -> list[int]:
    """The token indices (in the unpadded text) that ``read`` selects; an error if none or outside."""
    if isinstance(read, slice):
        chosen = list(range(length))[read]
        if not chosen:
            raise ValueError(f"the read span {read} selects no token of {text!r} ({length} tokens)")
        return chosen
    if not -length <= read < length:
        raise ValueError(f"read index {read} is outside {text!r}, which has {length} tokens")
    return [read % length]


def _read_columns(chosen: list[list[int]], mask: Tensor) -> tuple[Tensor, Float[Tensor, "batch span"]]:
    """Padded column indices to read for each row, with averaging weights (a span is averaged)."""
    lengths = mask.sum(-1).tolist()
    width = mask.shape[1]
    left_padded = bool((mask[:, 0] == 0).any())
    rows = [
        [(width - length if left_padded else 0) + c for c in cs] for cs, length in zip(chosen, lengths, strict=True)
    ]
    span = max(len(r) for r in rows)
    index = torch.tensor([r + [r[-1]] * (span - len(r)) for r in rows])
    weight = torch.tensor([[1.0 / len(r)] * len(r) + [0.0] * (span - len(r)) for r in rows])
    return index, weight


def _read(
    hidden: Float[Tensor, "batch seq d_model"], index: Tensor, weight: Float[Tensor, "batch span"]
) -> Float[Tensor, "batch d_model"]:
    picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    if index.shape[1] == 1:
        return picked[:, 0]
    return (picked.float() * weight[..., None]).sum(1).to(hidden.dtype)


def _aggregator(method: str | Aggregator) -> Aggregator:
    if callable(method):
        return method
    if method not in AGGREGATORS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(AGGREGATORS)} or a callable")
    return AGGREGATORS[method]


def _with_pad_token(tokenizer: Any) -> Any:
    """A tokenizer that can pad: the user's own if it can, else a copy with eos as pad (never mutated)."""
    if getattr(tokenizer, "pad_token", None) is not None:
        return tokenizer
    eos = getattr(tokenizer, "eos_token", None)
    if eos is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token: set tokenizer.pad_token")
    padded = copy.deepcopy(tokenizer)
    padded.pad_token = eos
    return padded
