"""``steerable diagnose VECTOR --data FILE``: does a vector separate the behaviour, or the answer
letter? A report, plots and ``diagnosis.json`` (strict JSON: undefined AUCs are null)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steerable.cli import common


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "diagnose", help="does a vector separate the behaviour, or the answer letter? report, plots"
    )
    p.add_argument("vector", help="a .safetensors or .gguf vector file")
    common.add_model_option(p)
    common.add_data_options(
        p, "(required) held-out data: a CAA A/B JSON file, or JSON/JSONL/CSV rows {prompt?, positive, negative}"
    )
    p.add_argument("--layers", default=None, help="comma-separated layers (default: the vector's)")
    p.add_argument("--out", default="diagnosis")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import warnings

    from steerable.research.ab import LetterImbalanceWarning
    from steerable.research.diagnostics import diagnose
    from steerable.research.undefined import dumps

    out = common.output_directory(args.out)  # before the model loads and the reads run
    layers, read = common.layers(args.layers), common.read_index(args.read_token_index)
    vector = common.load_any(args.vector)
    model, tokenizer = common.load_model(args.model)
    with warnings.catch_warnings():  # diagnose reads A/B items in both answer orders: balance is moot
        warnings.simplefilter("ignore", LetterImbalanceWarning)
        loaded = common.pair_file(args, tokenizer)
    data = loaded.items if loaded.items is not None else loaded.pairs
    diagnosis = diagnose(model, tokenizer, vector, data, layers, args.chat, read)
    common.say(diagnosis.report())
    paths = diagnosis.plots(out, title=f"{Path(args.vector).name} on {Path(args.data).name}")
    (out / "diagnosis.json").write_text(dumps(diagnosis.rows()))
    common.say(f"wrote {', '.join(str(p) for p in [*paths, out / 'diagnosis.json'])}")
