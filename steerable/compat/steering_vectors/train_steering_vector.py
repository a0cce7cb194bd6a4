"""steering-vectors' training functions, on steerable's reader: the same reads (each text's token at
``read_token_index``, counted in the unpadded text), batched positives with negatives.

Where steerable differs from the seed (on purpose): absolute-position models (GPT-2) get position ids
under left padding, so a left-padded batch reads what each text alone reads (the seed shifts them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from steerable.compat.steering_vectors.aggregators import Aggregator, mean_aggregator
from steerable.compat.steering_vectors.layer_matching import LayerType, ModelLayerConfig, site_for
from steerable.compat.steering_vectors.steering_vector import SteeringVector, steerable_model
from steerable.train import extraction


@dataclass
class SteeringVectorTrainingSample:
    positive_str: str
    negative_str: str
    read_positive_token_index: int | None = None
    read_negative_token_index: int | None = None


def _pairs(samples: Sequence[Any]) -> list[Any]:
    return [(s[0], s[1]) if isinstance(s, tuple) else s for s in samples]


@torch.no_grad()
def extract_activations(
    model: nn.Module,
    tokenizer: Any,
    training_samples: Sequence[SteeringVectorTrainingSample | tuple[str, str]],
    layers: list[int] | None = None,
    layer_type: LayerType = "decoder_block",
    layer_config: ModelLayerConfig | None = None,
    move_to_cpu: bool = False,
    read_token_index: int | Callable[[str], int] = -1,
    show_progress: bool = False,
    batch_size: int = 1,
    tqdm_desc: str = "Extracting activations",
) -> tuple[dict[int, list[Tensor]], dict[int, list[Tensor]]]:
    """``(positive, negative)``: ``{layer: [tensor[batch, d] per batch of batch_size samples]}``, keyed by
    absolute layer number (as the seed's)."""
    steerable = steerable_model(model)
    site = site_for(steerable, layer_type, layer_config)
    n = len(steerable.steerable_layers)
    positive, negative = extraction.extract_activations(
        steerable,
        tokenizer,
        _pairs(training_samples),
        layers=layers,
        read_token_index=read_token_index,
        batch_size=max(batch_size, 16),  # results do not depend on it; only the lists' split does
        site=site,
        show_progress=show_progress,
    )
    device = next(p for p in steerable.parameters()).device

    def split(reads: dict[int, Tensor]) -> dict[int, list[Tensor]]:
        out: dict[int, list[Tensor]] = {}
        for layer in sorted(reads, key=lambda k: k % n):
            chunk = reads[layer] if move_to_cpu else reads[layer].to(device)
            out[layer % n] = list(chunk.split(max(1, batch_size)))
        return out

    return split(positive), split(negative)


def aggregate_activations(
    pos_acts_by_layer: dict[int, list[Tensor]],
    neg_acts_by_layer: dict[int, list[Tensor]],
    aggregator: Aggregator = mean_aggregator(),  # noqa: B008 (the seed's signature)
) -> dict[int, Tensor]:
    """``{layer: aggregator(positive, negative)}`` over the concatenated batches."""
    return {
        layer: aggregator(torch.concat(pos_acts_by_layer[layer]), torch.concat(neg_acts_by_layer[layer]))
        for layer in pos_acts_by_layer
    }


@torch.no_grad()
def train_steering_vector(
    model: nn.Module,
    tokenizer: Any,
    training_samples: Sequence[SteeringVectorTrainingSample | tuple[str, str]],
    layers: list[int] | None = None,
    layer_type: LayerType = "decoder_block",
    layer_config: ModelLayerConfig | None = None,
    move_to_cpu: bool = False,
    read_token_index: int | Callable[[str], int] = -1,
    show_progress: bool = False,
    aggregator: Aggregator = mean_aggregator(),  # noqa: B008 (the seed's signature)
    batch_size: int = 1,
    tqdm_desc: str = "Training steering vector",
) -> SteeringVector:
    """A steering vector: ``aggregator`` of the reads at ``layers`` (default: all)."""
    positive, negative = extract_activations(
        model,
        tokenizer,
        training_samples,
        layers,
        layer_type,
        layer_config,
        move_to_cpu,
        read_token_index,
        show_progress,
        batch_size,
        tqdm_desc,
    )
    steerable = steerable_model(model)
    config = getattr(steerable, "config", None)
    return SteeringVector(
        aggregate_activations(positive, negative, aggregator),
        layer_type,
        num_layers=len(steerable.steerable_layers),
        model_type=getattr(config, "model_type", None),
    )


def _get_token_index(custom_idx: int | None, default_idx: int | Callable[[str], int], prompt: str) -> int:
    """A sample's own read index, else the default (called on the prompt when it is a callable)."""
    if custom_idx is not None:
        return custom_idx
    return default_idx if isinstance(default_idx, int) else default_idx(prompt)
