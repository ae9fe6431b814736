"""Linux CPU fast path: SmolLM2-135M prefill / decode tokens/s, as shipped vs fast path.

Rows (each in a fresh subprocess, so the loader environment is exactly the one named):
  shipped    mlx[cpu] reference BLAS, 4/8-bit weights kept        (MLX_SERVER_FAST_BLAS=0)
  fast       OpenBLAS preloaded (activation_env), float32 weights (--cpu-weights dequantize)
  fast+busy  the same while another process spins on one of the cores
  llama.cpp  llama-cpp-python on the same GGUF, same prompt text, n_threads = usable CPUs
             (run from another venv: --llama-python /tmp/llamavenv/bin/python; skipped if absent)

Run: python -m bench.cpu_fastpath [--long-tokens 2000] [--decode 32] [--skip-shipped-long]
                                  [--llama-python PATH] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHORT = "What is the capital of France? Answer in one sentence."
_FILLER = ("The history of computing spans centuries, from mechanical calculators and punched "
           "cards to transistors, integrated circuits and the networked machines of today. ")


def _long_prompt(tokenizer: Any, tokens: int) -> str:
    text = "Summarize the following text in one sentence.\n\n"
    while len(tokenizer.encode(text)) < tokens - 40:
        text += _FILLER
    return text


# ------------------------------------------------------------------------------- worker side


def _worker(args: argparse.Namespace) -> None:
    import mlx.core as mx
    from mlx_vlm.generate import stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load

    from mlx_server.adapters.mlx.backend import blas_in_use
    from mlx_server.adapters.mlx.dequantize import dequantize_for_cpu

    from ._common import smollm_dir

    loaded: tuple[Any, Any] = load(str(smollm_dir()))  # mlx_vlm's stubs are narrower than its API
    model, processor = loaded
    start = time.perf_counter()
    weights = dequantize_for_cpu(model, args.weights)
    load_s = time.perf_counter() - start
    tokenizer = getattr(processor, "tokenizer", processor)
    user = SHORT if args.prompt == "short" else _long_prompt(tokenizer, args.long_tokens)
    text: Any = apply_chat_template(processor, model.config, user)
    # warm-up (first-call allocations), not timed
    warm: Any = apply_chat_template(processor, model.config, "Hi")
    for _ in stream_generate(model, processor, warm, max_tokens=2, temperature=0.0):
        pass
    last = None
    out = ""
    start = time.perf_counter()
    first = None
    for result in stream_generate(model, processor, text, max_tokens=args.decode, temperature=0.0):
        first = first or time.perf_counter() - start
        out += result.text
        last = result
    assert last is not None
    print(json.dumps({
        "prompt_tokens": last.prompt_tokens, "prefill_tps": last.prompt_tps,
        "decode_tokens": last.generation_tokens, "decode_tps": last.generation_tps,
        "ttft_s": first, "blas": blas_in_use(), "weights": weights,
        "dequantize_s": load_s, "text": out[:60], "prompt_text": text,
        "device": str(mx.default_device())}))


_LLAMA = r"""
import json, sys, time, llama_cpp
path, prompt_file, decode, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(prompt_file).read()
llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                      n_batch=512, verbose=False)
tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
llm.create_completion("Hi", max_tokens=2, temperature=0.0)  # warm-up
llm.reset()
llama_cpp.llama_perf_context_reset(llm.ctx)
start = time.perf_counter()
out = llm.create_completion(tokens, max_tokens=decode, temperature=0.0)
wall = time.perf_counter() - start
perf = llama_cpp.llama_perf_context(llm.ctx)
print(json.dumps({"prompt_tokens": perf.n_p_eval, "prefill_tps": perf.n_p_eval / perf.t_p_eval_ms * 1e3,
                  "decode_tokens": perf.n_eval + 1, "decode_tps": perf.n_eval / perf.t_eval_ms * 1e3,
                  "ttft_s": perf.t_p_eval_ms / 1e3, "blas": "ggml (llama.cpp %s)" % llama_cpp.__version__,
                  "weights": "GGUF Q4_1 as is", "text": out["choices"][0]["text"][:60], "wall_s": wall}))
