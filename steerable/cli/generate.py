"""``steerable generate``: replies at several multipliers, side by side, from one batched run (each
row its own multiplier). Prompts come from ``--prompt`` and ``--prompts-file``; prompts and replies
are printed escaped."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steerable.cli import common


def add_parser(commands: Any) -> None:
    p = commands.add_parser("generate", help="replies at several multipliers, side by side, in one batched run")
    common.add_model_option(p)
    p.add_argument("--vector", required=True, help="a .safetensors or .gguf vector file")
    p.add_argument("--multipliers", "--multiplier", default="0,3", help="comma-separated; write --multipliers=-4,0,4")
    p.add_argument("--layers", default=None, help="steer only these of the file's layers (comma-separated)")
    p.add_argument("--prompt", action="append", help="a user prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="JSON (strings or {question}), JSONL, or one prompt per line")
    p.add_argument("--max-prompts", type=int, default=None, help="use the first N prompts")
    common.add_chat_option(p)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(run=run)


def prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt`` (repeatable) and/or ``--prompts-file``: JSON (strings or {"question": ...}), JSONL,
    or text with one prompt per line."""
    from steerable.research.files import read_json, read_json_lines, read_text

    found = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            data = read_json(path) if suffix == ".json" else read_json_lines(path)
            for number, entry in enumerate(data if isinstance(data, list) else [data]):
                text = entry.get("question", entry.get("prompt")) if isinstance(entry, dict) else entry
                if not isinstance(text, str):
                    raise ValueError(f"{path}: entry {number} is neither a string nor has a 'question' or 'prompt'")
                found.append(text)
        else:
            found += [line for line in read_text(path).splitlines() if line.strip()]
    if not found:
        raise ValueError("give a prompt: --prompt TEXT (repeatable) or --prompts-file FILE")
    return found[: args.max_prompts] if args.max_prompts else found


def run(args: argparse.Namespace) -> None:
    import torch

    from steerable.chat_roles import chat_prompt
    from steerable.devices import input_device
    from steerable.train.batching import tokenize

    multipliers = common.numbers(args.multipliers, "--multipliers")
    texts = prompts(args)
    model, tokenizer = common.load_model(args.model)
    vector = common.load_any(args.vector)
    layers = common.layers(args.layers)
    if layers is not None:
        vector = vector.select(layers)
    rows = [chat_prompt(tokenizer, p) if args.chat else p for p in texts for _ in multipliers]
    # left-padded for generation, chosen for this batch: the tokenizer's own padding_side stays as it was
    inputs = tokenize(tokenizer, rows, padding_side="left").to(input_device(model)).inputs(with_positions=False)
    per_row = torch.tensor(multipliers * len(texts))  # one batched run: each row its own multiplier
    with torch.inference_mode(), model.steer(vector, per_row):
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    replies = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    show(texts, multipliers, replies)


def show(texts: list[str], multipliers: list[float], replies: list[str]) -> None:
    """Each prompt, then its replies in columns, one per multiplier (escaped, then wrapped)."""
    import shutil
    import textwrap
    from itertools import zip_longest

    width = max(24, (shutil.get_terminal_size((160, 24)).columns - 3 * (len(multipliers) - 1)) // len(multipliers))
    for k, prompt in enumerate(texts):
        print(f"== {common.printable(' '.join(prompt.split()))[:200]}")
        columns = [
            [f"x{m:+g}" + (" (unsteered)" if m == 0 else "")]
            + textwrap.wrap(common.printable(" ".join(replies[k * len(multipliers) + j].split())), width)
            for j, m in enumerate(multipliers)
        ]
        for line in zip_longest(*columns, fillvalue=""):
            print(" | ".join(cell.ljust(width) for cell in line).rstrip())
        print()
