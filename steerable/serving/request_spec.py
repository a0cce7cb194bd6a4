"""The request contract: ``extra_args["steering"]`` parsed, checked and resolved (no vLLM import here).

A SPEC is a list of steerings (or that list as a JSON string), each a dict with the keys of
``Steering.to_dict``: ``vector`` (a vector file path, or a name the server knows), ``multiplier``,
``positions`` ("all" | "prompt" | "generated" | "assistant" | "last_user_turn"), ``min_token_index``,
``operator`` ("add" | "ablate" | "ablate_then_add" | "clamp"), ``norm_preserving`` and ``condition`` (a
condition dict, or one level of ``{"all_of": [...]}`` / ``{"any_of": [...]}``). Unset keys take the library's
defaults. Role positions are found in each prompt from the server's chat template (serving.roles). The resolved form
(:func:`resolve`) names each vector by its absolute path and file version, so every engine process loads
the same file and a replaced file is a different vector.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

from steerable.serving.catalog import Catalog, SteeringSpecError, VectorRef

MAX_STEERINGS = 4  # steerings per request (the slot lanes applied to every token)
MAX_CONDITIONS = 4  # condition leaves per request
ROLE_POSITIONS = ("assistant", "last_user_turn")  # found in each prompt from the server's chat template
POSITIONS = ("all", "prompt", "generated", *ROLE_POSITIONS)
OPERATORS = ("add", "ablate", "ablate_then_add", "clamp")
KEYS = {"vector", "multiplier", "positions", "min_token_index", "operator", "norm_preserving", "condition"}
CONDITION_KEYS = {"vector", "layer", "threshold", "comparator", "score"}


@dataclass(frozen=True)
class ResolvedCondition:
    vector: VectorRef
    layer: int
    threshold: float
    comparator: str = ">"
    score: str = "projection"


@dataclass(frozen=True)
class ResolvedSteering:
    vector: VectorRef
    multiplier: float = 1.0
    positions: str = "all"
    min_token_index: int = 0
    operator: str = "add"
    norm_preserving: bool = False
    condition_mode: str = "all"  # how the leaves combine: "all" (and) or "any" (or)
    conditions: tuple[ResolvedCondition, ...] = field(default_factory=tuple)
    prompt_runs: tuple[tuple[int, int], ...] = ()  # a role's [start, end) prompt positions (the frontend's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> ResolvedSteering:
        conditions = tuple(
            ResolvedCondition(**{**c, "vector": VectorRef(**c["vector"])}) for c in data.get("conditions", ())
        )
        runs = tuple((int(a), int(b)) for a, b in data.get("prompt_runs", ()))
        vector = VectorRef(**data["vector"])
        return ResolvedSteering(**{**data, "vector": vector, "conditions": conditions, "prompt_runs": runs})


def parse_spec(value: Any) -> list[dict[str, Any]]:
    """The list of steering dicts of ``extra_args["steering"]`` (a list, one dict, or their JSON text)."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise SteeringSpecError(f"steering is not valid JSON ({error}): pass a JSON list of steerings") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise SteeringSpecError("steering must be a list of steering objects like {'vector': ..., 'multiplier': ...}")
    if len(value) > MAX_STEERINGS:
        raise SteeringSpecError(
            f"the request has {len(value)} steerings but a request may have at most {MAX_STEERINGS}: "
            "combine vectors into one file (they add), or send fewer"
        )
    return value


def resolve(value: Any, catalog: Catalog, num_layers: int, hidden_size: int) -> list[ResolvedSteering]:
    """Every steering of a request checked against the model and resolved to files; SteeringSpecError otherwise."""
    resolved = []
    conditions = 0
    for index, item in enumerate(parse_spec(value)):
        try:
            steering = _resolve_one(item, catalog, num_layers, hidden_size)
        except SteeringSpecError as error:
            raise SteeringSpecError(f"steering {index}: {error}") from None
        conditions += len(steering.conditions)
        resolved.append(steering)
    if conditions > MAX_CONDITIONS:
        raise SteeringSpecError(f"the request has {conditions} conditions; at most {MAX_CONDITIONS} are allowed")
    return resolved


