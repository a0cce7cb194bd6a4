#!/usr/bin/env bash
# The GPU benchmark, end to end in under 10 minutes: bf16 decode at batch 1/8/64, eager and compiled with
# CUDA graphs, steerable vs vanilla vs forward hooks, peak memory. Writes benchmarks/results/gpu.{md,json}.
# Needs a Python with torch (CUDA) and this checkout's requirements: the project's .venv if there is one,
# else $PYTHON, else python3. Then the vLLM cells (below). Without a GPU it says so and exits 0; `--dry-run` runs the path on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -m benchmarks.gpu "$@"
# vLLM cells: the serving benchmark (SmolLM2 fp32, batches 16/64, 0/1/16 steerings vs plugin-free vLLM) in
# vLLM's default mode, which on a GPU is compiled with CUDA graphs (the plugin's branch-free path). Needs a
# Python with the CUDA vllm==0.32.0 and this checkout installed: $VLLM_PYTHON, else .venv-vllm.
vllm_python="${VLLM_PYTHON:-}"
if [ -z "$vllm_python" ] && [ -x .venv-vllm/bin/python ]; then vllm_python=.venv-vllm/bin/python; fi
if [ -n "$vllm_python" ] && "$vllm_python" -c "import vllm, torch; assert torch.cuda.is_available()" 2>/dev/null; then
  "$vllm_python" -m benchmarks.vllm_serving --trials 3 --name vllm_serving_gpu
else
  echo "vLLM cells: skipped (no Python with vLLM and a CUDA GPU; set VLLM_PYTHON)"
fi
