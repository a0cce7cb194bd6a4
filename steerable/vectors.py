"""SteeringVector: one direction per decoder layer, at one site, with what is known of its origin."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerable.architectures import SITE_ALIASES, canonical_site

FORMAT_VERSION = "1"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class SteeringVector:
    """A steering vector: ``layer index -> tensor[d_model]`` (or ``tensor[rows, d_model]``, one vector
    per batch row), read from or applied to one site of those layers. NumPy arrays are accepted too.

    Supports ``+``, ``-``, unary ``-``, and ``*`` / ``/`` by a number (or a 0-d tensor). Layers missing
    on one side of ``+``/``-`` count as zero. Negative layer indices count from the end of the model
    they are used on. ``select``, ``normalize`` and ``cosine`` cover the everyday rest.
    """

    def __init__(
        self,
        layer_activations: Mapping[int, Float[Tensor, "*rows d_model"]],
        site: str = "block",
        *,
        model_type: str | None = None,
        model_name: str | None = None,
        method: str | None = None,
        description: str | None = None,
        num_layers: int | None = None,
        **foreign: Any,
    ) -> None:
        from steerable.foreign_spellings import SEED, refuse

        refuse("SteeringVector", foreign, SEED)
        site = canonical_site(site)
        if not isinstance(layer_activations, Mapping) or len(layer_activations) == 0:
            raise ValueError("a SteeringVector needs at least one layer: pass {layer_index: tensor[d_model]}")
        vectors: dict[int, Tensor] = {}
        for layer, vector in layer_activations.items():
            if isinstance(layer, numbers.Integral) and not isinstance(layer, bool):
                layer = int(layer)  # numpy integers too
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(f"layer indices must be ints, got {layer!r}")
            if isinstance(vector, np.ndarray):
                if not np.issubdtype(vector.dtype, np.floating):
                    raise TypeError(f"layer {layer}: expected a floating-point array, got {vector.dtype}")
                vector = torch.from_numpy(np.ascontiguousarray(vector))
            if not isinstance(vector, Tensor):
                raise TypeError(f"layer {layer}: expected a torch.Tensor or NumPy array, got {type(vector).__name__}")
            if vector.ndim not in (1, 2) or vector.shape[-1] == 0 or vector.numel() == 0:
                raise ValueError(
                    f"layer {layer}: expected shape [d_model] or [rows, d_model], got {list(vector.shape)}"
                )
            if not vector.is_floating_point():
                raise TypeError(f"layer {layer}: expected a floating-point tensor, got {vector.dtype}")
            if not bool(torch.isfinite(vector.detach()).all()):
                raise ValueError(f"layer {layer}: the vector has non-finite values (nan or inf)")
            # copied on the way in (the caller may change theirs), except tensors that require grad:
            # those stay the caller's, so a learned vector (an nn.Parameter) trains through steering
            vectors[layer] = vector if vector.requires_grad else vector.detach().clone()
        shapes = {tuple(v.shape) for v in vectors.values()}
        if len(shapes) != 1:
            raise ValueError(f"all layers must have the same shape, got {sorted(shapes)}")
        if num_layers is not None and (
            isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1
        ):
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        self._vectors = dict(sorted(_absolute(vectors, num_layers).items()))
        self.site = site
        self.model_type = model_type
        self.model_name = model_name
        self.method = method
        self.description = description
        # the model's layer count, when known: negative layers are then stored as absolute ones
        self.num_layers = num_layers
        #: the file this vector was read from (``load``, ``from_gguf``), or None: how a spec names it in a dict
        self.source: str | None = None

    # -- what it holds ------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self._vectors)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self._vectors.values())).shape[-1])

    @property
    def rows(self) -> int | None:
        """Number of per-row vectors (a batch of vectors), or None for one vector for all rows."""
        first = next(iter(self._vectors.values()))
        return int(first.shape[0]) if first.ndim == 2 else None

    def __getitem__(self, layer: int) -> Tensor:
        return self._vectors[self._key(layer)]

    def __contains__(self, layer: object) -> bool:
        return isinstance(layer, int) and self._key(layer) in self._vectors

    def _key(self, layer: int) -> int:
        """Layers are kept as given; with ``num_layers`` known, -1 and n-1 find the same entry."""
        if layer in self._vectors or self.num_layers is None or not -self.num_layers <= layer < self.num_layers:
            return layer
        return next((k for k in self._vectors if k % self.num_layers == layer % self.num_layers), layer)

    # -- the steering-vectors library's names ---------------------------------------------------
    @property
    def layer_activations(self) -> dict[int, Tensor]:
        """``{layer: tensor}``, as ``steering_vectors.SteeringVector.layer_activations``."""
        return dict(self._vectors)

    @property
    def layer_type(self) -> str:
        """The site in the steering-vectors library's words (``decoder_block``, ``self_attn``, ...)."""
        return next((seed for seed, ours in SITE_ALIASES.items() if ours == self.site), self.site)

    def __iter__(self) -> Iterator[int]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def items(self) -> Iterator[tuple[int, Tensor]]:
        return iter(self._vectors.items())

    def metadata(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "model_type": self.model_type,
            "model_name": self.model_name,
            "method": self.method,
            "description": self.description,
            "num_layers": self.num_layers,
        }

    def __repr__(self) -> str:
        origin = f", model_type={self.model_type!r}" if self.model_type else ""
        rows = f", rows={self.rows}" if self.rows is not None else ""
        return f"SteeringVector(layers={self.layers}, site={self.site!r}, hidden_size={self.hidden_size}{rows}{origin})"

    # -- conversion and arithmetic --------------------------------------------------------------
    def _with(self, vectors: Mapping[int, Tensor]) -> SteeringVector:
        return SteeringVector(vectors, **self.metadata())

    def to(self, *args: Any, **kwargs: Any) -> SteeringVector:
        """Like ``Tensor.to``: a copy on another device and/or dtype."""
        return self._with({layer: v.to(*args, **kwargs) for layer, v in self.items()})

    def with_num_layers(self, num_layers: int) -> SteeringVector:
        """This vector for a model of ``num_layers`` layers: negative layers become absolute (``-1`` is
        ``num_layers - 1``), so ``select``, arithmetic and ``to_gguf`` see one name per layer."""
        return SteeringVector(dict(self.items()), **{**self.metadata(), "num_layers": num_layers})

    def __getattr__(self, name: str) -> Any:
        if name in ("apply", "patch_activations"):  # steering-vectors' methods
            raise AttributeError(
                f"a steerable SteeringVector has no {name}(model): use `with model.steer(vector, multiplier):` "
                "on a SteerableModel.wrap(model), or keep the code and import SteeringVector from "
                "steerable.compat.steering_vectors"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if self.num_layers is not None and other.num_layers is not None and self.num_layers != other.num_layers:
            raise ValueError(f"cannot combine vectors of models with {self.num_layers} and {other.num_layers} layers")
        n = self.num_layers if self.num_layers is not None else other.num_layers
        if n is not None and (self.num_layers is None or other.num_layers is None):  # -1 and n-1 merge
            return self.with_num_layers(n)._combine(other.with_num_layers(n), sign)
        if other.site != self.site:
            raise ValueError(f"cannot combine vectors at different sites ({self.site!r} and {other.site!r})")
        if other.hidden_size != self.hidden_size:
            raise ValueError(f"cannot combine vectors of hidden size {self.hidden_size} and {other.hidden_size}")
        # one dtype for all layers (fp32 + fp16 gives fp32 everywhere, as tensors do)
        dtype = torch.promote_types(next(iter(self._vectors.values())).dtype, next(iter(other._vectors.values())).dtype)
        result = {layer: v.to(dtype) for layer, v in self.items()}
        for layer, vector in other.items():
            vector = vector.to(result[layer] if layer in result else dtype)
            result[layer] = result[layer] + sign * vector if layer in result else sign * vector
        return self._with(result)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __mul__(self, scale: float | Tensor) -> SteeringVector:
        value = _scalar(scale)
        if value is None:
            return NotImplemented
        if not math.isfinite(_number(value)):
            raise ValueError(f"cannot scale a steering vector by {_number(value)}")
        return self._with({layer: v * _like(value, v) for layer, v in self.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: float | Tensor) -> SteeringVector:
        value = _scalar(scale)
        if value is None:
            return NotImplemented
        if _number(value) == 0:
            raise ZeroDivisionError("cannot divide a steering vector by zero")
        return self._with({layer: v / _like(value, v) for layer, v in self.items()})

    # -- everyday operations ----------------------------------------------------------------------
    def select(self, layers: int | Iterable[int]) -> SteeringVector:
        """The vector at ``layers`` only (one index or several; negative ones as in ``vector[-1]``)."""
        wanted = [int(layers)] if isinstance(layers, numbers.Integral) else list(layers)  # type: ignore[arg-type]
        missing = [layer for layer in wanted if layer not in self]
        if missing or not wanted:
            raise KeyError(f"layers {missing or wanted} are not in this vector; it has layers {self.layers}")
        return self._with({self._key(int(layer)): self[int(layer)] for layer in wanted})

    def normalize(self) -> SteeringVector:
        """Each layer's direction (each row's, for per-row vectors) scaled to unit L2 norm."""
        out = {}
        for layer, v in self.items():
            norm = v.float().norm(dim=-1, keepdim=True)
            if bool((norm == 0).any()):
                raise ValueError(f"layer {layer}: the vector is zero and has no direction to normalize")
            out[layer] = (v.float() / norm).to(v.dtype)
        return self._with(out)

    def norms(self) -> dict[int, float]:
        """The L2 norm of each layer's vector (of the mean row, for per-row vectors)."""
        return {layer: float(_flat(v).norm()) for layer, v in self.items()}

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        """Cosine similarity with ``other`` at each layer both hold (for per-row vectors, of the mean row).
        For every pair of layers, see ``steerable.research.diagnostics.cosine_matrix``."""
        if not isinstance(other, SteeringVector):
            raise TypeError(f"expected a SteeringVector, got {type(other).__name__}")
        if other.hidden_size != self.hidden_size:
            raise ValueError(f"cannot compare vectors of hidden size {self.hidden_size} and {other.hidden_size}")
        shared = [layer for layer in self.layers if layer in other]
        if not shared:
            raise ValueError(f"the vectors share no layer: {self.layers} and {other.layers}")
        return {
            layer: float(torch.nn.functional.cosine_similarity(_flat(self[layer]), _flat(other[layer]), dim=0))
            for layer in shared
        }

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a safetensors file: one tensor per layer (``layer.{i}``) and the metadata."""
        from safetensors.torch import save_file

        metadata = {
            "format": "steerable.steering_vector",
            "format_version": FORMAT_VERSION,
            "site": self.site,
            "layers": json.dumps(self.layers),
            "hidden_size": str(self.hidden_size),
            "dtype": str(next(iter(self._vectors.values())).dtype).removeprefix("torch."),
            # layers may differ in dtype (fp32 + fp16 vectors); each is checked on load
            "dtypes": json.dumps({str(k): str(v.dtype).removeprefix("torch.") for k, v in self.items()}),
        }
        for key in ("model_type", "model_name", "method", "description", "num_layers"):
            value = getattr(self, key)
            if value is not None:
                metadata[key] = str(value)
        tensors = {f"layer.{layer}": v.detach().cpu().contiguous() for layer, v in self.items()}
        save_file(tensors, str(path), metadata=metadata)

    def to_gguf(self, path: str | Path, model_hint: str | None = None) -> None:
        """Write a llama.cpp / repeng GGUF control vector (block site only; see ``steerable.io.gguf``)."""
        from steerable.io.gguf import to_gguf

        to_gguf(self, path, model_hint)

    @classmethod
    def from_gguf(cls, path: str | Path, num_layers: int | None = None) -> SteeringVector:
        """Read a GGUF control vector: ``direction.i`` steers the output of decoder block ``i``. GGUF does
        not store the model's layer count: give ``num_layers`` for negative selections (``select(range(-5,
        -18, -1))``, as repeng writes them)."""
        from steerable.io.gguf import from_gguf

        vector = from_gguf(path, num_layers)
        vector.source = str(path)
        return vector

    @classmethod
    def from_steering_vectors(cls, obj: Any) -> SteeringVector:
        """Convert a vector of the ``steering-vectors`` library (same layer indices and sites)."""
        from steerable.io.other_libraries import from_steering_vectors

        return from_steering_vectors(obj)

    @classmethod
    def from_repeng(cls, obj: Any) -> SteeringVector:
        """Convert a ``repeng.ControlVector`` (its ``directions[i]`` steer the output of block ``i``)."""
        from steerable.io.other_libraries import from_repeng

        return from_repeng(obj)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a file written by :meth:`save`, checking it; never executes code (no pickle)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise ValueError(
                f"{path.name}: pickle files are refused (loading them can execute code); "
                "save vectors with SteeringVector.save to a .safetensors file"
            )
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{path.name}: not a readable safetensors file (truncated or corrupt?): {error}"
            ) from error
        vector = cls._from_file_contents(path.name, metadata, tensors)
        vector.source = str(path)
        return vector

    @classmethod
    def _from_file_contents(cls, name: str, metadata: dict[str, str], tensors: dict[str, Tensor]) -> SteeringVector:
        if metadata.get("format") != "steerable.steering_vector":
            raise ValueError(f"{name}: missing steerable metadata; is this a steering vector file?")
        missing = [k for k in ("format_version", "site", "layers", "hidden_size", "dtype") if k not in metadata]
        if missing:
            raise ValueError(f"{name}: metadata is missing {', '.join(missing)}")
        if metadata["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{name}: format version {metadata['format_version']} is not supported")
        try:
            layers = json.loads(metadata["layers"])
            hidden_size = int(metadata["hidden_size"])
            dtypes = json.loads(metadata["dtypes"]) if "dtypes" in metadata else {}
        except (ValueError, TypeError) as error:
            raise ValueError(f"{name}: malformed metadata: {error}") from error
        if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise ValueError(f"{name}: malformed metadata: layers must be a list of integers, got {metadata['layers']}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"{name}: malformed metadata: layers {layers} repeat a layer")
        expected = {f"layer.{layer}" for layer in layers}
        if set(tensors) != expected:
            raise ValueError(f"{name}: tensors {sorted(tensors)} do not match the layers {layers} in the metadata")
        vectors: dict[int, Tensor] = {}
        for layer in layers:
            tensor = tensors[f"layer.{layer}"]
            if tensor.dtype not in _FLOAT_DTYPES:
                raise ValueError(
                    f"{name}: layer {layer} is not floating point of a supported kind ({tensor.dtype}); vectors are "
                    "float16, bfloat16, float32 or float64"
                )
            if tensor.ndim not in (1, 2) or tensor.shape[-1] != hidden_size:
                raise ValueError(
                    f"{name}: layer {layer} has shape {list(tensor.shape)}, expected [{hidden_size}] "
                    f"or [rows, {hidden_size}]"
                )
            expected_dtype = dtypes.get(str(layer), metadata["dtype"]) if isinstance(dtypes, dict) else None
            if str(tensor.dtype).removeprefix("torch.") != expected_dtype:
                raise ValueError(f"{name}: layer {layer} has dtype {tensor.dtype}, metadata says {expected_dtype}")
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name}: layer {layer} has non-finite values (nan or inf)")
            vectors[layer] = tensor
        return cls(
            vectors,
            site=metadata["site"],
            model_type=metadata.get("model_type"),
            model_name=metadata.get("model_name"),
            method=metadata.get("method"),
            description=metadata.get("description"),
            num_layers=_int_or_none(metadata.get("num_layers"), name),
        )


def _absolute(vectors: dict[int, Tensor], num_layers: int | None) -> dict[int, Tensor]:
    """``vectors`` with negative layers counted from the end of a ``num_layers``-layer model."""
    if num_layers is None:
        return vectors
    out: dict[int, Tensor] = {}
    for layer, vector in vectors.items():
        index = layer % num_layers if -num_layers <= layer < 0 else layer
        if index in out:
            raise ValueError(
                f"layers {index - num_layers} and {index} are the same layer of a {num_layers}-layer model: "
                "give it once"
            )
        out[index] = vector
    return out


def _scalar(scale: Any) -> float | Tensor | None:
    """A number or a 0-d tensor (kept as a tensor when it requires grad); None for anything else."""
    if isinstance(scale, Tensor):
        if scale.ndim != 0 or scale.dtype == torch.bool:
            raise ValueError(
                f"a steering vector is scaled by a number or a 0-d tensor, got a tensor of shape {list(scale.shape)}; "
                "for one multiplier per batch row pass them to steer(...)"
            )
        return scale if scale.requires_grad else float(scale)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):  # numpy scalars are Real
        return None
    return float(scale)


def _number(value: float | Tensor) -> float:
    return float(value.detach()) if isinstance(value, Tensor) else value


def _like(value: float | Tensor, v: Tensor) -> float | Tensor:
    return value.to(v.device, v.dtype) if isinstance(value, Tensor) else value


def _flat(v: Tensor) -> Float[Tensor, " d_model"]:
    return (v.float().mean(0) if v.ndim == 2 else v.float()).detach().cpu()


def model_name_of(config: Any) -> str | None:
    """The model's name for a vector's metadata: the hub id, never a local path (a cache directory says
    nothing to whoever reads the file, and may leak a user name): for a path, its last component."""
    name = getattr(config, "name_or_path", None) or None
    if name is None:
        return None
    text = str(name)
    if os.path.isabs(text) or text.startswith((".", "~")) or os.path.exists(text) or "\\" in text:
        return Path(text.rstrip("/\\")).name or None
    return text


def _int_or_none(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"{name}: malformed metadata: num_layers is {value!r}, not a positive integer")
    return int(value)
