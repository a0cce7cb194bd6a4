"""Handles: what ``steer`` and ``steer_rows`` return. A handle keeps the ``Steering`` it applied
(``handle.steering``); ``remove()`` (or leaving its ``with`` block) undoes it, ``update(**changes)``
applies ``handle.steering.replace(**changes)`` in place."""

from __future__ import annotations

from typing import Any

from steerable import _runtime
from steerable.spec import Steering


class SteeringHandle:
    """An applied steering. ``remove()`` undoes it; as a context manager it is removed on exit."""

    def __init__(self, model: Any, steering: Steering) -> None:
        self._model = model
        self.steering = steering
        self._installed = _runtime.install(model, steering)

    @property
    def active(self) -> bool:
        return _runtime.is_installed(self._installed)

    def remove(self) -> None:
        _runtime.uninstall(self._model, self._installed)

    def update(self, multiplier: Any = None, vector: Any = None, **changes: Any) -> None:
        """Change values in place: ``handle.update(multiplier=-2.0)``, ``update(vector=w)``, or or both
        (layers, site, operator and per-row sizes stay the same).

        The steering keeps its slots, so a ``torch.compile``d model does not recompile. A forward already
        running, or a checkpointed layer recomputed in backward, keeps the values it started with."""
        if multiplier is not None:
            changes["multiplier"] = multiplier
        if vector is not None:
            changes["vector"] = vector
        if not self.active:
            raise RuntimeError("this steering was removed; apply a new one with model.steer(...)")
        fixed = sorted(set(changes) - {"multiplier", "vector"})
        if fixed:
            raise ValueError(
                f"update changes the multiplier and the vector's values, not {', '.join(fixed)}: remove this "
                "steering and apply handle.steering.replace(...) with model.steer"
            )
        new = self.steering.replace(**changes)
        _runtime.update(self._model, self._installed, self.steering, new)
        self.steering = new

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"SteeringHandle({'active' if self.active else 'removed'}, {self.steering!r})"


class RowsHandle:
    """The steerings of one ``steer_rows`` call; ``remove()`` (or leaving the ``with`` block) removes all."""

    def __init__(self, handles: list[SteeringHandle], steerings: list[Steering | None]) -> None:
        self.handles = handles
        self.steerings = steerings  # one per row, as given (None: that row is not steered)

    @property
    def active(self) -> bool:
        return any(h.active for h in self.handles)

    def remove(self) -> None:
        for handle in reversed(self.handles):
            handle.remove()

    def __enter__(self) -> RowsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
