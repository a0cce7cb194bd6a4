"""steering-vectors' layer configs (``{"decoder_block": "model.layers.{num}", ...}``), read off steerable's
architecture table: a layer type names a steerable site, and its matcher is where that site lives."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Literal

from torch import nn

from steerable.architectures import get_submodule, resolve_architecture

LayerMatcher = str | Callable[[nn.Module, int], str]
LayerType = Literal["decoder_block", "self_attn", "mlp", "input_layernorm", "post_attention_layernorm"]
ModelLayerConfig = dict[LayerType, LayerMatcher]

#: steering-vectors' layer type -> steerable's site
LAYER_TYPE_SITES: dict[str, str] = {
    "decoder_block": "block",
    "self_attn": "attn",
    "mlp": "mlp",
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attn_norm",
}
_NUMBERED = re.compile(r"^([^\d]+)\.(\d+)(.*)$")
# what each layer type's module name contains, for models outside steerable's architecture table
_NAME_HINTS: dict[str, Callable[[str], bool]] = {
    "self_attn": lambda name: "attn" in name or "attention" in name,
    "mlp": lambda name: "mlp" in name,
    "input_layernorm": lambda name: "ln_1" in name or "input_layernorm" in name,
    "post_attention_layernorm": lambda name: "ln_2" in name or "post_attention_layernorm" in name,
}


def steerable_layer_config(model: nn.Module) -> dict[str, str]:
    """The matcher of every layer type steerable can steer on ``model``."""
    spec, layers = resolve_architecture(model)
    config = {"decoder_block": f"{spec.layers}.{{num}}"}
    for layer_type, site in LAYER_TYPE_SITES.items():
        path = spec.sites.get(site)
        if path is not None and get_submodule(layers[0], path) is not None:
            config[layer_type] = f"{spec.layers}.{{num}}.{path}"
    return config


def _guess_block_matcher_from_layers(layers: Iterable[str], filter: Callable[[str], bool] | None = None) -> str | None:  # noqa: A002
    """The most frequent ``prefix.{num}suffix`` pattern among module names (ties: the shorter)."""
    counts = Counter(
        guess
        for name in layers
        if _NUMBERED.match(name)
        for guess in [_NUMBERED.sub(r"\1.{num}\3", name)]
        if filter is None or filter(guess)
    )
    if not counts:
        return None
    return max(counts, key=lambda guess: counts[guess] + 1 / len(guess))


def _guess(layer_type: str) -> Callable[[nn.Module], str | None]:
    def guess(model: nn.Module) -> str | None:
        try:
            return steerable_layer_config(model).get(layer_type)
        except (ValueError, TypeError, AttributeError):  # not in the table: guess from the module names
            return _guess_block_matcher_from_layers(dict(model.named_modules()), _NAME_HINTS.get(layer_type))

    guess.__name__ = f"guess_{layer_type}_matcher"
    return guess


guess_decoder_block_matcher = _guess("decoder_block")
guess_self_attn_matcher = _guess("self_attn")
guess_mlp_matcher = _guess("mlp")
guess_input_layernorm_matcher = _guess("input_layernorm")
guess_post_attention_layernorm_matcher = _guess("post_attention_layernorm")
_GUESSERS = {layer_type: _guess(layer_type) for layer_type in LAYER_TYPE_SITES}


def enhance_model_config_matchers(
    model: nn.Module, config: ModelLayerConfig, layer_type: LayerType | None = None
) -> ModelLayerConfig:
    """``config`` with the missing layer types filled in (only ``layer_type``'s, when given)."""
    enhanced: dict[Any, Any] = dict(config)
    for wanted in [layer_type] if layer_type is not None else list(_GUESSERS):
        if wanted not in config and (matcher := _GUESSERS[wanted](model)):
            enhanced[wanted] = matcher
    return enhanced  # type: ignore[return-value]


def guess_and_enhance_layer_config(
    model: nn.Module, layer_config: ModelLayerConfig | None = None, layer_type: LayerType | None = None
) -> ModelLayerConfig:
    return enhance_model_config_matchers(model, layer_config or {}, layer_type=layer_type)


def collect_matching_layers(model: nn.Module, layer_matcher: LayerMatcher) -> list[str]:
    """The module names the matcher gives for layers 0, 1, ... while they exist."""
    names = dict(model.named_modules())
    found: list[str] = []
    for num in range(len(names)):
        name = layer_matcher.format(num=num) if isinstance(layer_matcher, str) else layer_matcher(model, num)
        if name not in names:
            break
        found.append(name)
    return found


def get_num_matching_layers(model: nn.Module, layer_matcher: LayerMatcher) -> int:
    return len(collect_matching_layers(model, layer_matcher))


def site_for(model: nn.Module, layer_type: str, layer_config: ModelLayerConfig | None) -> str:
    """steerable's site for ``layer_type``; a ``layer_config`` must name the module steerable uses there."""
    if layer_type not in LAYER_TYPE_SITES:
        raise ValueError(f"unknown layer_type {layer_type!r}: use one of {', '.join(LAYER_TYPE_SITES)}")
    if layer_config and layer_type in layer_config:
        ours = steerable_layer_config(model).get(layer_type)
        theirs = layer_config[layer_type]  # type: ignore[index]
        given = theirs.format(num=0) if isinstance(theirs, str) else theirs(model, 0)
        if ours is None or given != ours.format(num=0):
            raise ValueError(
                f"layer_config[{layer_type!r}] names {given!r}, but steerable steers {layer_type} at "
                f"{ours.format(num=0) if ours else 'no module'!r} for this model; to steer another module, "
                "register it with steerable.register_architecture(model_type, ArchitectureSpec(...))"
            )
    return LAYER_TYPE_SITES[layer_type]
