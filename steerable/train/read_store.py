"""Where per-pair reads are kept while training with a method that needs all of them (``pca_*``,
``logistic``, or ``extract_activations``): in memory, on the CPU, or appended to memory-mapped files
in a directory (``offload_dir``), so that only the pages the aggregator touches are in memory. Only the
read positions are kept, never whole sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


class ReadStore:
    """Per layer, positive and negative reads ``[n, d]`` with each pair's global index."""

    def __init__(self, layers: list[int], directory: str | Path | None = None) -> None:
        self.layers = layers
        self.directory = Path(directory) if directory is not None else None
        self.chunks: dict[int, list[Tensor]] = {layer: [] for layer in layers}  # each [2, k, d]
        self.indices: list[Tensor] = []
        self.width: int | None = None
        self.count = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for layer in layers:
                for kind in ("positive", "negative"):
                    self._path(layer, kind).write_bytes(b"")

    def _path(self, layer: int, kind: str) -> Path:
        assert self.directory is not None
        return self.directory / f"layer{layer}_{kind}.f32"

    def append(self, indices: Int[Tensor, " k"], reads: dict[int, Float[Tensor, "2 k d"]]) -> None:
        """Reads of ``k`` pairs (positive first) in the order of ``indices``."""
        self.indices.append(indices.cpu())
        self.count += int(indices.shape[0])
        for layer, read in reads.items():
            read = read.detach().float().cpu()
            self.width = int(read.shape[-1])
            if self.directory is None:
                self.chunks[layer].append(read)
                continue
            for kind, part in (("positive", read[0]), ("negative", read[1])):
                with self._path(layer, kind).open("ab") as handle:
                    handle.write(part.contiguous().numpy().tobytes())

    def pair_indices(self) -> Int[Tensor, " n"]:
        return torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long)

    def reads(self, layer: int) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n d"]]:
        """(positive, negative) of ``layer``, in the order pairs were appended."""
        if self.directory is None:
            if not self.chunks[layer]:
                empty = torch.zeros(0, self.width or 0)
                return empty, empty
            both = torch.cat(self.chunks[layer], dim=1)
            return both[0], both[1]
        width = self.width or 0
        out = []
        for kind in ("positive", "negative"):
            if self.count == 0:
                out.append(torch.zeros(0, width))
                continue
            mapped = np.memmap(self._path(layer, kind), dtype=np.float32, mode="c", shape=(self.count, width))
            out.append(torch.from_numpy(mapped))
        return out[0], out[1]
