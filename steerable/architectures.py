"""Where the decoder layers and their sub-modules live, per Hugging Face ``model_type``.

One registry maps a model type to an :class:`ArchitectureSpec`. Unknown models fall back to
auto-detection of the decoder layer list; :func:`register_architecture` adds or overrides an entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

#: Steering/recording sites. ``block`` is the decoder layer's output (the residual stream after the
#: layer); the others name sub-modules whose output is used.
SITES = ("block", "attn", "mlp", "input_norm", "post_attn_norm")
#: The steering-vectors library's layer-type names, accepted wherever a site is.
SITE_ALIASES = {
    "decoder_block": "block",
    "self_attn": "attn",
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attn_norm",
}


def canonical_site(site: str) -> str:
    """``site`` with the seed library's names mapped to ours. Any other name is kept: architectures may
    register sites of their own (``register_architecture``), and the model checks it."""
    if not isinstance(site, str) or not site:
        raise TypeError(f"a site must be a non-empty string, got {site!r}")
    return SITE_ALIASES.get(site, site)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where things are in one model family.

    ``layers`` is the dotted path from the top-level model to the ``nn.ModuleList`` of decoder layers.
    ``sites`` maps a site name (other than ``block``) to the dotted path of a sub-module *inside one
    decoder layer* whose output is that site. ``post_attn_norm`` is the norm that feeds the MLP
    (GPT-2's ``ln_2``, Llama's ``post_attention_layernorm``, Gemma 2/3's ``pre_feedforward_layernorm``).
    """

    layers: str
    sites: dict[str, str] = field(default_factory=dict)
    #: whether the decoder stack passes its keyword arguments on to each layer (transformers does for
    #: most models). Positions then travel with the call, which ``torch.compile`` traces without a break.
    layer_kwargs: bool = True


def _llama_like(layers: str = "model.layers") -> ArchitectureSpec:
    return ArchitectureSpec(
        layers,
        {
            "attn": "self_attn",
            "mlp": "mlp",
            "input_norm": "input_layernorm",
            "post_attn_norm": "post_attention_layernorm",
        },
    )


_GEMMA_SANDWICH = ArchitectureSpec(
    "model.layers",
    {
        "attn": "self_attn",
        "mlp": "mlp",
        "input_norm": "input_layernorm",
        "post_attn_norm": "pre_feedforward_layernorm",
    },
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "gpt2": ArchitectureSpec(
        "transformer.h", {"attn": "attn", "mlp": "mlp", "input_norm": "ln_1", "post_attn_norm": "ln_2"}
    ),
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "gemma": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "phi3": _llama_like(),
    "gemma2": _GEMMA_SANDWICH,
    "gemma3_text": _GEMMA_SANDWICH,
    # Gemma3ForConditionalGeneration: the text stack sits inside the multimodal wrapper.
    "gemma3": ArchitectureSpec("model.language_model.layers", _GEMMA_SANDWICH.sites),
    # OLMo 2 normalises sub-layer outputs, not inputs: there is no norm that feeds attention or MLP.
    "olmo2": ArchitectureSpec("model.layers", {"attn": "self_attn", "mlp": "mlp"}),
    "gpt_neox": ArchitectureSpec(
        "gpt_neox.layers",
        {
            "attn": "attention",
            "mlp": "mlp",
            "input_norm": "input_layernorm",
            "post_attn_norm": "post_attention_layernorm",
        },
    ),
    # GPT-J and Falcon run attention and MLP in parallel from one norm; Falcon's non-parallel variant
    # has a post-attention norm, its "new decoder architecture" names its norm ln_attn.
    "gptj": ArchitectureSpec("transformer.h", {"attn": "attn", "mlp": "mlp", "input_norm": "ln_1"}),
    "falcon": ArchitectureSpec(
        "transformer.h",
        {
            "attn": "self_attention",
            "mlp": "mlp",
            "input_norm": "input_layernorm|ln_attn",
            "post_attn_norm": "post_attention_layernorm|ln_mlp",
        },
        layer_kwargs=False,
    ),
}

# Sub-module names tried, in order, when a model is auto-detected.
_AUTO_SITES = {
    "attn": ("self_attn", "attn", "attention", "self_attention"),
    "mlp": ("mlp", "feed_forward", "ffn"),
    "input_norm": ("input_layernorm", "ln_1", "attention_norm"),
    "post_attn_norm": ("post_attention_layernorm", "ln_2", "ffn_norm"),
}


def register_architecture(model_type: str, spec: ArchitectureSpec) -> None:
    """Register (or override) where the decoder layers of ``model_type`` live.

    Example: ``register_architecture("my_model", ArchitectureSpec("backbone.blocks", {"mlp": "ffn"}))``.
    """
    if not isinstance(spec, ArchitectureSpec):
        raise TypeError(f"spec must be an ArchitectureSpec, got {type(spec).__name__}")
    ARCHITECTURES[model_type] = spec


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """The sub-module at a dotted ``path`` (alternatives separated by ``|``), or None."""
    for alternative in path.split("|"):
        module: nn.Module | None = root
        for part in alternative.split("."):
            module = getattr(module, part, None)
            if not isinstance(module, nn.Module):
                module = None
                break
        if module is not None:
            return module
    return None


def _auto_detect(model: nn.Module) -> ArchitectureSpec | None:
    """The longest homogeneous ``nn.ModuleList`` is taken to be the decoder layer stack."""
    best: tuple[int, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and (best is None or len(module) > best[0]):
                best = (len(module), name)
    if best is None:
        return None
    layers_path = best[1]
    first_layer = get_submodule(model, layers_path + ".0")
    assert first_layer is not None
    sites = {}
    for site, candidates in _AUTO_SITES.items():
        found = next((c for c in candidates if isinstance(getattr(first_layer, c, None), nn.Module)), None)
        if found is not None:
            sites[site] = found
    # unknown code: positions go through a context variable, which is correct whatever the stack passes
    return ArchitectureSpec(layers_path, sites, layer_kwargs=False)


def _find_layers(model: nn.Module, path: str) -> nn.Module | None:
    """``path`` from the top, or below it when the model is wrapped (PEFT's ``base_model.model...``)."""
    direct = get_submodule(model, path)
    if direct is not None:
        return direct
    suffixes = tuple("." + alternative for alternative in path.split("|"))
    return next((m for name, m in model.named_modules() if name.endswith(suffixes)), None)


def resolve_architecture(model: nn.Module) -> tuple[ArchitectureSpec, nn.ModuleList]:
    """The spec for ``model`` and its decoder layer list; raises a ValueError that says how to register."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    spec = ARCHITECTURES.get(model_type) if model_type is not None else None
    if spec is None:
        spec = _auto_detect(model)
    layers = _find_layers(model, spec.layers) if spec is not None else None
    if spec is None or not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"steerable does not know where the decoder layers of {type(model).__name__} "
            f"(model_type={model_type!r}) are and could not find them. Register them with "
            "steerable.register_architecture(model_type, ArchitectureSpec('path.to.layers', "
            "{'attn': 'self_attn', 'mlp': 'mlp'}))."
        )
    return spec, layers
