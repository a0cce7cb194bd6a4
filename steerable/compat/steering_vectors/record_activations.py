"""steering-vectors' ``record_activations`` context manager: ``{layer: [activations of each forward]}``,
read from steerable's recording of the model (no hooks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from steerable.compat.steering_vectors.layer_matching import LayerType, ModelLayerConfig, site_for
from steerable.compat.steering_vectors.steering_vector import steerable_model
from steerable.recording import Recording


class RecordedActivations(dict):  # type: ignore[type-arg]
    """A dict ``{layer: [tensor per forward]}`` that follows the recording as forwards run."""

    def __init__(self, recording: Recording) -> None:
        super().__init__()
        self._recording = recording
        self._sync()

    def _sync(self) -> None:
        dict.clear(self)
        if self._recording.steps:
            dict.update(self, {layer: self._recording.forwards(layer) for layer in self._recording.layers})

    def __getitem__(self, layer: int) -> list[Tensor]:
        self._sync()
        return dict.__getitem__(self, layer)

    def __iter__(self) -> Iterator[int]:
        self._sync()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._sync()
        return dict.__len__(self)

    def __contains__(self, layer: object) -> bool:
        self._sync()
        return dict.__contains__(self, layer)

    def keys(self) -> Any:
        self._sync()
        return dict.keys(self)

    def values(self) -> Any:
        self._sync()
        return dict.values(self)

    def items(self) -> Any:
        self._sync()
        return dict.items(self)

    def get(self, layer: int, default: Any = None) -> Any:
        self._sync()
        return dict.get(self, layer, default)

    def __repr__(self) -> str:
        self._sync()
        return dict.__repr__(self)


@contextmanager
def record_activations(
    model: nn.Module,
    layer_type: LayerType = "decoder_block",
    layer_config: ModelLayerConfig | None = None,
    clone_activations: bool = True,
    layer_nums: Sequence[int] | None = None,
) -> Iterator[dict[int, list[Tensor]]]:
    """Record ``layer_type`` activations of ``layer_nums`` (default: all; negative ones count from the
    end) for every forward in the block. Keys are absolute layer numbers, as in the seed. Activations
    are detached copies (``clone_activations`` is accepted; they are never views the model changes)."""
    steerable = steerable_model(model)
    site = site_for(steerable, layer_type, layer_config)
    n = len(steerable.steerable_layers)
    wanted = range(n) if layer_nums is None else sorted({int(k) % n for k in layer_nums if -n <= int(k) < n})
    with steerable.record(layers=list(wanted), site=site) as recording:
        yield RecordedActivations(recording)
