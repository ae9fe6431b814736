"""Command-line flags and their MLX_SERVER_* environment twins."""

from __future__ import annotations

import pytest

from mlx_server.app.cli import main
from mlx_server.app.config import Settings


def test_a_prefill_chunk_below_one_token_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--prefill-chunk", "0"])
    assert exited.value.code == 2
    assert "prefill_chunk" in capsys.readouterr().err


def test_the_prefill_chunk_defaults_to_the_device_choice() -> None:
    assert Settings().prefill_chunk is None  # MlxEngine picks 128 on the CPU, 1024 on a GPU
    assert Settings(prefill_chunk=64).prefill_chunk == 64


def test_perimeter_and_timeout_flags_read_the_environment() -> None:
    from mlx_server.app.config import settings_from_env

    settings = settings_from_env({"MLX_SERVER_ALLOWED_HOSTS": "llm.lan, box.example,",
                                  "MLX_SERVER_METRICS_AUTH": "1", "MLX_SERVER_KEEP_ALIVE_TIMEOUT": "7",
                                  "MLX_SERVER_HEADER_TIMEOUT": "3.5", "MLX_SERVER_BODY_TIMEOUT": "12"})
    assert settings.allowed_hosts == ("llm.lan", "box.example") and settings.metrics_auth
    assert (settings.keep_alive_timeout, settings.header_timeout, settings.body_timeout) == (7, 3.5, 12)
    defaults = settings_from_env({})
    assert defaults.allowed_hosts == () and not defaults.metrics_auth
    assert (defaults.keep_alive_timeout, defaults.header_timeout, defaults.body_timeout) == (5, 10, 30)


@pytest.mark.parametrize("flag", ["--keep-alive-timeout", "--header-timeout", "--body-timeout"])
def test_a_timeout_of_zero_is_refused(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flag, "0"])
    assert exited.value.code == 2
