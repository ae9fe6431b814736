"""Linux CPU fast path: float32 weights give the same greedy text, OpenBLAS is really in use,
and the process start-up (activation, re-exec, opt-out, platforms) behaves. The decisions are
tested over fake wheels, fake /proc files and a fake environ; the real re-exec in subprocesses.
The CPU budget itself: tests/unit/test_host.py."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from mlx_server.adapters.host import Host
from mlx_server.app.process import (
    DISABLE_VAR,
    MARKER_VAR,
    Wheels,
    activation_env,
    backend_report,
    prepare_process,
)

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the fast path is Linux only")
needs_openblas = pytest.mark.skipif(Wheels.installed().openblas is None,
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


# ---------------------------------------------------------------------- activation_env (fakes)

_LIB = Path("/opt/fake/libopenblas.so.0")


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """Linux, 3 CPUs, no cgroup quota, nothing mapped: every file under tmp_path."""
    return Host(platform="linux", meminfo=tmp_path / "meminfo", cgroup_root=tmp_path / "cg",
                self_cgroup=tmp_path / "self-cgroup", self_maps=tmp_path / "maps",
                affinity=frozenset({0, 1, 2}))


@pytest.fixture
def wheels(tmp_path: Path) -> Wheels:
    """cmeel-openblas and mlx[cpu] installed; mlx[cpu] ships its own libgfortran."""
    libs = tmp_path / "site-packages" / "mlx_cpu.libs"
    libs.mkdir(parents=True)
    (libs / "libgfortran-040039e1.so.5.0.0").write_bytes(b"")
    return Wheels(openblas=_LIB, mlx_cpu_libs=libs, cuda=False)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache"), "LD_PRELOAD": "/x/libother.so",
            "LD_LIBRARY_PATH": "/usr/local/lib"}


def _private_dir(environ: Mapping[str, str], wheels: Wheels) -> Path:
    assert wheels.mlx_cpu_libs is not None
    target = next(wheels.mlx_cpu_libs.glob("libgfortran*"))
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    return Path(environ["XDG_CACHE_HOME"]) / "mlx-server" / f"blas-libs-{digest}"


def test_activation_env_sets_preload_threads_and_marker(
        host: Host, wheels: Wheels, environ: dict[str, str]) -> None:
    changes = activation_env(environ, host=host, wheels=wheels)
    private = _private_dir(environ, wheels)
    assert changes == {
        "LD_PRELOAD": f"{_LIB}:/x/libother.so",  # first, the user's preloads kept after it
        MARKER_VAR: str(_LIB),
        "LD_LIBRARY_PATH": f"{private}:{wheels.mlx_cpu_libs}:/usr/local/lib",
        "OPENBLAS_NUM_THREADS": "3",  # the host's usable CPUs
    }
    assert environ["LD_PRELOAD"] == "/x/libother.so"  # only a description: nothing is changed


def test_the_thread_count_follows_the_cgroup_quota(
        host: Host, wheels: Wheels, environ: dict[str, str]) -> None:
    host.cgroup_root.mkdir()
    (host.cgroup_root / "cpu.max").write_text("100000 100000\n")
    changes = activation_env(environ, host=host, wheels=wheels)
    assert changes is not None and changes["OPENBLAS_NUM_THREADS"] == "1"


def test_mlx_cpus_gfortran_is_linked_from_a_private_directory(
        host: Host, wheels: Wheels, environ: dict[str, str]) -> None:
    """libgfortran.so.5 (the SONAME OpenBLAS asks for) -> the copy mlx[cpu] ships, kept across
    starts, and replaced when it points elsewhere (mlx[cpu] reinstalled)."""
    link = _private_dir(environ, wheels) / "libgfortran.so.5"
    activation_env(environ, host=host, wheels=wheels)
    target = link.resolve()
    assert link.is_symlink() and target.parent == wheels.mlx_cpu_libs
    activation_env(environ, host=host, wheels=wheels)  # a second start keeps it
    assert link.resolve() == target
    link.unlink()
    link.symlink_to("/nowhere/libgfortran.so.5")
    activation_env(environ, host=host, wheels=wheels)
    assert link.resolve() == target
    assert [p.name for p in link.parent.iterdir()] == ["libgfortran.so.5"]  # no temporaries


def test_activation_env_keeps_a_user_thread_count(
        host: Host, wheels: Wheels, environ: dict[str, str]) -> None:
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        changes = activation_env({**environ, var: "1"}, host=host, wheels=wheels)
        assert changes is not None and "OPENBLAS_NUM_THREADS" not in changes, var


def test_activation_env_without_preloads_or_paths_of_its_own(
        host: Host, wheels: Wheels, tmp_path: Path) -> None:
    changes = activation_env({"XDG_CACHE_HOME": str(tmp_path / "cache")}, host=host,
                             wheels=wheels)
    assert changes is not None
    assert changes["LD_PRELOAD"] == str(_LIB)
    assert changes["LD_LIBRARY_PATH"].endswith(str(wheels.mlx_cpu_libs))


@pytest.mark.parametrize("env, platform", [
    ({DISABLE_VAR: "0"}, "linux"),
    ({DISABLE_VAR: "off"}, "linux"),
    ({DISABLE_VAR: " No "}, "linux"),
    ({MARKER_VAR: str(_LIB)}, "linux"),  # already active, or already tried: never loop
    ({}, "darwin"),  # macOS keeps Accelerate
    ({}, "win32"),
])
def test_activation_env_has_nothing_to_do(env: dict[str, str], platform: str, host: Host,
                                          wheels: Wheels) -> None:
    assert activation_env(env, host=attrs.evolve(host, platform=platform), wheels=wheels) is None


def test_activation_env_without_the_library(host: Host, wheels: Wheels) -> None:
    assert activation_env({}, host=host, wheels=attrs.evolve(wheels, openblas=None)) is None


def test_activation_env_leaves_cuda_builds_alone(host: Host, wheels: Wheels) -> None:
    assert activation_env({}, host=host, wheels=attrs.evolve(wheels, cuda=True)) is None


def test_openblas_mapped_already_counts_for_this_process_only(
        host: Host, wheels: Wheels, environ: dict[str, str]) -> None:
    """Started with OpenBLAS preloaded by hand (no marker): this process needs nothing, a child
    started with the same environment would still."""
    host.self_maps.write_text("7f10-7f20 r-xp 00001000 08:01 2 /usr/lib/libopenblas.so.0\n")
    assert activation_env(environ, host=host, wheels=wheels, this_process=True) is None
    assert activation_env(environ, host=host, wheels=wheels) is not None


# ---------------------------------------------------------------------- prepare_process (fakes)


@attrs.define
class _Exec:
    calls: list[tuple[str, list[str], dict[str, str]]] = attrs.Factory(list)

    def __call__(self, path: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.calls.append((path, argv, dict(env)))


def test_prepare_process_reexecs_with_the_same_command_line(
        host: Host, wheels: Wheels, environ: dict[str, str]) -> None:
    execve = _Exec()
    prepare_process(environ, argv=["-m", "mlx_server", "--port", "8000"], host=host,
                    wheels=wheels, loaded=(), execve=execve)
    [(path, argv, env)] = execve.calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "mlx_server", "--port", "8000"]
    assert env == {**environ, **(activation_env(environ, host=host, wheels=wheels) or {})}
    assert env[MARKER_VAR] == str(_LIB) and env["OPENBLAS_NUM_THREADS"] == "3"


def test_prepare_process_defaults_to_the_interpreters_own_command_line(
        host: Host, wheels: Wheels, environ: dict[str, str]) -> None:
    execve = _Exec()
    prepare_process(environ, host=host, wheels=wheels, loaded=(), execve=execve)
    assert execve.calls[0][1] == [sys.executable, *sys.orig_argv[1:]]


def test_prepare_process_with_nothing_to_do_returns(
        host: Host, wheels: Wheels, environ: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    execve = _Exec()
    prepare_process({**environ, DISABLE_VAR: "0"}, host=host, wheels=wheels, loaded=(),
                    execve=execve)
    prepare_process(environ, host=attrs.evolve(host, platform="darwin"), wheels=wheels,
                    loaded=(), execve=execve)
    assert execve.calls == [] and caplog.records == []


def test_prepare_process_after_mlx_was_imported_warns_and_continues(
        host: Host, wheels: Wheels, environ: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    execve = _Exec()
    with caplog.at_level(logging.WARNING, logger="mlx_server.app.process"):
        prepare_process(environ, host=host, wheels=wheels, loaded={"mlx.core"}, execve=execve)
    assert execve.calls == []
    assert "mlx was imported before prepare_process()" in caplog.text
    assert f"set {DISABLE_VAR}=0 to silence this" in caplog.text


def test_prepare_process_warns_when_the_preload_did_not_happen(
        host: Host, wheels: Wheels, caplog: pytest.LogCaptureFixture) -> None:
    """After the re-exec the marker is set; OpenBLAS missing from the maps means the loader
    could not preload it (a warning, never a second exec)."""
    execve = _Exec()
    environ = {MARKER_VAR: str(_LIB)}
    with caplog.at_level(logging.WARNING, logger="mlx_server.app.process"):
        prepare_process(environ, host=host, wheels=wheels, loaded=(), execve=execve)
    assert execve.calls == []
    assert f"{MARKER_VAR}={_LIB} is set but OpenBLAS is not loaded" in caplog.text
    caplog.clear()
    host.self_maps.write_text(f"7f10-7f20 r-xp 00001000 08:01 2 {_LIB}\n")
    prepare_process(environ, host=host, wheels=wheels, loaded=(), execve=execve)
    assert execve.calls == [] and caplog.records == []  # preloaded: all is well


# -------------------------------------------------------------- the BLAS really in use (checked)

_PROBE = (
    "import json, mlx.core as mx; from mlx_server.adapters.mlx.backend import blas_in_use; "
    "from mlx_server.app.process import backend_report; "
    "mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64))); "
    "print(json.dumps({'blas': blas_in_use(measure=True), 'report': backend_report()}))"
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
    assert "GFLOP/s sgemm 512" in result["blas"]
    assert result["report"]["device"] == "cpu"
    assert result["report"]["cpus"] == str(Host().usable_cpus())
    assert "fast_blas" not in result["report"]


@linux_only
def test_reference_blas_without_activation() -> None:
    result = _probe({**_plain_env(), DISABLE_VAR: "0"})
    assert result["blas"].startswith("reference"), result
    assert result["report"]["fast_blas"] == f"disabled ({DISABLE_VAR})"


def test_backend_report_of_this_process() -> None:
    report = backend_report()
    assert report["device"] in {"cpu", "gpu"} and report["blas"] and int(report["cpus"]) >= 1


@linux_only
@needs_openblas
def test_prepare_process_reexecs_before_mlx_is_imported() -> None:
    code = ("import os, sys; from mlx_server.app.process import prepare_process; "
            "prepare_process(os.environ); "
            "import mlx.core as mx; mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8))); "
            "from mlx_server.adapters.mlx.backend import blas_in_use; "
            "print(blas_in_use(), sys.argv[1:], os.getpid())")
    process = subprocess.Popen([sys.executable, "-c", code, "--flag", "x y"], env=_plain_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.startswith("openblas "), out
    assert "['--flag', 'x y']" in out  # the same command line after the exec
    assert out.split()[-1] == str(process.pid)  # the same process


@linux_only
@needs_openblas
def test_prepare_process_after_mlx_import_warns_and_continues() -> None:
    code = ("import os, mlx.core as mx; from mlx_server.app.process import prepare_process; "
            "from mlx_server.adapters.mlx.backend import blas_in_use; "
            "prepare_process(os.environ); mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8))); "
            "print(blas_in_use())")
    done = subprocess.run([sys.executable, "-c", code], env=_plain_env(), capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.startswith("reference"), done
    assert "imported before prepare_process" in done.stderr


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
