"""gunicorn settings: `gunicorn -c python:mlx_server.app.gunicorn_conf 'mlx_server.app.asgi:create()'`.

One worker: the model lives in the process, and MLX generates one request at a time anyway.
"""

from ..adapters.cpu_fastpath import ensure_fast_blas

# In the master, before it forks: a worker must never re-exec (it would become a new master).
ensure_fast_blas()

worker_class = "uvicorn_worker.UvicornWorker"
workers = 1
bind = "127.0.0.1:1234"
graceful_timeout = 10
