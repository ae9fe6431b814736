#!/usr/bin/env bash
# Here, before the device runs of bench/GPU.md: fill .devcarry/ (ignored through .git/info/exclude) in
# the checkout the device tool sends (the session's own checkout, also when run from a worktree):
#   .devcarry/p1/    the first 60 MB of mlx-cuda-13's wheel (90 MB > the 64 MiB a call may carry)
#   .devcarry/p2/    the rest of it, mlx, mlx-vlm, the peer's and the openai client's pure wheels, and
#                    our server's (falcon, gunicorn, cattrs, jsonschema, ...) for the ours side
#   .devcarry/p3/    sglang-router 0.3.2 and the two of its needs the device image lacks (setproctitle,
#                    orjson; it has aiohttp and its needs; fastapi and uvicorn travel in p2), for
#                    bench/fleet_gpu.py (two servers behind the router, bench/GPU.md "Fleet")
#   .devcarry/code/  bench/ and src/ (as the package mlx_server) of the tree this script is in
# Usage: bash bench/gpu_carry.sh [CHECKOUT]   (CHECKOUT: where the device tool's repo is; default:
#        git's common dir's parent, i.e. the main checkout of this repository)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${1:-$(cd "$(git -C "$HERE" rev-parse --path-format=absolute --git-common-dir)/.." && pwd)}
PY=${PYTHON:-python3}
EXCLUDE=$(git -C "$TARGET" rev-parse --path-format=absolute --git-common-dir)/info/exclude
mkdir -p "$(dirname "$EXCLUDE")" && touch "$EXCLUDE"
grep -qx '/.devcarry/' "$EXCLUDE" || echo '/.devcarry/' >>"$EXCLUDE"
C=$TARGET/.devcarry
mkdir -p "$C/whl" && rm -rf "$C/p1" "$C/p2" "$C/p3" "$C/code" && mkdir -p "$C/p1" "$C/p2" "$C/p3" "$C/code"
platforms=()
for p in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$C/whl" \
  mlx==0.32.4 mlx-cuda-13==0.32.4 mlx-vlm==0.7.10 \
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 \
  annotated-types==0.8.0 python-multipart==0.0.34 uvicorn==0.54.0 mlx-audio==0.6.2 cryptography==50.0.2 \
  cffi==2.1.1 pycparser==3.12 opentelemetry-api==1.45.2 importlib-metadata zipp \
  openai==3.57.0 jiter==0.19.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 sniffio==1.3.1 distro \
  falcon==4.4.0 gunicorn==27.0.1 uvicorn-worker==0.4.0 cattrs==26.2.1 jsonschema==4.26.0 \
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
mkdir -p "$C/whl3"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$C/whl3" sglang-router==0.3.2 setproctitle==1.3.8 orjson==3.13.0
cp "$C"/whl3/*.whl "$C/p3/"
(cd "$C/whl" && split -b 60m mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl "$C/cuda.part.")
mv "$C/cuda.part.aa" "$C/p1/" && mv "$C/cuda.part.ab" "$C/p2/"
find "$C/whl" -name '*.whl' ! -name 'mlx_cuda_13-*' -exec cp {} "$C/p2/" \;
cp -r "$HERE/bench" "$C/code/bench" && cp -rL "$HERE/src" "$C/code/mlx_server"
find "$C/code" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$C/p1" "$C/p2" "$C/p3" "$C/code"
