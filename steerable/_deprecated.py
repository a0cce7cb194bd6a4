"""Import paths of 0.1 that moved in 0.2: each still imports, warns ``DeprecationWarning`` naming the
new path, and gives the same objects. One table here instead of a shim file per old module, so the
package tree shows only the current design."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

#: old module -> the modules that now hold its names (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "steerable.training": ("steerable.train.extraction", "steerable.train.pairs"),
    "steerable.aggregators": ("steerable.train.aggregators",),
    "steerable.read_store": ("steerable.train.read_store",),
    "steerable.distributed": ("steerable.train.distributed",),
    "steerable.learned": ("steerable.train.learned",),
    "steerable.ab": ("steerable.research.ab",),
    "steerable.pair_files": ("steerable.research.pair_files",),
    "steerable.datasets": ("steerable.research.datasets", "steerable.chat_roles"),
    "steerable.evaluation": ("steerable.research.evaluation", "steerable.research.ab"),
    "steerable.sweep": ("steerable.research.sweep",),
    "steerable.diagnostics": ("steerable.research.diagnostics",),
    "steerable.interop": ("steerable.io.gguf", "steerable.io.other_libraries"),
    "steerable.offline": ("steerable.testing",),
    "steerable.offline.smollm2": ("steerable.testing.smollm2",),
    "steerable.steering": ("steerable.handle", "steerable.spec"),
}


class _MovedModule(types.ModuleType):
    """Stands in for an old module: every attribute is looked up in the new ones."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved in steerable 0.2 to {', '.join(targets)}.")
        self._targets = tuple(targets)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"{self.__name__} has no {attribute!r} (it moved to {', '.join(self._targets)})")

    def __dir__(self) -> list[str]:
        return sorted({n for t in self._targets for n in dir(importlib.import_module(t)) if not n.startswith("_")})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "steerable.offline")

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        targets = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved in steerable 0.2: import from {' or '.join(targets)} (or from steerable)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _MovedModule(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "steerable.offline":
            module.__path__ = []  # type: ignore[attr-defined]  # so steerable.offline.smollm2 imports too


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
