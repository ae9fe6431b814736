"""The one place bench reaches the server's process start-up (the Linux CPU fast path, OpenBLAS
preloaded by a re-exec): for in-process benchmarks (``prepare_process``), for the child processes
bench starts itself (``fast_env``) and for the BLAS report of the raw baseline (``blas_in_use``).
"""

from __future__ import annotations

import os

from mlx_server.app.process import (
    MARKER_VAR,
    activation_env,
    prepare_process,
)

# the loader variables of an earlier activation: recomputed, never inherited
_LOADER_VARS = frozenset({"LD_PRELOAD", MARKER_VAR, "OPENBLAS_NUM_THREADS", "LD_LIBRARY_PATH"})


def prepare() -> None:
    """Re-exec (same pid) with the server's loader environment; call before mlx is imported."""
    prepare_process(os.environ)


def fast_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with OpenBLAS preloaded as the server does it, plus ``extra``; as it is where
    the fast path cannot be activated (not Linux, OpenBLAS missing): said in the notes."""
    base = {key: value for key, value in os.environ.items() if key not in _LOADER_VARS}
    changes = activation_env(base)
    env = dict(os.environ) if changes is None else {**base, **changes}
    return {**env, **(extra or {})}


def blas_in_use() -> str:
    """Which BLAS serves MLX's float32 matmuls in this process (imports the MLX adapter)."""
    from mlx_server.adapters.mlx.backend import (
        blas_in_use as report,
    )

    return str(report())
