"""The ``steerable`` command line: ``info``, ``train``, ``generate``, ``sweep``, ``diagnose`` and ``bench``."""

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
    from steerable.testing import smollm2

    if name is None:
        return smollm2()
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:  # batches of prompts are padded
        tokenizer.pad_token = tokenizer.eos_token
    return SteerableModel.from_pretrained(name).eval(), tokenizer


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers takes comma-separated integers, got {text!r}") from None


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers (write {option}=-2,0,2), got {text!r}") from None


def _read_index(text: str) -> int | slice | str:
    """``-1`` (a token), ``5:`` or ``-3:-1`` (a span, averaged), or a chat role (``assistant``)."""
    from steerable.chat_roles import ROLES

    if text in ROLES:
        return text
    try:
        if ":" in text:
            start, stop = (int(x) if x else None for x in text.split(":", 1))
            return slice(start, stop)
        return int(text)
    except ValueError:
        raise ValueError(
            f"--read-token-index takes a token index (-1), a span (5: or -3:-1) or a role ({', '.join(ROLES)}), "
            f"got {text!r}"
        ) from None


def _pair_file(args: argparse.Namespace, tokenizer: object) -> object:
    from steerable.research.pair_files import load_pair_file

    balance = None if args.balance == "none" else args.balance
    return load_pair_file(args.data, tokenizer, args.chat, balance, args.max_pairs)


def train(args: argparse.Namespace) -> None:
    from steerable.research.datasets import sentiment_pairs, sentiment_preferences
    from steerable.train.extraction import train_steering_vector
    from steerable.train.learned import Completion, Preference, optimize_steering_vector
    from steerable.train.pairs import ContrastivePair

    model, tokenizer = _model(args.model)
    layers = _layers(args.layers) or [6]
    learned = args.method in ("bipo", "likelihood")
    if args.data == "sentiment":
        preferences = sentiment_preferences(tokenizer)[: args.max_pairs]
        pairs: list[ContrastivePair] = sentiment_pairs(tokenizer)[: args.max_pairs]
    else:
        loaded = _pair_file(args, tokenizer)
        pairs, preferences = loaded.pairs, loaded.preferences  # type: ignore[attr-defined]
        if loaded.items is not None:  # type: ignore[attr-defined]
            from steerable.research.ab import letter_counts

            print(f"{len(pairs)} A/B pairs; matching letters {letter_counts(loaded.items)}")  # type: ignore[attr-defined]
    if learned:
        data: list[Preference] | list[Completion] = preferences
        if args.method == "likelihood":
            data = [Completion(p.prompt, p.chosen) for p in preferences]
        vector = optimize_steering_vector(
            model, tokenizer, data, layers, args.method, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size
        )
    else:
        read = _read_index(args.read_token_index)
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
    vector.save(args.out)
    print(f"saved {vector} to {args.out}")


