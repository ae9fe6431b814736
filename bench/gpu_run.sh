#!/usr/bin/env bash
# On the device machine (bench/GPU.md), in the repository root, after a first call that carried
# .devcarry/p1 and ran `mkdir -p /tmp/w && cp .devcarry/p1/* /tmp/w/`; this call carries .devcarry/p2
# and .devcarry/code (bench/gpu_carry.sh made them). Installs the wheels into /tmp/site (once per
# machine), builds the gemma-3-4b-shaped 4-bit checkpoint with its visible-word tokenizer into
# /tmp/g4b (once), then runs bench.concurrency with the arguments given, its JSON and logs in $OUT.
# Usage: bash .devcarry/code/bench/gpu_run.sh [bench.concurrency arguments, e.g. --sides ours]
#        bash .devcarry/code/bench/gpu_run.sh startup [bench.startup arguments]
#        bash .devcarry/code/bench/gpu_run.sh fleet [bench.fleet_gpu arguments]   (2 GPUs; the router's
#        wheels, .devcarry/p3, copied into /tmp/w by an earlier call: bench/GPU.md "Fleet")
set -uo pipefail
ROOT=$(pwd)
if [ ! -d /tmp/site/mlx ]; then
  mkdir -p /tmp/w && cp .devcarry/p2/* /tmp/w/ && cd /tmp/w || exit 1
  [ -d "$ROOT/.devcarry/p3" ] && cp "$ROOT"/.devcarry/p3/* /tmp/w/
  cat cuda.part.* >mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl && rm cuda.part.* || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl || exit 1
  cd "$ROOT" || exit 1
fi
N=/opt/torch/.venv/lib/python3.12/site-packages/nvidia  # the CUDA 13 libraries of the image's torch
export PYTHONPATH=/tmp/site:$ROOT/.devcarry/code PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$N/cu13/lib:$N/cudnn/lib:$N/nccl/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cd .devcarry/code || exit 1
[ -f /tmp/g4b/config.json ] || python3 bench/gpu.py --save /tmp/g4b --json "$OUT/save.json" 2>&1 | tail -2
tag=$(echo "$*" | tr -c 'a-zA-Z0-9\n-' '_' | tr -s '_' | cut -c1-60)
if [ "${1:-}" = "startup" ]; then  # bench.startup: process start to first token, cold then warm
  shift
  timeout 540 python3 -m bench.startup --model /tmp/g4b "$@" --json "$OUT/startup.json" 2>&1 \
    | grep -v Warning | tee "$OUT/startup.log"
elif [ "${1:-}" = "fleet" ]; then  # bench.fleet_gpu: one server vs two (one per GPU) behind the router
  shift
  nvidia-smi -L | tee "$OUT/gpus.txt"
  timeout $((590 - SECONDS)) python3 -m bench.fleet_gpu --model /tmp/g4b "$@" --json "$OUT/fleet.json" 2>&1 \
    | grep -v Warning | tee "$OUT/fleet.log"
else
  timeout 540 python3 -m bench.concurrency --gpu --model /tmp/g4b "$@" --json "$OUT/conc${tag}.json" 2>&1 \
    | grep -v Warning | tee "$OUT/conc${tag}.log"
fi
tar czf "$OUT/logs${tag}.tgz" -C /tmp mlx-server-bench-logs
