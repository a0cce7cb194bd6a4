"""``steerable train``: a vector from contrastive pairs (aggregated) or preferences (learned), saved."""

from __future__ import annotations

import argparse
from typing import Any

from steerable.cli import common


def add_parser(commands: Any) -> None:
    p = commands.add_parser("train", help="train a vector from contrastive pairs and save it")
    common.add_model_option(p)
    common.add_data_options(
        p, "'sentiment' (shipped), a CAA A/B JSON file, or JSON/JSONL/CSV rows {prompt?, positive, negative}"
    )
    p.set_defaults(data="sentiment")
    p.add_argument("--layers", default="6", help="comma-separated layer indices")
    p.add_argument(
        "--method",
        default="mean",
        choices=["mean", "pca_diff", "pca_center", "logistic", "bipo", "likelihood"],
        help="an aggregation of activations, or a learned vector: bipo (preferences), likelihood (positives)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (bipo, likelihood)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the data (bipo, likelihood)")
    p.add_argument("--description", default=None, help="a description stored in the file")
    p.add_argument("--out", default="vector.safetensors")
    p.set_defaults(run=run)


def _data(args: argparse.Namespace, tokenizer: Any) -> tuple[list[Any], list[Any]]:
    """(pairs, preferences) from the shipped sentiment data or ``--data``."""
    from steerable.research.datasets import sentiment_pairs, sentiment_preferences

    if args.data == "sentiment":
        return sentiment_pairs(tokenizer)[: args.max_pairs], sentiment_preferences(tokenizer)[: args.max_pairs]
    loaded = common.pair_file(args, tokenizer)
    if loaded.items is not None:
        from steerable.research.ab import letter_counts

        print(f"{len(loaded.pairs)} A/B pairs; matching letters {letter_counts(loaded.items)}")
    return loaded.pairs, loaded.preferences


def run(args: argparse.Namespace) -> None:
    from steerable.train.extraction import train_steering_vector
    from steerable.train.learned import Completion, Preference, optimize_steering_vector

    out = common.output_file(args.out)  # before the model loads and the training runs
    read = common.read_index(args.read_token_index)
    layers = common.layers(args.layers) or [6]
    model, tokenizer = common.load_model(args.model)
    pairs, preferences = _data(args, tokenizer)
    if args.method in ("bipo", "likelihood"):
        data: list[Preference] | list[Completion] = preferences
        if args.method == "likelihood":
            data = [Completion(p.prompt, p.chosen) for p in preferences]
        vector = optimize_steering_vector(
            model, tokenizer, data, layers, args.method, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size
        )
    else:
        vector = train_steering_vector(
            model,
            tokenizer,
            pairs,
            layers=layers,
            method=args.method,
            read_token_index=read,
            batch_size=args.batch_size,
            description=args.description,
        )
    if args.description:
        vector.description = args.description
    vector.save(out)
    print(common.printable(f"saved {vector} to {out}"))
