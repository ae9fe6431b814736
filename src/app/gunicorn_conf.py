"""gunicorn settings: `gunicorn -c python:mlx_server.app.gunicorn_conf 'mlx_server.app.asgi:create()'`.

One worker: the model lives in the process, and MLX generates one request at a time anyway.
The address comes from MLX_SERVER_HOST / MLX_SERVER_PORT (default 127.0.0.1:1234); gunicorn's own
`--bind` still wins. On SIGTERM the worker stops accepting connections, answers 503 to new work,
lets running requests and streams finish, and is killed after `graceful_timeout` seconds.
"""

import copy
import os
from typing import Any, ClassVar

from gunicorn.glogging import CONFIG_DEFAULTS
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from ..adapters.http.transport import head_deadline_protocol
from .config import settings_from_env
from .process import prepare_process

# In the master, before it forks: a worker must never re-exec (it would become a new master).
prepare_process(os.environ)

_settings = settings_from_env()


class Worker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker has no type hints
    """uvicorn's worker with the head deadline of `mlx-server` (h11: see adapters/http/transport)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**UvicornWorker.CONFIG_KWARGS,
                     "http": head_deadline_protocol(_settings.header_timeout)}


worker_class = Worker
workers = 1
bind = f"{_settings.host}:{_settings.port}"
graceful_timeout = 10  # seconds a running stream gets to finish after SIGTERM
timeout = 120  # a worker silent this long is restarted (a model load may take a while)
keepalive = _settings.keep_alive_timeout  # uvicorn's timeout_keep_alive: idle connections close

# gunicorn's own logging, plus ours: the `mlx_server.access` line per request and the server's log
logconfig_dict: dict[str, Any] = copy.deepcopy(CONFIG_DEFAULTS)
for _gunicorn_logger in logconfig_dict["loggers"].values():
    _gunicorn_logger["propagate"] = False  # the root logger now has a handler: no double lines
logconfig_dict["loggers"]["mlx_server"] = {"level": _settings.log_level.upper(),
                                           "handlers": ["error_console"], "propagate": False}
