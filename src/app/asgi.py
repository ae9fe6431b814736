"""ASGI entry for uvicorn (`--factory mlx_server.app.asgi:create`) and gunicorn
(`-k uvicorn_worker.UvicornWorker 'mlx_server.app.asgi:create()'`), configured by MLX_SERVER_*."""

from __future__ import annotations

import sys

from ..adapters.cpu_fastpath import ensure_fast_blas
from ..adapters.http.disconnect import DisconnectWatch
from .bootstrap import build
from .config import settings_from_env


def create() -> DisconnectWatch:
    if "gunicorn" not in sys.modules:  # uvicorn --factory; gunicorn's master did it already
        ensure_fast_blas()
    return build(settings_from_env())
