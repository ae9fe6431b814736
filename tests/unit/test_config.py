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
