"""``steerable info FILE``: what a vector file (.safetensors or .gguf) holds. Its metadata is the
file's, not ours: printed escaped, so a description cannot drive the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steerable.cli.common import load_any, printable


def add_parser(commands: Any) -> None:
    p = commands.add_parser("info", help="show what a vector file (.safetensors or .gguf) holds")
    p.add_argument("file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    vector = load_any(args.file)
    kind = "GGUF control vector" if Path(args.file).suffix.lower() == ".gguf" else "steerable safetensors"
    print(printable(f"file:        {args.file} ({kind})"))
    print(printable(f"site:        {vector.site}"))
    print(f"layers:      {vector.layers}")
    print(f"hidden size: {vector.hidden_size}" + (f", {vector.rows} rows" if vector.rows else ""))
    print(f"dtype:       {str(vector[vector.layers[0]].dtype).removeprefix('torch.')}")
    for key in ("model_type", "model_name", "method", "description"):
        value = getattr(vector, key)
        if value:
            print(f"{key + ':':<13}{printable(value)}")
    for layer, tensor in vector.items():
        print(f"  layer {layer:>3}: norm {float(tensor.float().norm()):.4f}")