"""


# ------------------------------------------------------------------------------- driver side


def _env(fast: bool) -> dict[str, str]:
    from mlx_server.app.process import DISABLE_VAR, MARKER_VAR, activation_env

    base = {k: v for k, v in os.environ.items()
            if k not in {"LD_PRELOAD", MARKER_VAR, "OPENBLAS_NUM_THREADS", "LD_LIBRARY_PATH"}}
    if not fast:
        return {**base, DISABLE_VAR: "0"}
    changes = activation_env(base)
    if changes is None:
        raise SystemExit("the fast path cannot be activated here (not Linux, or cmeel-openblas "
                         "missing): pip install 'cmeel-openblas>=0.3.31'")
    return {**base, **changes}


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def _mlx_row(fast: bool, prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.cpu_fastpath", "--worker", "--prompt", prompt,
           "--weights", "dequantize" if fast else "keep", "--decode", str(args.decode),
           "--long-tokens", str(args.long_tokens)]
    return _run(cmd, _env(fast), timeout=1800)


def _llama_row(prompt_text: str, args: argparse.Namespace, threads: int) -> dict[str, Any] | None:
    if not args.llama_python or not Path(args.llama_python).exists():
        return None
    from mlx_server.adapters.mlx.gguf_convert import builtin_smollm2_gguf

    prompt_file = Path("/tmp") / f"cpu_fastpath_prompt_{os.getpid()}.txt"
    prompt_file.write_text(prompt_text)
    cmd = [args.llama_python, "-c", _LLAMA, str(builtin_smollm2_gguf()), str(prompt_file),
           str(args.decode), str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in {"LD_PRELOAD", "LD_LIBRARY_PATH"}}
    try:
        return _run(cmd, env, timeout=600)
    finally:
        prompt_file.unlink(missing_ok=True)


def _busy(cores: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompt", choices=["short", "long"], default="short")
    parser.add_argument("--weights", default="keep")
    parser.add_argument("--decode", type=int, default=32, help="tokens generated per run")
    parser.add_argument("--long-tokens", type=int, default=2000)
    parser.add_argument("--skip-shipped-long", action="store_true",
                        help="skip the as-shipped long prompt (~4 minutes on 2 cores)")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes in the contended row")
    parser.add_argument("--llama-python", default="/tmp/llamavenv/bin/python")
    parser.add_argument("--write", default="", help="write the table (markdown) to this file")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    from mlx_server.adapters.host import Host

    threads = Host().usable_cpus()
    rows: list[tuple[str, str, dict[str, Any] | None]] = []
    for prompt in ("short", "long"):
        shipped = None
        if not (prompt == "long" and args.skip_shipped_long):
            shipped = _mlx_row(False, prompt, args)
        rows.append(("shipped (reference BLAS, 4-bit kept)", prompt, shipped))
        fast = _mlx_row(True, prompt, args)
        rows.append(("fast (OpenBLAS, float32)", prompt, fast))
        busy = _busy(args.busy)
        try:
            rows.append((f"fast, {args.busy} busy process(es)", prompt, _mlx_row(True, prompt, args)))
        finally:
            for process in busy:
                process.kill()
                process.wait()
        rows.append((f"llama.cpp ({threads} threads)", prompt,
                     _llama_row(fast["prompt_text"], args, threads)))

    table = _table(rows)
    print(table)
    if args.write:
        _write(Path(args.write), table, rows, threads)


def _table(rows: list[tuple[str, str, dict[str, Any] | None]]) -> str:
    lines = ["| run | prompt | prompt tokens | prefill tok/s | decode tok/s | vs shipped "
             "(prefill / decode) | vs llama.cpp (prefill / decode) | BLAS | load avg before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, prompt, row in rows:
        if row is None:
            lines.append(f"| {name} | {prompt} | - | not run | not run | | | | |")
            continue
        ref = next((r for n, p, r in rows if p == prompt and n.startswith("shipped")), None)
        cpp = next((r for n, p, r in rows if p == prompt and n.startswith("llama.cpp")), None)

        def ratio(base: dict[str, Any] | None, row: dict[str, Any] = row) -> str:
            if base is None:
                return "-"
            return (f"{row['prefill_tps'] / base['prefill_tps']:.2f}x / "
                    f"{row['decode_tps'] / base['decode_tps']:.2f}x")

        lines.append(f"| {name} | {prompt} | {row['prompt_tokens']} | {row['prefill_tps']:.1f} | "
                     f"{row['decode_tps']:.1f} | {ratio(ref)} | {ratio(cpp)} | {row['blas']} | "
                     f"{row['load_before']:.2f} |")
    return "\n".join(lines)


def _write(path: Path, table: str, rows: list[tuple[str, str, dict[str, Any] | None]],
           threads: int) -> None:
    from mlx_server.adapters.host import Host

    command = "python -m bench.cpu_fastpath " + " ".join(sys.argv[1:])
    cpu = Host().cpu_model() or platform.processor() or "?"
    machine = (f"{os.cpu_count()} CPUs online, {threads} usable by this process (affinity and "
               f"cgroup quota), {cpu}, {platform.platform()}, Python {platform.python_version()}")
    texts = "\n".join(f"- {name} / {prompt}: {row['text']!r}" for name, prompt, row in rows if row)
    path.write_text(f"""# CPU fast path: SmolLM2-135M-Instruct (Q4_1 GGUF), prefill and decode

Command: `{command}`

Machine: {machine}

{table}

Decode tokens per run: see `--decode`; prefill and decode tokens/s are mlx_vlm's own
`prompt_tps` / `generation_tps` (llama.cpp: `llama_perf_context`). Each MLX row runs in a fresh
subprocess after a 2-token warm-up. "load avg before" is the 1-minute load average when the row
started (other work on the machine lowers the figures).

First words generated (greedy):
{texts}
""")


if __name__ == "__main__":
    main()
