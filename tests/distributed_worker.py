"""Run by each process of the 2-process gloo tests (tests/test_scaling.py): train on this rank's share
and save what every rank returns."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def pairs(n: int) -> list[tuple[str, str]]:
    return [(f"w{5 + k} w{20 + k % 7} w40", f"w{5 + k} w{20 + k % 7} w41 w{60 + k % 5}") for k in range(n)]


def train(rank: int, world: int, folder: str, n_pairs: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from steerable import Completion, SteerableModel, optimize_steering_vector, train_steering_vector
    from steerable.testing.tiny_models import tiny_model, tiny_tokenizer

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        model, tok = SteerableModel.wrap(tiny_model("llama")), tiny_tokenizer()
        out = {}
        for method in ("mean", "pca_diff", "logistic"):
            vector = train_steering_vector(model, tok, iter(pairs(n_pairs)), layers=[0, 2], method=method, batch_size=3)
            out[method] = {layer: vector[layer] for layer in vector.layers}
        data = [Completion(f"w{5 + k} w{6 + k}", f" w{30 + k} w{31 + k}") for k in range(8)]
        learned = optimize_steering_vector(model, tok, data, [1], "likelihood", steps=3, batch_size=4, lr=0.05)
        out["likelihood"] = {1: learned[1]}
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
