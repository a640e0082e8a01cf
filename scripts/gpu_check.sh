#!/usr/bin/env bash
# The GPU check: one prepared command, under 8 minutes on one H100, that runs what only a GPU can
# show (scripts/gpu_check.py says what) and writes ONE JSON file.
#
#   scripts/gpu_check.sh [out.json]     # default: $OUT/gpu_check.json if $OUT is set, else
#                                       # ./gpu_check.json
#
# Needs the package installed with a CUDA build of torch. Nothing is downloaded (HF_HUB_OFFLINE).
# Without a CUDA device it prints a line saying so and exits 0 at once. Exit codes: 0 done (or
# no GPU), 124 the 8-minute limit was reached (the JSON holds the sections finished), else the
# Python error's. GPU_CHECK_DEVICE=cpu smoke-runs the sections but the benchmark on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
exec timeout 480 "$PY" scripts/gpu_check.py "$@"
