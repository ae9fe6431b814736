"""Process start-up: what must happen before MLX loads, the same for every entry point.

Today that is the Linux CPU fast path. The ``mlx[cpu]`` wheel links a reference (netlib) BLAS
from ``mlx_cpu.libs``, far too slow for a dense float32 matmul to be worth it (figures:
bench/RESULTS.md, "Figures formerly in code comments"). OpenBLAS from the ``cmeel-openblas``
wheel exports the same unprefixed ``cblas_sgemm``; preloaded with ``LD_PRELOAD`` it takes
precedence in the global symbol scope, so ``libmlx.so`` binds to it instead of the reference
library. Together with float32 weights (see ``adapters/mlx/dequantize.py``) that is what makes
prefill and decode on the CPU fast.

Why a re-exec (``prepare_process``) rather than a launcher script:

* ``LD_PRELOAD`` and ``LD_LIBRARY_PATH`` are read by the dynamic loader only when a process
  starts; setting them in ``os.environ`` of a running interpreter changes nothing for this
  process. ``ctypes.CDLL(..., RTLD_GLOBAL)`` before ``import mlx`` is not enough either: a
  library loaded with dlopen joins the global scope *after* the executable's own dependencies
  and does not interpose reliably on symbols that ``libmlx.so`` resolves through its own
  ``DT_NEEDED`` chain.
* A launcher (shell wrapper) only covers the entry points that go through it; ``python -m
  mlx_server``, the console script, ``pytest``, uvicorn and gunicorn would each need their own.
  The re-exec lives in the Python entry points themselves, so every way the server starts gets
  it, from one function, computed by the same code (library path, gfortran, thread count).
* The process is never half-configured: the decision happens before ``mlx.core`` is imported;
  either the whole interpreter is replaced by one whose loader preloaded OpenBLAS, or nothing
  changes (library missing, disabled, macOS, CUDA). If ``mlx.core`` is already loaded the
  function refuses to exec (it would be too late to matter and could lose state) and warns.
* ``execve`` keeps the pid, open file descriptors (sockets, pipes, a terminal) and the exact
  command line (``sys.orig_argv``), so supervisors (systemd, docker, a test harness waiting on a
  pid) see one process. A marker variable (``MLX_SERVER_BLAS``) prevents exec loops.

This module imports nothing from MLX at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import attrs

from ..adapters.host import Host

__all__ = ["DISABLE_VAR", "MARKER_VAR", "Wheels", "activation_env", "backend_report",
           "prepare_process"]

log = logging.getLogger(__name__)

MARKER_VAR = "MLX_SERVER_BLAS"  # set by activation_env: the preloaded library (loop guard)
DISABLE_VAR = "MLX_SERVER_FAST_BLAS"  # "0" / "false" / "off" / "no" disables the fast path
_FALSE = {"0", "false", "off", "no"}
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_CUDA_DISTS = ("mlx-cuda", "mlx-cuda-12", "mlx-cuda-13")

Exec = Callable[[str, list[str], Mapping[str, str]], object]


def prepare_process(environ: Mapping[str, str], *, argv: Sequence[str] | None = None,
                    host: Host | None = None, wheels: Wheels | None = None,
                    loaded: Collection[str] | None = None, execve: Exec = os.execve) -> None:
    """Everything the process must do before MLX loads; call it first thing in an entry point.

    Re-execs this interpreter with OpenBLAS preloaded when that is needed and still possible.
    ``argv`` is the interpreter's command line after the executable; by default
    ``sys.orig_argv[1:]`` (which keeps ``-m mlx_server``, ``-X`` options, a console script's
    path, ...). Returns normally when nothing is to be done; otherwise never returns
    (``execve``). ``host``, ``wheels``, ``loaded`` (the imported modules, ``sys.modules``) and
    ``execve`` are what the decision reads and does, injectable so tests need no real exec.
    """
    host = host or Host()
    changes = activation_env(environ, host=host, wheels=wheels)
    if changes is None:
        _check_preloaded(environ, host)
        return
    if "mlx.core" in (sys.modules if loaded is None else loaded):
        log.warning("mlx was imported before prepare_process(): the optimized BLAS cannot be "
                    "activated in this process; CPU inference will be slow (start through "
                    "`mlx-server` / `python -m mlx_server`, or set %s=0 to silence this)",
                    DISABLE_VAR)
        return
    args = list(sys.orig_argv[1:] if argv is None else argv)
    _flush_std_streams()
    execve(sys.executable, [sys.executable, *args], {**environ, **changes})


def _check_preloaded(environ: Mapping[str, str], host: Host) -> None:
    """After the re-exec: warn when the loader was asked for OpenBLAS but did not load it."""
    if environ.get(MARKER_VAR) and host.platform == "linux" \
            and host.mapped_library("libopenblas") is None:
        log.warning("%s=%s is set but OpenBLAS is not loaded in this process (the loader "
                    "could not preload it?): MLX uses its reference BLAS", MARKER_VAR,
                    environ[MARKER_VAR])


def _flush_std_streams() -> None:
    """What Python buffered would be lost with the old process image."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def activation_env(environ: Mapping[str, str], *, host: Host | None = None,
                   wheels: Wheels | None = None,
                   this_process: bool = False) -> dict[str, str] | None:
    """The environment variables to change (only those) for the fast path, or None.

    None when there is nothing to do: not Linux (macOS keeps Accelerate), a CUDA build of MLX,
    disabled with ``MLX_SERVER_FAST_BLAS=0``, already active or already attempted
    (``MLX_SERVER_BLAS`` set, or, with ``this_process``, OpenBLAS mapped in this process
    already), the ``cmeel-openblas`` wheel missing, or no ``libgfortran.so.5`` to satisfy it.
    ``wheels`` defaults to what is installed (``Wheels.installed``).
    """
    host = host or Host()
    if host.platform != "linux" or fast_blas_disabled(environ) or environ.get(MARKER_VAR):
        return None
    wheels = wheels or Wheels.installed()
    # NOTE: what this process has mapped only matters when the question is about this process
    if wheels.cuda or (this_process and host.mapped_library("libopenblas") is not None):
        return None
    if wheels.openblas is None:
        return None
    lib_dirs = _gfortran_dirs(wheels, environ)
    return None if lib_dirs is None else _changes(environ, wheels.openblas, lib_dirs, host)


