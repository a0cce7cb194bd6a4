"""Taps: functions a steerable module calls with its (steered) output on each forward — how recording
and training read activations from the same layers that steer, without hooks. A tap sees only the
forwards run in the thread (or asyncio task) that installed it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

from steerable._runtime.layer import SteerableLayer, Tap
from steerable._runtime.state import ModelState
from steerable._runtime.step import StepContext

#: The tap scopes open in this thread/task: taps ignore forwards run elsewhere.
_TAP_SCOPES: ContextVar[tuple[object, ...]] = ContextVar("steerable_tap_scopes", default=())


@contextmanager
def taps_installed(
    state: ModelState,
    layers: Sequence[tuple[int, int]],
    site: str,
    make_tap: Callable[[int, int], Tap],
    recording: bool = False,
) -> Iterator[None]:
    """Install ``make_tap(layer, index)`` at ``site`` of each (layer as given, index) for the block; on
    exit remove them, and give idle modules their own class back. ``recording``: the taps report token
    positions (forwards then compute them)."""
    scope = object()
    installed: list[tuple[SteerableLayer, Tap]] = []

    def scoped(tap: Tap) -> Tap:
        def in_scope(hidden: Tensor, step: StepContext | None) -> None:
            if scope in _TAP_SCOPES.get():
                tap(hidden, step)

        return in_scope

    token = _TAP_SCOPES.set((*_TAP_SCOPES.get(), scope))
    try:
        with state.lock:
            state.taps += 1
            state.recordings += recording
            for layer, index in layers:
                module = state.site_module(index, site)
                tap = scoped(make_tap(layer, index))
                module._steerable_taps = (*module._steerable_taps, tap)
                installed.append((module, tap))
            state.refresh()
        yield
    finally:
        _TAP_SCOPES.reset(token)
        with state.lock:
            if not state.unwrapped:  # unwrapped inside the block: nothing is left to remove
                for module, tap in installed:
                    module._steerable_taps = tuple(t for t in module._steerable_taps if t is not tap)
                state.taps -= 1
                state.recordings -= recording
                state.refresh()
                state.deactivate_if_idle()
