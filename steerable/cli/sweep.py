"""``steerable sweep``: A/B behaviour over multipliers and layers (trained on the fly unless a vector is
given): tables, plots with intervals, and open-ended samples at the most steerable layer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steerable.cli import common


def add_parser(commands: Any) -> None:
    p = commands.add_parser("sweep", help="A/B behaviour over multipliers and layers: table, plots, samples")
    common.add_model_option(p)
    p.add_argument("--data", required=True, help="A/B JSON file (CAA format) to evaluate on")
    p.add_argument("--vector", default=None, help="a vector file; if absent, one is trained with 'mean'")
    p.add_argument("--train-data", default=None, help="A/B JSON to train on (default: first half of --data)")
    p.add_argument(
        "--balance", choices=["none", "subsample", "swap"], default="swap", help="letter balance for training"
    )
    p.add_argument("--layers", default=None, help="comma-separated layers (default: the vector's)")
    p.add_argument("--multipliers", default="-2,-1,0,1,2", help="comma-separated; write --multipliers=-2,0,2")
    common.add_chat_option(p)
    p.add_argument("--behaviour", default=None, help="the behaviour's name for titles (default: the data's folder)")
    p.add_argument("--fixed-axis", action="store_true", help="p(matching) on a fixed 0-1 axis")
    p.add_argument(
        "--open-ended", default=None, help="open-ended prompts (default: test_dataset_open_ended.json beside --data)"
    )
    p.add_argument("--samples", type=int, default=4, help="open-ended prompts to sample (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="length of the sample generations")
    p.add_argument("--out", default="sweep_results")
    p.set_defaults(run=run)


def _multipliers(text: str) -> list[float]:
    multipliers = common.numbers(text, "--multipliers")
    if len(set(multipliers)) < 2:
        raise ValueError(
            f"--multipliers needs at least two different values (steerability is a slope over them), got {text!r}: "
            "write --multipliers=-1,0,1"
        )
    return multipliers


def _vector(args: argparse.Namespace, model: Any, tokenizer: Any, items: list[Any]) -> tuple[Any, list[Any]]:
    """(vector, evaluation items): ``--vector``, or one trained on ``--train-data`` or on the first half of
    ``--data`` (then evaluated on the second half)."""
    from steerable.research.ab import ab_pairs, load_ab_dataset
    from steerable.train.extraction import train_steering_vector

    if args.vector:
        return common.load_any(args.vector), items
    train_items = load_ab_dataset(args.train_data) if args.train_data else items[: len(items) // 2]
    items = items if args.train_data else items[len(items) // 2 :]
    if not train_items or not items:
        raise ValueError("need at least 2 items to split --data into training and evaluation halves")
    vector = train_steering_vector(
        model,
        tokenizer,
        ab_pairs(tokenizer, train_items, args.chat, None if args.balance == "none" else args.balance),
        layers=common.layers(args.layers) or [6],
        show_progress=True,
        description=f"mean vector, A/B pairs balance={args.balance}",
    )
    return vector, items


def run(args: argparse.Namespace) -> None:
    from steerable.research.ab import load_ab_dataset
    from steerable.research.sweep import plot_sweep, sweep_ab, write_table
    from steerable.research.undefined import shown

    multipliers = _multipliers(args.multipliers)
    layers = common.layers(args.layers)
    out = common.output_directory(args.out)  # before the model loads and the sweep runs
    items = load_ab_dataset(args.data)
    model, tokenizer = common.load_model(args.model)
    vector, items = _vector(args, model, tokenizer, items)
    behaviour = args.behaviour or Path(args.data).parent.name
    result = sweep_ab(model, tokenizer, items, vector, multipliers, layers, args.chat, behaviour=behaviour)
    paths = write_table(result, out / "sweep") + plot_sweep(result, out / "sweep", fixed_axis=args.fixed_axis)
    paths += plot_sweep(result, out / "steerability", metric="steerability")[:1]
    best = result.best_layer()
    for row in result.rows:
        print(
            f"layer {row['layer']:>3}  x{row['multiplier']:+g}  p(matching) {shown(row['p_matching'])} "
            f"[{shown(row['p_matching_low'])}, {shown(row['p_matching_high'])}]"
        )
    print(f"unsteered p(matching) {shown(result.unsteered_mean)}; most steerable layer: {best}")
    paths += _samples(args, model, tokenizer, vector.select(best), multipliers, result.title, out, best)
    common.say(f"wrote {', '.join(str(p) for p in paths)}")


def _samples(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    vector: Any,
    multipliers: list[float],
    title: str,
    out: Path,
    best: int,
) -> list[Path]:
    """Open-ended samples at the best layer, judged by VADER: their records, summary and trade-off plot."""
    from steerable.research.evaluation import open_ended
    from steerable.research.files import read_json
    from steerable.research.sweep import plot_behaviour_vs_fluency, summarize_generations, write_table
    from steerable.research.undefined import dumps

    open_path = Path(args.open_ended) if args.open_ended else Path(args.data).with_name("test_dataset_open_ended.json")
    if not args.samples:
        return []
    if not open_path.exists():
        common.say(f"no open-ended prompts at {open_path} (give --open-ended FILE): no samples written")
        return []
    entries = read_json(open_path)
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("question"), str) for e in entries
    ):
        raise ValueError(f'{open_path}: expected a JSON list of {{"question": ...}} entries')
    prompts = [entry["question"] for entry in entries[: args.samples]]
    samples = open_ended(
        model, tokenizer, prompts, vector, multipliers, max_new_tokens=args.max_new_tokens, chat=args.chat
    )
    (out / "samples.json").write_text(dumps([s.__dict__ for s in samples]))
    paths = write_table(summarize_generations(samples), out / "samples_summary")
    paths.append(plot_behaviour_vs_fluency(samples, out / "samples_tradeoff.png", title, "mean VADER compound"))
    common.say(f"open-ended samples ({len(prompts)} prompts from {open_path.name}, judged by VADER) at layer {best}")
    return paths