def _resolve_one(item: dict[str, Any], catalog: Catalog, num_layers: int, hidden_size: int) -> ResolvedSteering:
    unknown = set(item) - KEYS
    if unknown:
        raise SteeringSpecError(f"unknown keys {sorted(unknown)}: use {sorted(KEYS)}")
    if "vector" not in item:
        raise SteeringSpecError("'vector' is required (a vector name or file)")
    ref, vector = catalog.resolve(item["vector"])
    layers = _check_vector(vector, num_layers, hidden_size, "vector")
    multiplier = item.get("multiplier", 1.0)
    if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real) or not math.isfinite(multiplier):
        raise SteeringSpecError(f"multiplier must be a finite number, got {multiplier!r}")
    positions = item.get("positions", "all")
    if positions not in POSITIONS:
        raise SteeringSpecError(f"unknown positions {positions!r}: use one of {', '.join(POSITIONS)}")
    min_index = item.get("min_token_index", 0)
    if min_index is None:
        min_index = 0
    if isinstance(min_index, bool) or not isinstance(min_index, int) or min_index < 0:
        raise SteeringSpecError(f"min_token_index must be an int >= 0, got {min_index!r}")
    operator = item.get("operator", "add")
    if operator not in OPERATORS:
        raise SteeringSpecError(f"unknown operator {operator!r}: use one of {', '.join(OPERATORS)}")
    norm_preserving = item.get("norm_preserving", False)
    if norm_preserving not in (True, False):
        raise SteeringSpecError(f"norm_preserving must be true or false, got {norm_preserving!r}")
    if operator != "add":
        zero = [layer for layer, key in layers.items() if float(vector[key].float().norm()) == 0.0]
        if zero:
            raise SteeringSpecError(f"operator {operator!r} projects onto the vector, which is zero at layers {zero}")
    scaled = max(float(vector[layer].float().abs().max()) for layer in vector.layers) * abs(float(multiplier))
    if not math.isfinite(scaled):
        raise SteeringSpecError(f"multiplier {multiplier} times the vector overflows: use a smaller multiplier")
    mode, leaves = "all", tuple[ResolvedCondition, ...]()
    if item.get("condition") is not None:
        mode, leaves = _resolve_condition(item["condition"], catalog, num_layers, hidden_size)
        first = min(layers)
        late = [c.layer for c in leaves if c.layer > first]
        if late:
            raise SteeringSpecError(
                f"the condition is decided at layer {max(late)} but the steering starts at layer {first}: "
                "a behaviour's layers must not come before its condition's"
            )
    return ResolvedSteering(ref, float(multiplier), positions, min_index, operator, bool(norm_preserving), mode, leaves)


def _resolve_condition(
    data: Any, catalog: Catalog, num_layers: int, hidden_size: int
) -> tuple[str, tuple[ResolvedCondition, ...]]:
    if not isinstance(data, dict):
        raise SteeringSpecError(f"a condition must be an object, got {type(data).__name__}")
    for key, mode in (("all_of", "all"), ("any_of", "any")):
        if key in data:
            parts = data[key]
            if set(data) != {key} or not isinstance(parts, list) or not parts:
                raise SteeringSpecError(f"{key} must be the only key, with a non-empty list of conditions")
            if any(not isinstance(p, dict) or "all_of" in p or "any_of" in p for p in parts):
                raise SteeringSpecError(
                    "nested all_of/any_of is not supported when serving: use one level of conditions"
                )
            return mode, tuple(_resolve_leaf(p, catalog, num_layers, hidden_size) for p in parts)
    return "all", (_resolve_leaf(data, catalog, num_layers, hidden_size),)


def _resolve_leaf(data: dict[str, Any], catalog: Catalog, num_layers: int, hidden_size: int) -> ResolvedCondition:
    unknown = set(data) - CONDITION_KEYS
    if unknown or not {"vector", "layer", "threshold"} <= set(data):
        raise SteeringSpecError(
            "a condition needs 'vector', 'layer' and 'threshold' (and may set 'comparator', 'score'); "
            f"got {sorted(data)}"
        )
    ref, vector = catalog.resolve(data["vector"])
    layer = data["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int) or not -num_layers <= layer < num_layers:
        raise SteeringSpecError(
            f"condition layer {layer!r} is out of range: the model has {num_layers} decoder layers "
            f"(use 0..{num_layers - 1})"
        )
    layer %= num_layers
    layers = _check_vector(vector, num_layers, hidden_size, "condition vector")
    if layer not in layers:
        raise SteeringSpecError(f"the condition vector has no layer {layer} (it has {layers})")
    if float(vector[layers[layer]].float().norm()) == 0.0:
        raise SteeringSpecError(f"the condition vector is zero at layer {layer}")
    threshold = data["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise SteeringSpecError(f"a condition threshold must be a finite number, got {threshold!r}")
    comparator, score = data.get("comparator", ">"), data.get("score", "projection")
    if comparator not in (">", "<"):
        raise SteeringSpecError(f"unknown comparator {comparator!r}: use '>' or '<'")
    if score not in ("projection", "cosine"):
        raise SteeringSpecError(f"unknown score {score!r}: use 'projection' or 'cosine'")
    return ResolvedCondition(ref, layer, float(threshold), comparator, score)


def _check_vector(vector: Any, num_layers: int, hidden_size: int, what: str) -> dict[int, int]:
    """{model layer: the vector's own key} for a vector that fits the model."""
    if vector.site != "block":
        raise SteeringSpecError(f"the {what} is for site {vector.site!r}; serving steers decoder block outputs only")
    if vector.rows is not None:
        raise SteeringSpecError(f"the {what} has one vector per row; serving needs one direction per layer")
    if vector.hidden_size != hidden_size:
        raise SteeringSpecError(
            f"the {what} has hidden size {vector.hidden_size} but the model's is {hidden_size}: use a vector "
            "trained on this model"
        )
    out = {}
    for layer in vector.layers:
        if not -num_layers <= layer < num_layers:
            raise SteeringSpecError(
                f"the {what} steers layer {layer}, out of range: the model has {num_layers} decoder layers "
                f"(use 0..{num_layers - 1})"
            )
        out[layer % num_layers] = layer
    return out
