"""What tests, benchmarks and demos share: tiny random models built from configs, the forward-hook
reference that steering is checked against, and real models available offline (SmolLM2 from PyPI)."""

from steerable.testing.smollm2 import cache_dir, smollm2, smollm2_path

__all__ = ["cache_dir", "smollm2", "smollm2_path"]