def _changes(environ: Mapping[str, str], library: Path, lib_dirs: list[str],
             host: Host) -> dict[str, str]:
    changes = {
        "LD_PRELOAD": ":".join([str(library), *filter(None, [environ.get("LD_PRELOAD")])]),
        MARKER_VAR: str(library),
    }
    if lib_dirs:
        changes["LD_LIBRARY_PATH"] = ":".join(
            [*lib_dirs, *filter(None, [environ.get("LD_LIBRARY_PATH")])])
    if not any(environ.get(var) for var in _THREAD_VARS):
        # OpenBLAS's default (all cores it sees) oversubscribes a cgroup-limited container
        changes["OPENBLAS_NUM_THREADS"] = str(host.usable_cpus())
    return changes


def fast_blas_disabled(environ: Mapping[str, str]) -> bool:
    return environ.get(DISABLE_VAR, "1").strip().lower() in _FALSE


def backend_report(measure: bool = False, host: Host | None = None) -> dict[str, str]:
    """Device, BLAS and CPU budget, for /health and the startup log line: what the start-up
    achieved, read from the running process (imports mlx)."""
    from ..adapters.mlx.backend import blas_in_use, device_report

    host = host or Host()
    report = device_report()
    report["blas"] = blas_in_use(measure=measure, host=host)
    report["cpus"] = str(host.usable_cpus())
    if host.platform == "linux" and fast_blas_disabled(os.environ):
        report["fast_blas"] = f"disabled ({DISABLE_VAR})"
    return report


# ---------------------------------------------------------------------------------------------
# what the installed wheels offer


@attrs.frozen
class Wheels:
    """The installed distributions the fast path depends on, read from package metadata (no
    import of the packages themselves)."""

    openblas: Path | None  # the OpenBLAS shared library of ``cmeel-openblas``
    mlx_cpu_libs: Path | None  # ``mlx_cpu.libs`` of mlx[cpu]: netlib BLAS, gfortran, ...
    cuda: bool  # a CUDA build of MLX: its BLAS is cuBLAS, nothing to preload

    @classmethod
    def installed(cls) -> Wheels:
        return cls(_openblas_library(), _mlx_cpu_libs(), _cuda_build())


def _openblas_library() -> Path | None:
    """cmeel wheels install under ``<site-packages>/cmeel.prefix``; the wheel's RECORD names
    the files, so no import of the (empty) package is needed."""
    try:
        dist = importlib.metadata.distribution("cmeel-openblas")
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = sorted(
        (f for f in dist.files or () if f.name.startswith("libopenblas") and ".so" in f.name),
        key=lambda f: (f.name != "libopenblas.so.0", len(f.name)))  # prefer the SONAME
    for entry in candidates:
        path = Path(str(dist.locate_file(entry)))
        if path.is_file():
            return path.resolve()
    return None


def _mlx_cpu_libs() -> Path | None:
    try:
        dist = importlib.metadata.distribution("mlx-cpu")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("mlx_cpu.libs")))
    return path if path.is_dir() else None


def _cuda_build() -> bool:
    for name in _CUDA_DISTS:
        try:
            importlib.metadata.distribution(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def _gfortran_dirs(wheels: Wheels, environ: Mapping[str, str]) -> list[str] | None:
    """Directories to put on LD_LIBRARY_PATH so that ``libgfortran.so.5`` resolves; None if
    it cannot be found at all (then preloading OpenBLAS would fail: do nothing).

    The copy shipped by mlx[cpu] is preferred (it is the one MLX's own LAPACK already loads, so
    the process holds a single libgfortran): a private directory gets a ``libgfortran.so.5``
    symlink to it, and ``mlx_cpu.libs`` itself is listed for its hashed ``libquadmath`` (the
    gfortran copy finds it through ``$ORIGIN``, which the loader takes from the symlink's dir).
    """
    libs = wheels.mlx_cpu_libs
    gfortran = sorted(libs.glob("libgfortran*.so.5*")) if libs else []
    if gfortran and libs is not None:
        private = _private_lib_dir(gfortran[0], environ)
        if private is not None:
            return [str(private), str(libs)]
    from ctypes.util import find_library

    return [] if find_library("gfortran") else None  # a system libgfortran.so.5 is fine too


def _private_lib_dir(target: Path, environ: Mapping[str, str]) -> Path | None:
    """A per-user directory holding the ``libgfortran.so.5`` link: the cache, else /tmp."""
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    roots = [Path(cache) / "mlx-server", Path(tempfile.gettempdir()) / f"mlx-server-{os.getuid()}"]
    for root in roots:
        directory = root / f"blas-libs-{digest}"
        with contextlib.suppress(OSError):
            _link(directory / "libgfortran.so.5", target)
            return directory
    return None


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target``, replaced atomically: concurrent starts never see a half-made
    link."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.parent / f".{link.name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)
