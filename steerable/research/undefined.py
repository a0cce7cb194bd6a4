"""Statistics that can be undefined, reported as undefined and never as a number.

A slope over a single multiplier, the AUC of NaN scores, the mean of NaN scores: each is undefined.
NaN would pass for a value (``(nan < 0).mean()`` is 0.0, ``nan > 0`` sorts a NaN score as a loss, a
table prints ``nan`` among numbers, ``json.dumps`` writes ``NaN``, which is not JSON). So: the
computations return NaN *and* warn (``UndefinedStatisticWarning``, saying why); every record, report
and file holds ``None`` (``null`` in JSON, an empty CSV cell, "undefined" in text) instead.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any


class UndefinedStatisticWarning(UserWarning):
    """A statistic is undefined (NaN inputs, or too few distinct values): it is reported as None."""


def undefined(what: str, why: str, stacklevel: int = 3) -> float:
    """Warn that ``what`` is undefined because ``why``, and return NaN (the computation's undefined)."""
    warnings.warn(f"{what} is undefined: {why}; it is reported as None", UndefinedStatisticWarning, stacklevel)
    return math.nan


def defined(value: float | None) -> float | None:
    """``value`` as a float, or None when it is undefined (None, NaN or infinite)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def strict(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by None, through dicts, lists and tuples."""
    if isinstance(data, float):
        return defined(data)
    if isinstance(data, dict):
        return {key: strict(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [strict(value) for value in data]
    return data


def dumps(data: Any, indent: int | None = 1) -> str:
    """Strict JSON (``allow_nan=False``): undefined values are ``null``, never ``NaN`` or ``Infinity``."""
    return json.dumps(strict(data), indent=indent, allow_nan=False)


def shown(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or "undefined"."""
    value = defined(value)
    return "undefined" if value is None else format(value, spec)
