"""Train a CAA vector on several processes: each reads its share of the pairs, every rank ends with
the vector a single process would have trained.

    torchrun --nproc_per_node 2 examples/train_distributed.py --pairs 64 --out refusal.safetensors
    accelerate launch --num_processes 2 examples/train_distributed.py --pairs 64 --out refusal.safetensors

The pairs come from a generator over the CAA refusal file (never materialised). Both launchers set
the usual environment (RANK, WORLD_SIZE, MASTER_ADDR, ...); the script joins that process group
(gloo on CPU, NCCL on GPUs) and steerable does the rest.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from steerable import train_steering_vector
from steerable.research.ab import ABItem, ab_pair
from steerable.testing import smollm2

DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "caa" / "generate" / "refusal" / "generate_dataset.json"
)


def refusal_pairs(tokenizer: object, limit: int) -> Iterator:
    """Pairs read one by one, as a real pipeline would stream them."""
    for number, item in enumerate(json.loads(DATA.read_text())):
        if number == limit:
            return
        letters = item["answer_matching_behavior"][1], item["answer_not_matching_behavior"][1]
        yield ab_pair(tokenizer, ABItem(item["question"], *letters))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--layers", default="6,9,12")
    parser.add_argument("--method", default="mean")
    parser.add_argument("--out", default="refusal.safetensors")
    args = parser.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    model, tokenizer = smollm2()
    layers = [int(x) for x in args.layers.split(",")]
    vector = train_steering_vector(
        model, tokenizer, refusal_pairs(tokenizer, args.pairs), layers=layers, method=args.method
    )
    if rank == 0:
        vector.save(args.out)
        print(f"{world} processes trained {vector}; saved to {args.out}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