def _prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt`` (repeatable) and/or ``--prompts-file``: JSON (strings or {"question": ...}), JSONL,
    or text with one prompt per line."""
    import json

    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".json", ".jsonl"):
            try:
                data = (
                    json.loads(text)
                    if path.suffix.lower() == ".json"
                    else [json.loads(x) for x in text.splitlines() if x.strip()]
                )
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON: {error}") from error
            for number, entry in enumerate(data if isinstance(data, list) else [data]):
                found = (
                    entry
                    if isinstance(entry, str)
                    else entry.get("question", entry.get("prompt"))
                    if isinstance(entry, dict)
                    else None
                )
                if not isinstance(found, str):
                    raise ValueError(f"{path}: entry {number} is neither a string nor has a 'question' or 'prompt'")
                prompts.append(found)
        else:
            prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give a prompt: --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts[: args.max_prompts] if args.max_prompts else prompts


def generate(args: argparse.Namespace) -> None:
    import shutil
    import textwrap
    from itertools import zip_longest

    import torch

    from steerable.chat_roles import chat_prompt

    model, tokenizer = _model(args.model)
    vector = load_any(args.vector)
    layers = _layers(args.layers)
    if layers is not None:
        vector = vector.select(layers)
    multipliers = _numbers(args.multipliers, "--multipliers")
    prompts = _prompts(args)
    texts = [chat_prompt(tokenizer, p) if args.chat else p for p in prompts for _ in multipliers]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    per_row = torch.tensor(multipliers * len(prompts))  # one batched run: each row its own multiplier
    with torch.inference_mode(), model.steer(vector, per_row):
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    replies = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    width = max(24, (shutil.get_terminal_size((160, 24)).columns - 3 * (len(multipliers) - 1)) // len(multipliers))
    for k, prompt in enumerate(prompts):
        print(f"== {' '.join(prompt.split())[:200]}")
        columns = [
            [f"x{m:+g}" + (" (unsteered)" if m == 0 else "")]
            + textwrap.wrap(" ".join(replies[k * len(multipliers) + j].split()), width)
            for j, m in enumerate(multipliers)
        ]
        for line in zip_longest(*columns, fillvalue=""):
            print(" | ".join(cell.ljust(width) for cell in line).rstrip())
        print()


def sweep(args: argparse.Namespace) -> None:
    import json

    from steerable.research.ab import ab_pairs, load_ab_dataset
    from steerable.research.evaluation import open_ended
    from steerable.research.sweep import (
        plot_behaviour_vs_fluency,
        plot_sweep,
        summarize_generations,
        sweep_ab,
        write_table,
    )
    from steerable.train.extraction import train_steering_vector

    multipliers = _numbers(args.multipliers, "--multipliers")
    layers = _layers(args.layers)
    model, tokenizer = _model(args.model)
    items = load_ab_dataset(args.data)
    chat = args.chat
    balance = None if args.balance == "none" else args.balance
    if args.vector:
        vector = load_any(args.vector)
    else:  # train on --train-data, or on the first half of --data and evaluate on the second half
        train_items = load_ab_dataset(args.train_data) if args.train_data else items[: len(items) // 2]
        items = items if args.train_data else items[len(items) // 2 :]
        if not train_items or not items:
            raise ValueError("need at least 2 items to split --data into training and evaluation halves")
        vector = train_steering_vector(
            model,
            tokenizer,
            ab_pairs(tokenizer, train_items, chat, balance),
            layers=layers or [6],
            show_progress=True,
            description=f"mean vector, A/B pairs balance={args.balance}",
        )
    behaviour = args.behaviour or Path(args.data).parent.name
    result = sweep_ab(model, tokenizer, items, vector, multipliers, layers, chat, behaviour=behaviour)
    out = Path(args.out)
    paths = write_table(result, out / "sweep") + plot_sweep(result, out / "sweep", fixed_axis=args.fixed_axis)
    paths += plot_sweep(result, out / "steerability", metric="steerability")[:1]
    best = result.best_layer()
    for row in result.rows:
        print(
            f"layer {row['layer']:>3}  x{row['multiplier']:+g}  p(matching) {row['p_matching']:.3f} "
            f"[{row['p_matching_low']:.3f}, {row['p_matching_high']:.3f}]"
        )
    print(f"unsteered p(matching) {result.unsteered_mean:.3f}; most steerable layer: {best}")
    open_path = Path(args.open_ended) if args.open_ended else Path(args.data).with_name("test_dataset_open_ended.json")
    if args.samples and open_path.exists():
        prompts = [entry["question"] for entry in json.loads(open_path.read_text())[: args.samples]]
        samples = open_ended(
            model, tokenizer, prompts, vector.select(best), multipliers, max_new_tokens=args.max_new_tokens, chat=chat
        )
        (out / "samples.json").write_text(json.dumps([s.__dict__ for s in samples], indent=1))
        paths += write_table(summarize_generations(samples), out / "samples_summary")
        paths.append(
            plot_behaviour_vs_fluency(samples, out / "samples_tradeoff.png", result.title, "mean VADER compound")
        )
        print(f"open-ended samples ({len(prompts)} prompts from {open_path.name}, judged by VADER) at layer {best}")
    elif args.samples:
        print(f"no open-ended prompts at {open_path} (give --open-ended FILE): no samples written")
    print(f"wrote {', '.join(str(p) for p in paths)}")


def diagnose(args: argparse.Namespace) -> None:
    import json
    import warnings

    from steerable.research.ab import LetterImbalanceWarning
    from steerable.research.diagnostics import diagnose as run

    model, tokenizer = _model(args.model)
    vector = load_any(args.vector)
    with warnings.catch_warnings():  # diagnose reads A/B items in both answer orders: balance is moot
        warnings.simplefilter("ignore", LetterImbalanceWarning)
        loaded = _pair_file(args, tokenizer)
    data = loaded.items if loaded.items is not None else loaded.pairs  # type: ignore[attr-defined]
    diagnosis = run(model, tokenizer, vector, data, _layers(args.layers), args.chat, _read_index(args.read_token_index))
    print(diagnosis.report())
    out = Path(args.out)
    paths = diagnosis.plots(out, title=f"{Path(args.vector).name} on {Path(args.data).name}")
    (out / "diagnosis.json").write_text(json.dumps(diagnosis.rows(), indent=1))
    print(f"wrote {', '.join(str(p) for p in [*paths, out / 'diagnosis.json'])}")


def _data_options(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--data", required=data_help.startswith("(required)"), default=None, help=data_help)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="format with the chat template")
    p.add_argument(
        "--read-token-index", default="-1", help="where to read: -1, a span like 5: or -3:-1, or a role (assistant)"
    )
    p.add_argument("--max-pairs", type=int, default=None, help="use the first N pairs (A/B items) of the file")
    p.add_argument(
        "--balance",
        choices=["none", "subsample", "swap"],
        default="none",
        help="A/B files: equal counts of each matching letter (subsample), or each question in both orders (swap)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="steerable", description="Steering vectors for Hugging Face models.")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("info", help="show what a vector file (.safetensors or .gguf) holds")
    p.add_argument("file")
    p.set_defaults(run=info)
    p = commands.add_parser("train", help="train a vector from contrastive pairs and save it")
    p.add_argument("--model", default=None, help="model path or name (default: SmolLM2-135M-Instruct, offline)")
    _data_options(p, "'sentiment' (shipped), a CAA A/B JSON file, or JSON/JSONL/CSV rows {prompt?, positive, negative}")
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
    p.set_defaults(run=train)
    p = commands.add_parser("generate", help="replies at several multipliers, side by side, in one batched run")
    p.add_argument("--model", default=None, help="model path or name (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--vector", required=True, help="a .safetensors or .gguf vector file")
    p.add_argument("--multipliers", "--multiplier", default="0,3", help="comma-separated; write --multipliers=-4,0,4")
    p.add_argument("--layers", default=None, help="steer only these of the file's layers (comma-separated)")
    p.add_argument("--prompt", action="append", help="a user prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="JSON (strings or {question}), JSONL, or one prompt per line")
    p.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="format with the chat template")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(run=generate)
    p = commands.add_parser("sweep", help="A/B behaviour over multipliers and layers: table, plots, samples")
    p.add_argument("--model", default=None, help="model path or name (default: SmolLM2-135M-Instruct, offline)")
    p.add_argument("--data", required=True, help="A/B JSON file (CAA format) to evaluate on")
    p.add_argument("--vector", default=None, help="a vector file; if absent, one is trained with 'mean'")
    p.add_argument("--train-data", default=None, help="A/B JSON to train on (default: first half of --data)")
    p.add_argument(
        "--balance", choices=["none", "subsample", "swap"], default="swap", help="letter balance for training"
    )
    p.add_argument("--layers", default=None, help="comma-separated layers (default: the vector's)")
    p.add_argument("--multipliers", default="-2,-1,0,1,2", help="comma-separated; write --multipliers=-2,0,2")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help="format with the chat template")
    p.add_argument("--behaviour", default=None, help="the behaviour's name for titles (default: the data's folder)")
    p.add_argument("--fixed-axis", action="store_true", help="p(matching) on a fixed 0-1 axis")
    p.add_argument(
        "--open-ended", default=None, help="open-ended prompts (default: test_dataset_open_ended.json beside --data)"
    )
    p.add_argument("--samples", type=int, default=4, help="open-ended prompts to sample (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="length of the sample generations")
    p.add_argument("--out", default="sweep_results")
    p.set_defaults(run=sweep)
    p = commands.add_parser(
        "diagnose", help="does a vector separate the behaviour, or the answer letter? report, plots"
    )
    p.add_argument("vector", help="a .safetensors or .gguf vector file")
    p.add_argument("--model", default=None, help="model path or name (default: SmolLM2-135M-Instruct, offline)")
    _data_options(
        p, "(required) held-out data: a CAA A/B JSON file, or JSON/JSONL/CSV rows {prompt?, positive, negative}"
    )
    p.add_argument("--layers", default=None, help="comma-separated layers (default: the vector's)")
    p.add_argument("--out", default="diagnosis")
    p.set_defaults(run=diagnose)
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
    if argv[:1] == ["serve"]:  # vLLM's OpenAI-compatible server with the steering plugin; its flags pass through
        from steerable.serving.server import main as serve

        return serve(argv[1:])
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
