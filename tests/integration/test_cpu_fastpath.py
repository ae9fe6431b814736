"""Linux CPU fast path: float32 weights give the same greedy text, OpenBLAS is really in use,
and the activation logic (CPU budget, opt-out, platforms) behaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlx_server.adapters import cpu_fastpath
from mlx_server.adapters.cpu_fastpath import (
    DISABLE_VAR,
    MARKER_VAR,
    activation_env,
    fast_blas_library,
    usable_cpus,
)

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the fast path is Linux only")
needs_openblas = pytest.mark.skipif(fast_blas_library() is None,
                                    reason="cmeel-openblas is not installed")

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
]
# Greedy text of this one diverges at token 22 of 24 on a near tie ("manner." / "manner,"):
# it is checked by the logit tolerance only.
NEAR_TIE_PROMPT = "Explain in two sentences what a hash table is."
MAX_TOKENS = 12
# float32 weights are the exact values the 4/8-bit kernels reconstruct (scale * q + bias), but
# the quantized kernel rounds and sums differently: first-step logits (magnitude up to ~35) differ
# by at most 0.071 on these prompts (measured), so 0.15 absolute, and the same argmax.
LOGIT_ATOL = 0.15


# --------------------------------------------------------------------------------- CPU budget


def _cgroup_v2(root: Path, cpu_max: str, path: str = "/") -> Path:
    directory = root / path.strip("/") if path.strip("/") else root
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.max").write_text(cpu_max + "\n")
    proc = root.parent / "self-cgroup"
    proc.write_text(f"0::{path}\n")
    return proc


def test_usable_cpus_follows_the_affinity_mask(tmp_path: Path) -> None:
    proc = _cgroup_v2(tmp_path / "cg", "max 100000")
    assert usable_cpus(tmp_path / "cg", proc, affinity={0, 1, 2, 3, 4, 5}) == 6
    assert usable_cpus(tmp_path / "cg", proc, affinity={3}) == 1


def test_usable_cpus_is_bounded_by_a_cgroup_v2_quota(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _cgroup_v2(root, "200000 100000", "/box/job")
    assert usable_cpus(root, proc, affinity=set(range(16))) == 2
    (root / "box" / "cpu.max").write_text("100000 100000\n")  # a tighter parent wins
    assert usable_cpus(root, proc, affinity=set(range(16))) == 1
    (root / "box" / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cpus(root, proc, affinity=set(range(16))) == 1
    (root / "box" / "cpu.max").write_text("max 100000\n")
    (root / "box" / "job" / "cpu.max").write_text("350000 100000\n")  # 3.5 CPUs -> 4 threads
    assert usable_cpus(root, proc, affinity=set(range(16))) == 4
    assert usable_cpus(root, proc, affinity={0, 1}) == 2  # affinity is the other bound


def test_usable_cpus_reads_a_cgroup_v1_quota(tmp_path: Path) -> None:
    mount = tmp_path / "cg" / "cpu,cpuacct"
    job = mount / "docker" / "abc"
    job.mkdir(parents=True)
    (job / "cpu.cfs_quota_us").write_text("300000\n")
    (job / "cpu.cfs_period_us").write_text("100000\n")
    (mount / "cpu.cfs_quota_us").write_text("-1\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert usable_cpus(tmp_path / "cg", proc, affinity=set(range(8))) == 3


def test_usable_cpus_without_cgroup_files(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "none", tmp_path / "none-either", affinity={0, 1, 2}) == 3


# ---------------------------------------------------------------------------- activation_env

_LIB = Path("/opt/fake/libopenblas.so.0")


def test_activation_env_sets_preload_threads_and_marker() -> None:
    env = {"LD_PRELOAD": "/x/libother.so", "LD_LIBRARY_PATH": "/usr/local/lib"}
    changes = activation_env(env, platform="linux", library=_LIB, cpus=3)
    if changes is None:  # the test process itself may already run with OpenBLAS mapped
        assert cpu_fastpath._mapped_openblas() is not None or cpu_fastpath._cuda_build()
        return
    assert changes["LD_PRELOAD"] == f"{_LIB}:/x/libother.so"
    assert changes[MARKER_VAR] == str(_LIB)
    assert changes["OPENBLAS_NUM_THREADS"] == "3"
    assert changes.get("LD_LIBRARY_PATH", "/usr/local/lib").endswith("/usr/local/lib")


def test_activation_env_keeps_a_user_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_fastpath, "_mapped_openblas", lambda: None)
    changes = activation_env({"OPENBLAS_NUM_THREADS": "1"}, platform="linux", library=_LIB, cpus=8)
    if changes is not None:
        assert "OPENBLAS_NUM_THREADS" not in changes


@pytest.mark.parametrize("env, platform", [
    ({DISABLE_VAR: "0"}, "linux"),
    ({DISABLE_VAR: "off"}, "linux"),
    ({MARKER_VAR: str(_LIB)}, "linux"),  # already active, or already tried: never loop
    ({}, "darwin"),  # macOS keeps Accelerate
    ({}, "win32"),
])
def test_activation_env_has_nothing_to_do(env: dict[str, str], platform: str) -> None:
    assert activation_env(env, platform=platform, library=_LIB, cpus=2) is None


def test_activation_env_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_fastpath, "fast_blas_library", lambda platform=None: None)
    monkeypatch.setattr(cpu_fastpath, "_mapped_openblas", lambda: None)
    assert activation_env({}, platform="linux") is None


def test_activation_env_leaves_cuda_builds_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_fastpath, "_cuda_build", lambda: True)
    assert activation_env({}, platform="linux", library=_LIB, cpus=2) is None


# -------------------------------------------------------------- the BLAS really in use (checked)

_PROBE = (
    "import json, mlx.core as mx; from mlx_server.adapters import cpu_fastpath as c; "
    "mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64))); "
    "print(json.dumps({'blas': c.blas_in_use(measure=True), 'report': c.backend_report()}))"
)


def _probe(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _plain_env() -> dict[str, str]:
    drop = {"LD_PRELOAD", MARKER_VAR, "OPENBLAS_NUM_THREADS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["LD_LIBRARY_PATH"] = ""
    return env


@linux_only
@needs_openblas
def test_openblas_serves_mlx_when_activated() -> None:
    base = _plain_env()
    changes = activation_env(base)
    assert changes is not None
    result = _probe({**base, **changes})
    assert result["blas"].startswith("openblas "), result
    assert f"({changes['OPENBLAS_NUM_THREADS']} threads)" in result["blas"]
    assert result["report"]["device"] == "cpu"


@linux_only
def test_reference_blas_without_activation() -> None:
    result = _probe({**_plain_env(), DISABLE_VAR: "0"})
    assert result["blas"].startswith("reference"), result


@linux_only
@needs_openblas
def test_ensure_fast_blas_reexecs_before_mlx_is_imported() -> None:
    code = ("import sys; from mlx_server.adapters import cpu_fastpath as c; c.ensure_fast_blas(); "
            "import mlx.core as mx; mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8))); "
            "print(c.blas_in_use(), sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, "--flag", "x y"], env=_plain_env(),
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.startswith("openblas "), done
    assert "['--flag', 'x y']" in done.stdout  # the same command line after the exec


@linux_only
@needs_openblas
def test_ensure_fast_blas_after_mlx_import_warns_and_continues() -> None:
    code = ("import mlx.core as mx; from mlx_server.adapters import cpu_fastpath as c; "
            "c.ensure_fast_blas(); mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8))); print(c.blas_in_use())")
    done = subprocess.run([sys.executable, "-c", code], env=_plain_env(), capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.startswith("reference"), done
    assert "imported before ensure_fast_blas" in done.stderr


# ------------------------------------------------------------------ dequantized == quantized


@pytest.fixture(scope="module")
def smollm2_dir(smollm_dir: Path) -> Path:
    return smollm_dir  # the session's converted built-in (a required test dependency)


def _greedy(model: Any, processor: Any, prompt: str) -> str:
    from mlx_vlm.generate import stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template

    text = apply_chat_template(processor, model.config, prompt)
    return "".join(r.text for r in stream_generate(model, processor, text, max_tokens=MAX_TOKENS,
                                                   temperature=0.0))


def _first_logits(model: Any, processor: Any, prompt: str) -> Any:
    import mlx.core as mx
    from mlx_vlm.prompt_utils import apply_chat_template

    text = apply_chat_template(processor, model.config, prompt)
    tokenizer = getattr(processor, "tokenizer", None) or processor
    ids = mx.array([tokenizer.encode(text)])
    out = model.language_model(ids)
    logits = getattr(out, "logits", out)
    return logits[0, -1].astype(mx.float32)


@pytest.mark.slow
def test_dequantized_weights_give_the_same_greedy_text(smollm2_dir: Path) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_vlm.utils import load

    from mlx_server.adapters.mlx.dequantize import dequantize_for_cpu

    model, processor = load(str(smollm2_dir))
    kept = [_greedy(model, processor, p) for p in PROMPTS]
    kept_logits = [_first_logits(model, processor, p) for p in [*PROMPTS, NEAR_TIE_PROMPT]]

    line = dequantize_for_cpu(model, "dequantize")
    assert line.startswith("dequantized 211 4/8-bit layers to float32"), line
    lm = model.language_model
    assert not any(isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding)
                   for _, m in lm.named_modules())
    assert lm.model.embed_tokens.weight.dtype == mx.float32  # tied: also the output projection

    for prompt, logits in zip([*PROMPTS, NEAR_TIE_PROMPT], kept_logits, strict=True):
        after = _first_logits(model, processor, prompt)
        assert mx.abs(after - logits).max().item() < LOGIT_ATOL, prompt
        assert mx.argmax(after).item() == mx.argmax(logits).item(), prompt
    for prompt, before in zip(PROMPTS, kept, strict=True):
        assert _greedy(model, processor, prompt) == before, prompt


@pytest.mark.slow
def test_cpu_weights_modes(smollm2_dir: Path) -> None:
    import mlx.nn as nn
    from mlx_vlm.utils import load

    from mlx_server.adapters.mlx.dequantize import dequantize_for_cpu

    model, _ = load(str(smollm2_dir))
    layer = model.language_model.model.layers[0].mlp.up_proj
    assert dequantize_for_cpu(model, "keep").startswith("kept")
    line = dequantize_for_cpu(model, "auto", available_bytes=1_000_000_000)  # 538 MB > 25 %
    assert line.startswith("kept quantized weights: float32 would take 538 MB"), line
    assert model.language_model.model.layers[0].mlp.up_proj is layer
    assert dequantize_for_cpu(model, "auto", available_bytes=8_000_000_000).startswith("dequantized")
    assert isinstance(model.language_model.model.layers[0].mlp.up_proj, nn.Linear)
    assert dequantize_for_cpu(model, "auto") == "no quantized layers: weights as loaded"
    with pytest.raises(ValueError):
        dequantize_for_cpu(model, "fast")
