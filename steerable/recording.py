"""Recording activations from the same steerable layers that steer: no hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from einops import repeat
from jaxtyping import Float, Int
from torch import Tensor

from steerable import _runtime
from steerable._runtime.layer import Tap
from steerable._runtime.step import StepContext, row_columns


class Recording:
    """What ``model.record(...)`` collected: one entry per forward call.

    ``recording[layer]`` is the activations of that layer, ``[batch, seq, d_model]``. Over several
    forward calls of one sequence (``generate`` with a KV cache: the prompt, then one token per step)
    the steps are concatenated along the sequence. ``recording.forwards(layer)`` gives each forward's
    activations apart (independent batches, of any size), and ``steps`` / ``positions`` hold each
    forward's layers and the absolute position of each token (counted from each row's first
    non-padding token, -1 for padding). Layers are named as given; ``-1`` and ``n - 1`` both work.
    """

    def __init__(self, layers: Sequence[int], num_layers: int | None = None) -> None:
        self.layers = list(layers)
        self.num_layers = num_layers
        self.steps: list[dict[int, Tensor]] = []
        self.positions: list[Int[Tensor, "batch seq"]] = []

    def _key(self, layer: int) -> int:
        if layer in self.layers or self.num_layers is None or not isinstance(layer, int):
            return layer
        return next((k for k in self.layers if k % self.num_layers == layer % self.num_layers), layer)

    def forwards(self, layer: int) -> list[Float[Tensor, "batch seq d_model"]]:
        """The activations of ``layer`` in each forward call, in order."""
        key = self._key(layer)
        if key not in self.layers:
            raise KeyError(f"layer {layer} was not recorded; recorded layers: {self.layers}")
        if not self.steps:
            raise KeyError(f"nothing was recorded for layer {layer}: run the model inside the record block")
        return [step[key] for step in self.steps]

    def __getitem__(self, layer: int) -> Float[Tensor, "batch seq d_model"]:
        per_forward = self.forwards(layer)
        if len(per_forward) == 1:
            return per_forward[0]
        batches = [t.shape[0] for t in per_forward]
        if len(set(batches)) != 1:
            raise ValueError(
                f"the {len(per_forward)} forwards recorded had batch sizes {batches}: they are not one sequence "
                "to concatenate; read them one by one with recording.forwards(layer)"
            )
        return torch.cat(per_forward, dim=1)

    def __contains__(self, layer: object) -> bool:
        return isinstance(layer, int) and self._key(layer) in self.layers

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def keys(self) -> list[int]:
        return list(self.layers)

    def items(self) -> Iterator[tuple[int, Tensor]]:
        return ((layer, self[layer]) for layer in self.layers)


@contextmanager
def record(
    model: Any,
    layers: Iterable[int] | None = None,
    site: str = "block",
    positions: Sequence[int] | None = None,
    to_cpu: bool = False,
) -> Iterator[Recording]:
    """Record ``site`` activations of ``layers`` (default: all) for every forward inside the block.

    Only forwards run in the thread (or asyncio task) that opened the block are recorded, and a layer
    re-run by gradient checkpointing is not recorded twice.
    ``positions``: keep only these tokens of each row, counted among the row's own (non-padding) tokens
    of each forward, as training reads them: ``[-1]`` is every row's last real token, whichever side
    the batch is padded on;
    ``to_cpu``: move what is kept to the CPU at once (saves accelerator memory on long runs).
    """
    num_layers = _runtime.layer_count(model)
    layer_list = list(layers) if layers is not None else list(range(num_layers))
    if not layer_list:
        raise ValueError("layers is empty: give at least one layer index to record (or None for all)")
    indices = _runtime.layer_indices(model, layer_list)
    recording = Recording([original for original, _ in indices], num_layers)
    current: dict[int, Tensor] = {}
    seen: dict[int, StepContext | None] = {}

    def make_tap(layer: int, last: bool) -> Tap:
        def tap(hidden: Tensor, step: StepContext | None) -> None:
            if step is not None and seen.get(layer) is step:
                return  # the same forward again: a checkpointed layer being recomputed
            seen[layer] = step
            kept = hidden.detach()
            if positions is not None:
                assert step is not None and step.positions is not None
                columns = row_columns(step.positions.to(hidden.device), list(positions))
                kept = kept.gather(1, repeat(columns, "b k -> b k d", d=kept.shape[-1]))
            current[layer] = kept.cpu() if to_cpu else kept
            if last:  # the deepest recorded layer ends one forward step
                assert step is not None and step.positions is not None
                step_positions = step.positions
                if positions is not None:
                    step_positions = step_positions.gather(1, row_columns(step_positions, list(positions)))
                recording.positions.append(step_positions.cpu() if to_cpu else step_positions)
                recording.steps.append(dict(current))
                current.clear()

        return tap

    deepest = max(index for _, index in indices)
    # recording reports absolute positions: forwards compute them while it is open
    with _runtime.taps(model, indices, site, lambda layer, index: make_tap(layer, index == deepest), recording=True):
        yield recording


def record_activations(
    model: Any,
    inputs: dict[str, Any] | None = None,
    layers: Iterable[int] | None = None,
    site: str = "block",
    positions: Sequence[int] | None = None,
    to_cpu: bool = False,
    **foreign: Any,
) -> dict[int, Float[Tensor, "batch seq d_model"]]:
    """Run ``model(**inputs)`` under ``torch.inference_mode`` and return ``{layer: activations}``."""
    from steerable.foreign_spellings import SEED, refuse

    if inputs is None or foreign or isinstance(inputs, str):
        if isinstance(inputs, str):  # record_activations(model, "decoder_block"): the seed's layer_type
            foreign = foreign or {"layer_type": inputs}
        refuse("record_activations", foreign, SEED)
        raise TypeError(
            "record_activations(model, inputs, layers=..., site=...) runs the model on inputs; steering-vectors' "
            "`with record_activations(model, layer_type=...)` is `with model.record(layers=..., site=...)`"
        )
    with torch.inference_mode(), record(model, layers, site, positions, to_cpu) as recording:
        model(**inputs)
    return dict(recording.items())
