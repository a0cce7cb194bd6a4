"""Train a CAA vector on several processes: each reads its share of the pairs, every rank ends with
the vector a single process would have trained.

    torchrun --nproc_per_node 2 examples/train_distributed.py --data DIR --pairs 64 --out refusal.safetensors
    accelerate launch --num_processes 2 examples/train_distributed.py --data DIR --pairs 64 --out refusal.safetensors

DIR is the CAA A/B data folder (default ``$STEERABLE_CAA_DATA``); the pairs are the items of
``DIR/generate/refusal/generate_dataset.json``, read by ``steerable.research.ab`` and turned into
pairs by a generator as training consumes them. Both launchers set
the usual environment (RANK, WORLD_SIZE, MASTER_ADDR, ...); the script joins that process group
(gloo on CPU, NCCL on GPUs) and steerable does the rest.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from steerable import train_steering_vector
from steerable.research.ab import ab_pair, load_ab_dataset
from steerable.testing import smollm2
from steerable.train.pairs import ContrastivePair

DATA_ENV = "STEERABLE_CAA_DATA"
REFUSAL = Path("generate") / "refusal" / "generate_dataset.json"


def refusal_file(data: Path | None) -> Path:
    """The CAA refusal file under ``data``; a missing folder or file exits with one line saying what to pass."""
    if data is None:
        raise SystemExit(f"train_distributed: no CAA data folder: pass --data DIR or set {DATA_ENV}")
    if not (data / REFUSAL).exists():
        raise SystemExit(f"train_distributed: {data / REFUSAL} does not exist: pass --data DIR or set {DATA_ENV}")
    return data / REFUSAL


def refusal_pairs(tokenizer: object, path: Path, limit: int) -> Iterator[ContrastivePair]:
    """Pairs made one by one as training reads them, as a real pipeline would stream them."""
    for item in load_ab_dataset(path)[:limit]:
        yield ab_pair(tokenizer, item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        default=os.environ.get(DATA_ENV) or None,
        help=f"folder of the CAA A/B data (holding generate/); default ${DATA_ENV}",
    )
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--layers", default="6,9,12")
    parser.add_argument("--method", default="mean")
    parser.add_argument("--out", default="refusal.safetensors")
    args = parser.parse_args()
    path = refusal_file(args.data)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    model, tokenizer = smollm2()
    layers = [int(x) for x in args.layers.split(",")]
    vector = train_steering_vector(
        model, tokenizer, refusal_pairs(tokenizer, path, args.pairs), layers=layers, method=args.method
    )
    if rank == 0:
        vector.save(args.out)
        print(f"{world} processes trained {vector}; saved to {args.out}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
