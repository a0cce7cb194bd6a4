#!/usr/bin/env bash
# The GPU benchmark, end to end in under 10 minutes: bf16 decode at batch 1/8/64, eager and compiled with
# CUDA graphs, steerable vs vanilla vs forward hooks, peak memory. Writes benchmarks/results/gpu.{md,json}.
# Needs a Python with torch (CUDA) and this checkout's requirements: the project's .venv if there is one,
# else $PYTHON, else python3. Without a GPU it says so and exits 0; `--dry-run` runs the path on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m benchmarks.gpu "$@"
