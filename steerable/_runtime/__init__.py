"""The runtime: everything steerable changes on a model, behind a small interface. Nothing outside this
package reads or writes a model's steerable state.

- ``wrap(model, mixins)`` / ``unwrap(model)`` / ``hand_over(wrapper, base, mixins)``: make a model
  steerable, give it back, move the state from a PEFT wrapper to its base model;
- ``install(model, steering)`` -> an installation; ``uninstall``; ``update``; ``is_installed``;
- ``taps(model, layers, site, make_tap)``: read activations at a site (recording, training);
- ``generating(model, args, kwargs)``: the context of one ``generate`` call;
- ``layer_count``, ``hidden_size``, ``layer_indices``, ``decoder_layers``, ``is_steering``,
  ``republish``, ``plain_copy``.

The pieces: ``class_swap`` (generated subclasses that pose as the original), ``layer`` (the steerable
layer), ``stack`` (where a forward enters), ``step`` (what one forward carries), ``active`` (the
immutable set of steerings a forward runs with), ``pool`` (slots and their buffers), ``conditional``
(probes and gates), ``plan`` (a steering's tensors for a model), ``install``, ``taps``, ``generation``,
``wrapping``, and ``state`` (what a model keeps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from torch import nn

from steerable._runtime import install as _install
from steerable._runtime.generation import generating as _generating
from steerable._runtime.layer import Tap
from steerable._runtime.state import Installation, ModelState, resolve_layers
from steerable._runtime.taps import taps_installed
from steerable._runtime.wrapping import hand_over, plain_copy, unwrap, wrap
from steerable.spec import Steering

__all__ = [
    "Installation",
    "Tap",
    "decoder_layers",
    "generating",
    "check_site",
    "hand_over",
    "hidden_size",
    "install",
    "is_installed",
    "is_steering",
    "layer_count",
    "layer_indices",
    "one_change",
    "plain_copy",
    "republish",
    "taps",
    "uninstall",
    "unwrap",
    "update",
    "wrap",
]


def _state(model: Any) -> ModelState:
    state = model.__dict__.get("_steerable")
    if state is None:
        raise TypeError(f"{type(model).__name__} is not steerable: wrap it first with SteerableModel.wrap(model)")
    return state  # type: ignore[no-any-return]


def install(model: Any, steering: Steering) -> Installation:
    return _install.install(_state(model), steering)


def uninstall(model: Any, installation: Installation) -> None:
    # the installation's own state: after a PEFT model's merge_and_unload it lives on the base model
    state: ModelState = installation.owner
    if state.unwrapped:  # everything is gone already
        installation.active = False
        return
    _install.uninstall(state, installation)


def update(model: Any, installation: Installation, old: Steering, new: Steering) -> None:
    _install.update(installation.owner, installation, old, new)


def is_installed(installation: Installation) -> bool:
    return installation.active


def is_steering(model: Any) -> bool:
    return bool(_state(model).installed)


def layer_count(model: Any) -> int:
    return len(_state(model).layers)


def hidden_size(model: Any) -> int | None:
    return _state(model).hidden_size


def decoder_layers(model: Any) -> nn.ModuleList:
    return _state(model).layers


def layer_indices(model: Any, layers: Sequence[int]) -> list[tuple[int, int]]:
    """(as given, index into the layer list) for each layer; negative indices count from the end."""
    return resolve_layers(_state(model), list(layers))


def republish(model: Any) -> None:
    """After the model's tensors moved (``.to()``, ``.half()``): forwards use the moved buffers."""
    state = model.__dict__.get("_steerable")
    if state is not None:
        with state.lock:
            state.publish()


@contextmanager
def taps(
    model: Any,
    layers: Sequence[tuple[int, int]],
    site: str,
    make_tap: Callable[[int, int], Tap],
    recording: bool = False,
) -> Iterator[None]:
    with taps_installed(_state(model), layers, site, make_tap, recording):
        yield


def generating(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AbstractContextManager[None]:
    return _generating(_state(model), model, args, kwargs)


def one_change(model: Any) -> AbstractContextManager[None]:
    """Installs and removals inside the block reach forwards as one change."""
    state = model.__dict__.get("_steerable")
    return nullcontext() if state is None else state.one_change()  # unwrapped: nothing left to change


def check_site(model: Any, site: str) -> str:
    """``site`` in this package's naming (seed-library names mapped) if the model has it, else a ValueError."""
    return _state(model).check_site(site)
