"""The ``steerable`` command line: ``info``, ``train``, ``generate``, ``sweep`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steerable.vectors import SteeringVector


def load_any(path: str) -> SteeringVector:
    """A vector from a ``.gguf`` control vector or a steerable ``.safetensors`` file."""
    if Path(path).suffix.lower() == ".gguf":
        return SteeringVector.from_gguf(path)
    return SteeringVector.load(path)


def info(args: argparse.Namespace) -> None:
    vector = load_any(args.file)
    kind = "GGUF control vector" if Path(args.file).suffix.lower() == ".gguf" else "steerable safetensors"
    print(f"file:        {args.file} ({kind})")
    print(f"site:        {vector.site}")
    print(f"layers:      {vector.layers}")
    print(f"hidden size: {vector.hidden_size}" + (f", {vector.rows} rows" if vector.rows else ""))
    print(f"dtype:       {str(vector[vector.layers[0]].dtype).removeprefix('torch.')}")
    for key in ("model_type", "model_name", "method", "description"):
        value = getattr(vector, key)
        if value:
            print(f"{key + ':':<13}{value}")
    for layer, tensor in vector.items():
        print(f"  layer {layer:>3}: norm {float(tensor.float().norm()):.4f}")


def _model(name: str | None):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from steerable.model import SteerableModel
    from steerable.offline import smollm2

    if name is None:
        return smollm2()
    return SteerableModel.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)


def train(args: argparse.Namespace) -> None:
    import json

    from steerable.datasets import sentiment_pairs, sentiment_preferences
    from steerable.learned import Completion, Preference, optimize_steering_vector
    from steerable.training import ContrastivePair, train_steering_vector

    model, tokenizer = _model(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    learned = args.method in ("bipo", "likelihood")
    if args.data == "sentiment":
        preferences = sentiment_preferences(tokenizer)
        pairs: list[ContrastivePair | tuple[str, str]] = list(sentiment_pairs(tokenizer))
    else:
        items = json.loads(Path(args.data).read_text())
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and {"positive", "negative"} <= i.keys() for i in items
        ):
            raise ValueError(
                f"{args.data}: expected a JSON list of {{'positive': ..., 'negative': ...}} objects "
                "(with 'prompt' too for bipo and likelihood)"
            )
        preferences = [Preference(i.get("prompt", ""), i["positive"], i["negative"]) for i in items]
        pairs = [(i.get("prompt", "") + i["positive"], i.get("prompt", "") + i["negative"]) for i in items]
    if learned:
        data: list[Preference] | list[Completion] = preferences
        if args.method == "likelihood":
            data = [Completion(p.prompt, p.chosen) for p in preferences]
        vector = optimize_steering_vector(
            model, tokenizer, data, layers, args.method, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size
        )
    else:
        vector = train_steering_vector(
            model, tokenizer, pairs, layers=layers, method=args.method, batch_size=args.batch_size
        )
    vector.save(args.out)
    print(f"saved {vector} to {args.out}")


def generate(args: argparse.Namespace) -> None:
    import torch

    from steerable.datasets import chat_prompt

    model, tokenizer = _model(args.model)
    vector = load_any(args.vector)
    encoded = tokenizer([chat_prompt(tokenizer, args.prompt)], return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    outputs = []
    for multiplier in (0.0, args.multiplier):
        with torch.inference_mode(), model.steer(vector, multiplier):
            out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False)
        outputs.append(tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    print(f"unsteered:      {' '.join(outputs[0].split())}")
    print(f"steered x{args.multiplier:+g}: {' '.join(outputs[1].split())}")


def sweep(args: argparse.Namespace) -> None:
    import json

    from steerable.evaluation import ab_pairs, load_ab_dataset, open_ended
    from steerable.sweep import plot_sweep, sweep_ab, write_table
    from steerable.training import train_steering_vector

    multipliers = [float(m) for m in args.multipliers.split(",")]
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    model, tokenizer = _model(args.model)
    items = load_ab_dataset(args.data)
    chat = not args.no_chat
    if args.vector:
        vector = load_any(args.vector)
    else:  # train on --train-data, or on the first half of --data and evaluate on the second half
        train_items = load_ab_dataset(args.train_data) if args.train_data else items[: len(items) // 2]
        items = items if args.train_data else items[len(items) // 2 :]
        if not train_items or not items:
            raise ValueError("need at least 2 items to split --data into training and evaluation halves")
        vector = train_steering_vector(
            model, tokenizer, ab_pairs(tokenizer, train_items, chat), layers=layers or [6], show_progress=True
        )
    rows = sweep_ab(model, tokenizer, items, vector, multipliers, layers, chat, show_progress=True)
    out = Path(args.out)
    paths = write_table(rows, out / "sweep") + plot_sweep(rows, out / "sweep")
    best = max(rows, key=lambda r: r["steerability"])["layer"]
    best_vector = SteeringVector({best: vector[best]}, site=vector.site)
    samples = open_ended(
        model,
        tokenizer,
        [i.question for i in items[:2]],
        best_vector,
        multipliers,
        judge=lambda text: float(len(text.split())),
        max_new_tokens=args.max_new_tokens,
        chat=chat,
    )
    (out / "samples.json").write_text(json.dumps([s.__dict__ for s in samples], indent=1))
    for row in rows:
        print(f"layer {row['layer']:>3}  x{row['multiplier']:+g}  p(matching) {row['p_matching']:.3f}")
    print(f"most steerable layer: {best}; wrote {', '.join(str(p) for p in paths)}, {out / 'samples.json'}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="steerable", description="Steering vectors for Hugging Face models.")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("info", help="show what a vector file (.safetensors or .gguf) holds")
    p.add_argument("file")
    p.set_defaults(run=info)
    p = commands.add_parser("train", help="train a vector from contrastive pairs and save it")
    p.add_argument("--model", default=None, help="model path or name (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--data", default="sentiment", help="'sentiment' (shipped) or a JSON list of {positive, negative}")
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
    p.add_argument("--out", default="vector.safetensors")
    p.set_defaults(run=train)
    p = commands.add_parser("generate", help="unsteered and steered replies to one prompt")
    p.add_argument("--model", default=None, help="model path or name (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--vector", required=True, help="a .safetensors or .gguf vector file")
    p.add_argument("--multiplier", type=float, default=3.0)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(run=generate)
    p = commands.add_parser("sweep", help="A/B behaviour over multipliers and layers: table, plots, samples")
    p.add_argument("--model", default=None, help="model path or name (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--data", required=True, help="A/B JSON file (CAA format) to evaluate on")
    p.add_argument("--vector", default=None, help="a vector file; if absent, one is trained with 'mean'")
    p.add_argument("--train-data", default=None, help="A/B JSON to train on (default: first half of --data)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: the vector's)")
    p.add_argument("--multipliers", default="-2,-1,0,1,2", help="comma-separated; write --multipliers=-2,0,2")
    p.add_argument("--no-chat", action="store_true", help="plain 'Answer: (' prompts, no chat template")
    p.add_argument("--max-new-tokens", type=int, default=30, help="length of the sample generations")
    p.add_argument("--out", default="sweep_results")
    p.set_defaults(run=sweep)
    p = commands.add_parser(
        "bench", help="the overhead benchmark (all its options: steerable bench --help)", add_help=False
    )
    p.add_argument("options", nargs=argparse.REMAINDER)
    p.set_defaults(run=None)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: every option passes through
        try:
            from benchmarks.overhead import main as bench
        except ImportError:
            print(
                "steerable bench: error: the benchmarks live in the repository, not the installed package; "
                "run this from a checkout of steerable (python -m benchmarks.overhead)",
                file=sys.stderr,
            )
            return 2
        return bench(argv[1:])
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, OSError, IndexError, KeyError, NotImplementedError, UnicodeError) as error:
        # a user error (a bad file, argument or value): one line naming it, never a traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"steerable {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
