"""GGUF control vectors, the file format of llama.cpp (``--control-vector``) and repeng.

Layer convention: tensor ``direction.{i}`` is added to the output of decoder block i (0-based), after
the block's residual add, at every token. llama.cpp rejects ``direction.0``, so block 0 cannot be
expressed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerable.vectors import SteeringVector

#: SteeringVector metadata kept in a GGUF file, as ``steerable.<name>`` keys beside llama.cpp's
GGUF_METADATA = ("model_name", "method", "description")


def to_gguf(vector: SteeringVector, path: str | Path, model_hint: str | None = None) -> None:
    """Write ``vector`` as a llama.cpp control vector (``--control-vector FILE``)."""
    import gguf

    if vector.site != "block":
        raise ValueError(
            f"GGUF control vectors steer decoder block outputs only; this vector is at site {vector.site!r}"
        )
    if vector.rows is not None:
        raise ValueError("GGUF control vectors hold one vector per layer, not one per batch row")
    negative = [layer for layer in vector.layers if layer < 0]
    if negative:
        raise ValueError(
            f"layers {negative} are negative and the vector does not know its model's layer count: GGUF needs "
            "absolute block indices; write vector.with_num_layers(model.config.num_hidden_layers).to_gguf(path)"
        )
    if 0 in vector.layers:
        raise ValueError(
            "layer 0 cannot be written: llama.cpp rejects direction.0 (it has no slot for block 0's output); "
            "drop layer 0 or move it to another layer"
        )
    if model_hint is not None and not isinstance(model_hint, str):
        raise TypeError(
            f"model_hint must be a str (the model type llama.cpp checks, e.g. 'llama'), got "
            f"{type(model_hint).__name__}: {model_hint!r}"
        )
    hint = model_hint or vector.model_type or ""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", hint)
    writer.add_uint32("controlvector.layer_count", len(vector))
    # llama.cpp reads only the controlvector.* keys; these keep where the vector came from
    for key in GGUF_METADATA:
        value = getattr(vector, key)
        if value is not None:
            writer.add_string(f"steerable.{key}", str(value))
    for layer, direction in vector.items():
        writer.add_tensor(f"direction.{layer}", direction.detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def from_gguf(path: str | Path, num_layers: int | None = None) -> SteeringVector:
    """Read a GGUF control vector (as written by llama.cpp tools, repeng or :func:`to_gguf`); the file does
    not store the model's layer count: ``num_layers`` gives it (for negative layer selections)."""
    import gguf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # the reader raises several types on bad input
        raise ValueError(f"{path.name}: not a readable GGUF file (truncated or corrupt?): {error}") from error
    architecture = _string_field(reader, "general.architecture", path.name)
    if architecture != "controlvector":
        raise ValueError(f"{path.name}: general.architecture is {architecture!r}, not 'controlvector'")
    hint = _string_field(reader, "controlvector.model_hint", path.name)
    vectors: dict[int, torch.Tensor] = {}
    names: dict[int, str] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise ValueError(f"{path.name}: unexpected tensor {tensor.name!r} (expected direction.N)")
        layer = int(index)
        if layer == 0:
            raise ValueError(f"{path.name}: direction.0 is invalid in a control vector (llama.cpp rejects it)")
        if layer in names:
            raise ValueError(f"{path.name}: {names[layer]!r} and {tensor.name!r} both give layer {layer}")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path.name}: {tensor.name} is {tensor.tensor_type.name}, expected F32")
        shape = [int(n) for n in tensor.shape if int(n) != 1] or [int(tensor.n_elements)]
        if len(shape) != 1:
            raise ValueError(
                f"{path.name}: {tensor.name} has shape {list(tensor.shape)}; a control vector holds one "
                "1-D direction per layer"
            )
        names[layer] = tensor.name
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        vectors[layer] = torch.from_numpy(data.copy())
    if not vectors:
        raise ValueError(f"{path.name}: the control vector has no direction tensors")
    kept = {key: _string_field(reader, f"steerable.{key}", path.name) for key in GGUF_METADATA}
    return SteeringVector(
        vectors,
        site="block",
        model_type=hint or None,
        model_name=kept["model_name"],
        method=kept["method"],
        description=kept["description"] if kept["description"] is not None else f"from {path.name}",
        num_layers=num_layers,
    )


def _string_field(reader: Any, key: str, name: str = "") -> str | None:
    """The text of the string field ``key`` (None when absent); a field of another type is an error,
    not its bytes read as text."""
    import gguf

    field = reader.get_field(key)
    if field is None:
        return None
    if list(field.types) != [gguf.GGUFValueType.STRING]:
        kinds = "/".join(t.name for t in field.types) or "empty"
        raise ValueError(f"{name}: the {key} field is {kinds}, not a string: rewrite the file with a text value")
    raw = bytes(field.parts[field.data[0]])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{name}: the {key} field is not valid UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
