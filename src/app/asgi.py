"""ASGI entry for uvicorn (`--factory mlx_server.app.asgi:create`) and gunicorn
(`-k uvicorn_worker.UvicornWorker 'mlx_server.app.asgi:create()'`), configured by MLX_SERVER_*."""

from __future__ import annotations

import os
import sys

from ..adapters.http.disconnect import DisconnectWatch
from .bootstrap import build
from .config import settings_from_env
from .process import prepare_process


def create() -> DisconnectWatch:
    if "gunicorn" not in sys.modules:  # uvicorn --factory; gunicorn's master did it already
        prepare_process(os.environ)
    return build(settings_from_env())
