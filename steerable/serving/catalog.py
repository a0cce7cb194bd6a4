"""Where a request's vector names and paths lead, and loading each vector file once per version.

The server's vectors are the ``.safetensors`` and ``.gguf`` files of one directory, named by file stem.
The directory is read when a request arrives, so files added, replaced or removed while the server runs
are seen by the next request, without a restart. A file is identified by its path and version (size and
modification time): a replaced file is a new vector, loaded (and checked) on first use.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from steerable.vectors import SteeringVector

VECTORS_ENV = "STEERABLE_VLLM_VECTORS"  # the directory of named vectors
NAMES_ONLY_ENV = "STEERABLE_VLLM_NAMES_ONLY"  # "1": requests may name only vectors in the directory
SUFFIXES = (".safetensors", ".gguf")


class SteeringSpecError(ValueError):
    """A request's steering is malformed or does not fit the model; the message says what and how to fix it."""


@dataclass(frozen=True)
class VectorRef:
    """One version of one vector file."""

    path: str
    size: int
    mtime_ns: int
    inode: int  # a file replaced by a rename is a new inode even within one clock tick


def _ref(path: Path) -> VectorRef:
    stat = path.stat()
    return VectorRef(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


class Catalog:
    """Vector names (file stems in ``directory``) and, unless ``names_only``, file paths."""

    def __init__(self, directory: str | Path | None = None, names_only: bool = False) -> None:
        self.directory = Path(directory) if directory else None
        self.names_only = names_only
        self._loaded: dict[VectorRef, SteeringVector] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Catalog:
        return cls(os.environ.get(VECTORS_ENV) or None, os.environ.get(NAMES_ONLY_ENV) == "1")

    def names(self) -> dict[str, Path]:
        """The named vectors now in the directory: stem -> file."""
        if self.directory is None or not self.directory.is_dir():
            return {}
        files = sorted(p for p in self.directory.iterdir() if p.suffix in SUFFIXES and p.is_file())
        return {p.stem: p for p in files}

    def find(self, name: object) -> VectorRef:
        """The file a request's ``vector`` value names."""
        if not isinstance(name, str) or not name:
            raise SteeringSpecError(f"a vector is named by a string, got {name!r}")
        names = self.names()
        if name in names:
            return _ref(names[name])
        if self.names_only:
            known = ", ".join(names) or "none"
            raise SteeringSpecError(
                f"unknown vector {name!r}: this server has {known} (requests name vectors, not paths)"
            )
        path = Path(name)
        if path.suffix in SUFFIXES and path.is_file():
            return _ref(path)
        known = ", ".join(names) or "none registered"
        raise SteeringSpecError(f"unknown vector {name!r}: give a .safetensors or .gguf file, or a name ({known})")

    def load(self, ref: VectorRef) -> SteeringVector:
        """The vector of one file version; a file that does not load is refused with the reason."""
        with self._lock:
            if ref in self._loaded:
                return self._loaded[ref]
        try:
            path = Path(ref.path)
            vector = SteeringVector.from_gguf(path) if path.suffix == ".gguf" else SteeringVector.load(path)
        except Exception as error:  # any failure to read the file refuses it, with the reason
            raise SteeringSpecError(f"vector file {ref.path} cannot be loaded: {error}") from None
        with self._lock:
            self._loaded = {r: v for r, v in self._loaded.items() if r.path != ref.path}  # older versions go
            self._loaded[ref] = vector
        return vector

    def resolve(self, name: object) -> tuple[VectorRef, SteeringVector]:
        ref = self.find(name)
        return ref, self.load(ref)
