"""What the commands share: loading vectors and models, parsing option values, checking outputs
before any work, and printing text that came from files or a model without letting it drive the
terminal."""

from __future__ import annotations

import argparse
import os
import unicodedata
from pathlib import Path
from typing import Any

from steerable.vectors import SteeringVector

MODEL_HELP = "model path or name (default: SmolLM2-135M-Instruct, offline)"
CHAT_HELP = "format with the chat template"


def load_any(path: str) -> SteeringVector:
    """A vector from a ``.gguf`` control vector or a steerable ``.safetensors`` file."""
    if Path(path).suffix.lower() == ".gguf":
        return SteeringVector.from_gguf(path)
    return SteeringVector.load(path)


def load_model(name: str | None) -> tuple[Any, Any]:
    """(model, tokenizer): ``name`` from the hub or a path, or SmolLM2-135M-Instruct offline. The
    tokenizer is the command's own, so giving it a pad token changes nobody else's."""
    from transformers import AutoTokenizer

    from steerable.model import SteerableModel
    from steerable.testing import smollm2

    if name is None:
        return smollm2()
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:  # batches of prompts are padded
        tokenizer.pad_token = tokenizer.eos_token
    return SteerableModel.from_pretrained(name).eval(), tokenizer


def add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)


def add_chat_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True, help=CHAT_HELP)


def add_data_options(p: argparse.ArgumentParser, data_help: str) -> None:
    """``--data``, ``--chat``, ``--read-token-index``, ``--max-pairs`` and ``--balance`` (train, diagnose)."""
    p.add_argument("--data", required=data_help.startswith("(required)"), default=None, help=data_help)
    add_chat_option(p)
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


def layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers takes comma-separated integers, got {text!r}") from None


def numbers(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers (write {option}=-2,0,2), got {text!r}") from None


def read_index(text: str) -> int | slice | str:
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


def pair_file(args: argparse.Namespace, tokenizer: object) -> Any:
    from steerable.research.pair_files import load_pair_file

    balance = None if args.balance == "none" else args.balance
    return load_pair_file(args.data, tokenizer, args.chat, balance, args.max_pairs)


#: Count options and their least value: a negative count would slice from the end (``[:-1]``).
COUNTS = {"max_pairs": 1, "max_prompts": 1, "samples": 0, "max_new_tokens": 1, "batch_size": 1, "epochs": 1}


def check_counts(args: argparse.Namespace) -> None:
    """Every count option the command has is at least its least value."""
    for name, least in COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")


def output_file(path: str, option: str = "--out") -> Path:
    """``path`` checked as a file to write, before any work: not a directory, in a directory that exists
    and can be written."""
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"{option} {out} is a directory: give a file path such as {out / 'vector.safetensors'}")
    parent = out.parent
    if not parent.exists():
        raise FileNotFoundError(
            f"{option} {out}: the directory {parent} does not exist: create it or give another path"
        )
    if not parent.is_dir():
        raise NotADirectoryError(f"{option} {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{option} {out}: cannot write in {parent}: give a path in a writable directory")
    return out


def output_directory(path: str, option: str = "--out") -> Path:
    """``path`` checked as a directory to write into (made when missing), before any work."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{option} {out} is a file: give a directory (it is made when missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{option} {out}: {existing} is a file, so {out} cannot be made")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{option} {out}: cannot write in {existing}: give a path in a writable directory")
    return out


#: Format characters that belong inside ordinary text: the joiners of emoji sequences and Indic words.
_JOINERS = {"\u200c", "\u200d"}
#: Control (C0, DEL, C1), format (bidi overrides...), surrogate and line/paragraph separator characters.
_ESCAPED = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def printable(text: object) -> str:
    """``text`` safe to print to a terminal: control characters written as escapes the way ``repr``
    writes them (``\\x1b``, ``\\x07``, ``\\r``, ``\\n``, ``\\x9b``, ``\\u202e``), so a file cannot clear the
    screen, retitle the terminal or forge lines; ordinary unicode (accents, CJK, emoji) stays."""
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _ESCAPED and c not in _JOINERS else c
        for c in str(text)
    )


def say(text: object = "") -> None:
    """Print ``text`` line by line, each line made ``printable``."""
    for line in str(text).split("\n"):
        print(printable(line))
