"""Checks of the arguments researchers pass: a sequence that must hold something is read once (a
generator becomes a list, so it is not used up by a first pass) and an empty one is an error that
names the argument and says what to give."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def nonempty(values: Iterable[T], name: str, give: str) -> list[T]:
    """``values`` as a list; ValueError naming ``name`` and what to ``give`` when there are none."""
    if values is None:
        raise ValueError(f"{name} is None: give {give}")
    out = list(values)
    if not out:
        raise ValueError(f"{name} is empty: give {give}")
    return out
