#!/usr/bin/env bash
# One-call GPU benchmark for a lent accelerator (no internet, no TensorFlow there).
# Prepare here once:  pip download --no-deps -d wheels ml-collections==1.1.0
# Run through the device tool with carry=["wheels"]:
#   bash benchmarks/gpu_run.sh
set -euo pipefail
pip install -q --no-deps wheels/*.whl
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python benchmarks/benchmark.py --gpu --repeats=3 --out "${OUT:-.}/benchmark_gpu.json"
