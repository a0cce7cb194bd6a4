"""How every benchmark measures: wall-clock timers (synchronised with the GPU), per-token decode and
prefill timers, statistics over interleaved trials, and the process's memory (peak RSS sampled while
something runs, the kernel's high-water mark, CUDA's peak allocation)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


# -- timers ---------------------------------------------------------------------------------------
def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer reads the work and not its launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds(run: Callable[..., Any], *args: Any, device: str = "cpu", **kwargs: Any) -> float:
    """Wall-clock seconds of ``run(*args, **kwargs)``."""
    sync(device)
    start = time.perf_counter()
    run(*args, **kwargs)
    sync(device)
    return time.perf_counter() - start


def decode_ms_per_token(model: Any, batch: int, new_tokens: int, device: str, **generate: Any) -> float:
    """ms per generated token, greedy from 8-token prompts; ``generate``: more arguments (a static cache)."""
    ids = torch.randint(3, 200, (batch, 8), device=device)

    def run() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                **generate,
            )

    return seconds(run, device=device) * 1000 / new_tokens


def prefill_ms_per_token(model: Any, length: int, device: str, batch: int = 1) -> float:
    """ms per prompt token of one forward over ``batch`` random prompts of ``length`` tokens."""
    ids = torch.randint(3, 200, (batch, length), device=device)

    def run() -> None:
        with torch.inference_mode():
            model(input_ids=ids)

    return seconds(run, device=device) * 1000 / length


# -- statistics over interleaved trials -----------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(values: Sequence[float], base: Sequence[float], of: str = "pairs") -> dict[str, float]:
    """The ratio to a baseline measured next to each value in the same trial: ``ratio`` is the median of the
    per-trial ratios (``of="pairs"``: slow drift of a shared machine cancels) or the ratio of the medians
    (``of="medians"``); ``ratio_min`` / ``ratio_max`` span the per-trial ratios."""
    paired = [v / b for v, b in zip(values, base, strict=False)]
    ratio = statistics.median(paired) if of == "pairs" else statistics.median(values) / statistics.median(base)
    return {"ratio": ratio, "ratio_min": min(paired), "ratio_max": max(paired)}


# -- memory ---------------------------------------------------------------------------------------
@dataclass
class PeakRSS:
    """The process's resident memory before a block and its peak during it (bytes), sampled by a thread."""

    before: int = 0
    peak: int = 0

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / 2**20


@contextmanager
def peak_rss(interval_s: float = 0.005) -> Iterator[PeakRSS]:
    """Sample this process's RSS every ``interval_s`` while the block runs; the result fills in as it goes
    and holds the peak (including one last reading) when the block ends."""
    import psutil

    process = psutil.Process()
    result = PeakRSS(process.memory_info().rss, process.memory_info().rss)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            result.peak = max(result.peak, process.memory_info().rss)
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result.peak = max(result.peak, process.memory_info().rss)


def process_peak_rss() -> str | None:
    """The kernel's high-water mark of this process's RSS (``VmHWM``, e.g. "812345 kB"); None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM"))
    return line.split(":", 1)[1].strip()


def cuda_peak_bytes() -> int | None:
    """CUDA's peak allocated bytes since the last reset; None without CUDA."""
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
