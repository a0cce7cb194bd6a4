"""The ``vllm.general_plugins`` entry point: vLLM calls :func:`register` in every process it starts
(the one that takes requests, the engine core, each worker), so it only patches classes, idempotently.

Nothing is forked and no vLLM file is edited: the model runners' ``load_model`` makes the loaded model's
decoder layers steerable, ``_prepare_inputs`` writes each step's token slots first, the input
processor checks and resolves each request's steering, and the scheduler gives a conditional prompt
steering its whole prompt in one step (steerable.serving.whole_prompts). A request without steering
changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from steerable.serving.versions import check_vllm_version

_PATCHED = False


def register() -> None:
    global _PATCHED
    if _PATCHED:
        return
    check_vllm_version()
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _patch_runner(GPUModelRunner)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a CUDA build
        pass
    else:
        _patch_runner(CPUModelRunner)
    _patch_input_processor(InputProcessor)
    _patch_compile_hash()
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.sched.scheduler import Scheduler

    from steerable.serving.whole_prompts import patch_scheduler

    patch_scheduler(Scheduler, KVCacheManager)
    _PATCHED = True


def _patch_runner(cls: type) -> None:
    if "load_model" in cls.__dict__ and not getattr(cls.__dict__["load_model"], "_by_steerable", False):
        original_load = cls.__dict__["load_model"]

        @functools.wraps(original_load)
        def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
            from steerable.serving.worker import install

            result = original_load(self, *args, **kwargs)
            install(self)
            return result

        load_model._by_steerable = True  # type: ignore[attr-defined]
        cls.load_model = load_model  # type: ignore[attr-defined]
    if "_prepare_inputs" in cls.__dict__ and not getattr(cls.__dict__["_prepare_inputs"], "_by_steerable", False):
        original_prepare = cls.__dict__["_prepare_inputs"]

        @functools.wraps(original_prepare)
        def _prepare_inputs(self: Any, scheduler_output: Any, num_scheduled_tokens: Any, *args: Any, **kw: Any) -> Any:
            from steerable.serving import worker

            if worker.CONTROLLER is not None:
                worker.CONTROLLER.prepare(self, scheduler_output, num_scheduled_tokens)
            return original_prepare(self, scheduler_output, num_scheduled_tokens, *args, **kw)

        _prepare_inputs._by_steerable = True  # type: ignore[attr-defined]
        cls._prepare_inputs = _prepare_inputs  # type: ignore[attr-defined]


def _patch_input_processor(cls: type) -> None:
    original = cls.__dict__["process_inputs"]
    if getattr(original, "_by_steerable", False):
        return

    @functools.wraps(original)
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        from steerable.serving.frontend import frontend

        request = original(self, *args, **kwargs)
        frontend().admit(request, self.vllm_config, self.tokenizer)
        return request

    process_inputs._by_steerable = True  # type: ignore[attr-defined]
    cls.process_inputs = process_inputs  # type: ignore[attr-defined]


def _patch_compile_hash() -> None:
    """vLLM caches compiled graphs on disk by a hash of its config (and, for AOT artifacts, checks only the
    files the cached graph traced): a graph compiled without the plugin must never be loaded with it, nor
    one compiled by an older version of the steerable layers. So the plugin is a factor of the hash."""
    from vllm.config import VllmConfig

    original = VllmConfig.compute_hash
    if getattr(original, "_by_steerable", False):
        return
    layers_source = (Path(__file__).parent / "worker.py").read_bytes()
    mark = hashlib.sha256(b"steerable-vllm-plugin\n" + layers_source).hexdigest()

    @functools.wraps(original)
    def compute_hash(self: Any, *args: Any, **kwargs: Any) -> str:
        base = original(self, *args, **kwargs)
        return hashlib.sha256(f"{base}|{mark}".encode()).hexdigest()[: len(base)]

    compute_hash._by_steerable = True  # type: ignore[attr-defined]
    VllmConfig.compute_hash = compute_hash  # type: ignore[method-assign]
