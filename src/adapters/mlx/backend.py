"""What serves MLX in this process, checked rather than assumed: device and BLAS.

The process start-up (``app/process.py``) asks the loader to preload OpenBLAS; whether it did is
only known from inside the running process, by asking the dynamic linker which file serves
``cblas_sgemm`` (that is what ``libmlx.so`` binds to). Imports MLX only inside functions.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

from ..host import Host

__all__ = ["blas_in_use", "device_report"]


def device_report() -> dict[str, str]:
    """The MLX device (cpu / gpu, and which GPU) and MLX's version."""
    import mlx.core as mx

    device = mx.default_device()
    kind = "gpu" if device.type == mx.gpu else "cpu"
    report = {"device": kind, "mlx": getattr(mx, "__version__", "?")}
    if kind == "gpu":
        if mx.metal.is_available():
            report["gpu"] = "metal"
        elif hasattr(mx, "cuda") and mx.cuda.is_available():
            report["gpu"] = "cuda"
    return report


def blas_in_use(measure: bool = False, host: Host | None = None) -> str:
    """Which BLAS serves MLX's float32 matmuls in this process.

    On Linux: the library that ``cblas_sgemm`` resolves to in the global scope (``dladdr``),
    which is what libmlx binds to; e.g. ``"openblas 0.3.31 Zen (2 threads)"`` or
    ``"reference (libblas-bd8a282c.so.3.10.0)"``. ``measure`` appends a timed 512x512 float32
    matmul in GFLOP/s (imports mlx; a fraction of a second even on the reference BLAS).
    """
    host = host or Host()
    name = "accelerate" if host.platform == "darwin" else _linux_blas(host)
    if measure:
        name += f", {_gflops():.1f} GFLOP/s sgemm 512"
    return name


def _linux_blas(host: Host) -> str:
    """The dynamic linker's answer first; what is mapped when it has none (mlx not loaded)."""
    provider = _sgemm_provider()
    if provider and "openblas" in Path(provider).name:
        return _openblas_details(provider)
    if provider:
        return f"reference ({Path(provider).name})"
    if mapped := host.mapped_library("libopenblas"):
        return _openblas_details(mapped)
    if reference := host.mapped_library("libblas"):
        return f"reference ({Path(reference).name})"
    return "reference (netlib)" if "mlx.core" in sys.modules else "unknown (mlx not loaded)"


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _sgemm_provider() -> str | None:
    """The file that serves ``cblas_sgemm`` in the global symbol scope (what libmlx binds to)."""
    try:
        process = ctypes.CDLL(None)
        address = ctypes.cast(process.cblas_sgemm, ctypes.c_void_p)
        info = _DlInfo()
        dladdr = process.dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        if dladdr(address, ctypes.byref(info)) and info.dli_fname:
            return os.fsdecode(info.dli_fname)
    except (AttributeError, OSError):
        pass
    return None


def _openblas_details(path: str) -> str:
    """e.g. "openblas 0.3.31 SKYLAKEX (2 threads)" from the loaded library itself."""
    try:
        lib = ctypes.CDLL(path)  # already loaded: the same handle
        lib.openblas_get_config.restype = ctypes.c_char_p
        lib.openblas_get_corename.restype = ctypes.c_char_p
        config = (lib.openblas_get_config() or b"").decode(errors="replace").split()
        core = (lib.openblas_get_corename() or b"").decode(errors="replace")
        threads = int(lib.openblas_get_num_threads())
    except (AttributeError, OSError):
        return "openblas"
    version = config[1] if len(config) > 1 and config[0] == "OpenBLAS" else ""
    return " ".join(filter(None, ["openblas", version, core, f"({threads} threads)"]))


def _gflops() -> float:
    import mlx.core as mx

    a = mx.random.normal((512, 512))
    b = mx.random.normal((512, 512))
    mx.eval(a, b, a @ b)
    start, runs = time.perf_counter(), 3
    for _ in range(runs):
        mx.eval(a @ b)
    return 2 * 512**3 * runs / (time.perf_counter() - start) / 1e9
