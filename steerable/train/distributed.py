"""Training across processes on the engines users already run: ``torchrun`` / torch.distributed, or
accelerate (whose multi-process launch initialises torch.distributed). Nothing home-made: when a
default process group is initialised, every rank reads its own share of the pairs (pair ``i`` goes to
rank ``i % world_size``), and the results are combined exactly with the group's collectives:
``mean`` by an all-reduce of sums and counts, the other methods by gathering every rank's per-pair
reads and putting them back in the pairs' order, so every rank aggregates the very input a single
process would have. Without a process group (or with one process) nothing changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes); (0, 1) without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device_for(tensor: Tensor) -> torch.device:
    """The device a collective runs on for this backend (NCCL needs CUDA tensors, gloo takes CPU)."""
    import torch.distributed as dist

    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over all ranks (every rank gets the sum)."""
    import torch.distributed as dist

    reduced = tensor.detach().to(_device_for(tensor)).clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


def raise_together(error: BaseException | None) -> None:
    """Every rank raises if any rank failed (so none waits forever in a later collective): the failing
    rank its own error, the others a RuntimeError naming the first failing rank."""
    rank, world = rank_and_world()
    if world == 1:
        if error is not None:
            raise error
        return
    failed = all_reduce_sum(torch.tensor([1.0 if error is not None else 0.0, float(rank if error else world)]))
    if error is not None:
        raise error
    if failed[0] > 0:
        raise RuntimeError("another rank failed while reading its share of the pairs; see that rank's error")


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    import torch.distributed as dist

    _, world = rank_and_world()
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out
