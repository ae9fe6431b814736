"""Linux CPU fast path: an optimized BLAS (OpenBLAS) for MLX, activated before MLX loads.

The ``mlx[cpu]`` wheel links a reference (netlib) BLAS from ``mlx_cpu.libs``: a dense float32
576x1536 matmul runs at ~2.5 GFLOP/s. OpenBLAS from the ``cmeel-openblas`` wheel exports the same
unprefixed ``cblas_sgemm``; preloaded with ``LD_PRELOAD`` it takes precedence in the global
symbol scope, so ``libmlx.so`` binds to it instead of the reference library. Together with
float32 weights (see ``dequantize.py``) prefill runs ~25x and decode ~2.3x faster.

Why a re-exec (``ensure_fast_blas``) rather than a launcher script:

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
import ctypes
import hashlib
import importlib.metadata
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "DISABLE_VAR",
    "MARKER_VAR",
    "activation_env",
    "backend_report",
    "blas_in_use",
    "ensure_fast_blas",
    "fast_blas_library",
    "usable_cpus",
]

log = logging.getLogger(__name__)

MARKER_VAR = "MLX_SERVER_BLAS"  # set by activation_env: the preloaded library (loop guard)
DISABLE_VAR = "MLX_SERVER_FAST_BLAS"  # "0" / "false" / "off" / "no" disables the fast path
_FALSE = {"0", "false", "off", "no"}
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_CUDA_DISTS = ("mlx-cuda", "mlx-cuda-12", "mlx-cuda-13")


# ---------------------------------------------------------------------------------------------
# locating the libraries


def fast_blas_library(platform: str | None = None) -> Path | None:
    """The OpenBLAS shared library of the installed ``cmeel-openblas`` wheel, or None.

    cmeel wheels install under ``<site-packages>/cmeel.prefix``; the wheel's RECORD names the
    files, so no import of the (empty) package is needed.
    """
    if (platform or sys.platform) != "linux":
        return None
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
    """``mlx_cpu.libs`` of the mlx[cpu] wheel (auditwheel-renamed netlib BLAS, gfortran, ...)."""
    try:
        dist = importlib.metadata.distribution("mlx-cpu")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("mlx_cpu.libs")))
    return path if path.is_dir() else None


def _gfortran_dirs(environ: Mapping[str, str]) -> list[str] | None:
    """Directories to put on LD_LIBRARY_PATH so that ``libgfortran.so.5`` resolves; None if
    it cannot be found at all (then preloading OpenBLAS would fail: do nothing).

    The copy shipped by mlx[cpu] is preferred (it is the one MLX's own LAPACK already loads, so
    the process holds a single libgfortran): a private directory gets a ``libgfortran.so.5``
    symlink to it, and ``mlx_cpu.libs`` itself is listed for its hashed ``libquadmath`` (the
    gfortran copy finds it through ``$ORIGIN``, which the loader takes from the symlink's dir).
    """
    libs = _mlx_cpu_libs()
    gfortran = sorted(libs.glob("libgfortran*.so.5*")) if libs else []
    if gfortran and libs is not None:
        private = _private_lib_dir(gfortran[0], environ)
        if private is not None:
            return [str(private), str(libs)]
    from ctypes.util import find_library

    return [] if find_library("gfortran") else None  # a system libgfortran.so.5 is fine too


def _private_lib_dir(target: Path, environ: Mapping[str, str]) -> Path | None:
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    roots = [Path(cache) / "mlx-server", Path(tempfile.gettempdir()) / f"mlx-server-{os.getuid()}"]
    for root in roots:
        directory = root / f"blas-libs-{digest}"
        link = directory / "libgfortran.so.5"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not (link.is_symlink() and Path(os.readlink(link)) == target):
                tmp = directory / f".libgfortran.so.5.{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(target)
                os.replace(tmp, link)  # atomic: concurrent starts never see a half-made link
            return directory
        except OSError:
            continue
    return None


# ---------------------------------------------------------------------------------------------
# CPU budget


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"),
                proc_self_cgroup: Path = Path("/proc/self/cgroup"),
                affinity: set[int] | None = None) -> int:
    """CPUs this process may use: its affinity mask, bounded by a cgroup v2/v1 CPU quota.

    A quota of 150000/100000 allows 1.5 CPUs of time; that is rounded up (2 threads) only when
    the fraction is at least one half, else down, with a minimum of one.
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = set(range(os.cpu_count() or 1))
    cpus = max(1, len(affinity))
    quota = _cgroup_quota(cgroup_root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota + 0.5)))
    return cpus


def _cgroup_quota(root: Path, proc_self_cgroup: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors, if any."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    quotas: list[float] = []
    for line in lines or ["0::/"]:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2 unified hierarchy
            for directory in _ancestors(root, path):
                quotas += _v2_quota(directory / "cpu.max")
        elif "cpu" in controllers.split(","):  # cgroup v1 cpu controller
            for mount in (root / controllers, root / "cpu,cpuacct", root / "cpu"):
                if mount.is_dir():
                    for directory in _ancestors(mount, path):
                        quotas += _v1_quota(directory)
                    break
    return min(quotas) if quotas else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """mount/path and its parents up to mount; inside a container the path may not exist
    under the (namespaced) mount, so the mount itself is always included."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    found = [mount.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)]
    return [*found, mount]


def _v2_quota(cpu_max: Path) -> list[float]:
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return []
    if len(fields) < 2 or fields[0] == "max":
        return []
    quota, period = fields[:2]
    try:
        return [int(quota) / int(period)]
    except (ValueError, ZeroDivisionError):
        return []


def _v1_quota(directory: Path) -> list[float]:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


# ---------------------------------------------------------------------------------------------
# activation


def _disabled(environ: Mapping[str, str]) -> bool:
    return environ.get(DISABLE_VAR, "1").strip().lower() in _FALSE


def _cuda_build() -> bool:
    for name in _CUDA_DISTS:
        try:
            importlib.metadata.distribution(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def activation_env(environ: Mapping[str, str] | None = None, *, platform: str | None = None,
                   library: Path | None = None,
                   cpus: int | None = None) -> dict[str, str] | None:
    """The environment variables to change (only those) for the fast path, or None.

    None when there is nothing to do: not Linux (macOS keeps Accelerate), a CUDA build of MLX,
    disabled with ``MLX_SERVER_FAST_BLAS=0``, already active or already attempted
    (``MLX_SERVER_BLAS`` set, or, for this process's own environment, OpenBLAS mapped already),
    the ``cmeel-openblas`` wheel
    missing, or no ``libgfortran.so.5`` to satisfy it. ``library`` and ``cpus`` are injectable
    for tests; ``platform`` defaults to ``sys.platform``.
    """
    env = os.environ if environ is None else environ
    platform = platform or sys.platform
    if platform != "linux" or _disabled(env) or env.get(MARKER_VAR):
        return None
    # NOTE: what this process has mapped only matters when the question is about this process
    if _cuda_build() or (environ is None and _mapped_openblas() is not None):
        return None
    library = library or fast_blas_library(platform)
    if library is None:
        return None
    lib_dirs = _gfortran_dirs(env)
    if lib_dirs is None:
        return None
    changes = {
        "LD_PRELOAD": ":".join([str(library), *filter(None, [env.get("LD_PRELOAD")])]),
        MARKER_VAR: str(library),
    }
    if lib_dirs:
        changes["LD_LIBRARY_PATH"] = ":".join([*lib_dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    if not any(env.get(var) for var in _THREAD_VARS):
        # OpenBLAS's default (all cores it sees) oversubscribes a cgroup-limited container
        changes["OPENBLAS_NUM_THREADS"] = str(cpus or usable_cpus())
    return changes


def ensure_fast_blas(argv: Sequence[str] | None = None) -> None:
    """Re-exec this interpreter with OpenBLAS preloaded, if that is needed and still possible.

    ``argv`` is the interpreter's command line after the executable; by default
    ``sys.orig_argv[1:]`` (which keeps ``-m mlx_server``, ``-X`` options, a console script's
    path, ...). Call it first thing in an entry point, before anything imports ``mlx``. Returns
    normally when nothing is to be done; otherwise never returns (``os.execve``).
    """
    changes = activation_env(os.environ)
    if changes is None:
        if os.environ.get(MARKER_VAR) and sys.platform == "linux" and _mapped_openblas() is None:
            log.warning("%s=%s is set but OpenBLAS is not loaded in this process (the loader "
                        "could not preload it?): MLX uses its reference BLAS", MARKER_VAR,
                        os.environ[MARKER_VAR])
        return
    if "mlx.core" in sys.modules:
        log.warning("mlx was imported before ensure_fast_blas(): the optimized BLAS cannot be "
                    "activated in this process; CPU inference will be slow (start through "
                    "`mlx-server` / `python -m mlx_server`, or set %s=0 to silence this)",
                    DISABLE_VAR)
        return
    args = list(sys.orig_argv[1:] if argv is None else argv)
    env = {**os.environ, **changes}
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.execve(sys.executable, [sys.executable, *args], env)


# ---------------------------------------------------------------------------------------------
# what is actually in use


def _mapped_openblas(maps: Path = Path("/proc/self/maps")) -> str | None:
    """Path of an OpenBLAS library mapped into this process, if any."""
    return _mapped_library("libopenblas", maps)


def _mapped_library(prefix: str, maps: Path = Path("/proc/self/maps")) -> str | None:
    try:
        text = maps.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith(prefix):
            return fields[5]
    return None


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


def blas_in_use(measure: bool = False) -> str:
    """Which BLAS serves MLX's float32 matmuls in this process, checked rather than assumed.

    On Linux: the library that ``cblas_sgemm`` resolves to in the global scope (``dladdr``),
    which is what libmlx binds to; e.g. ``"openblas 0.3.31 Zen (2 threads)"`` or
    ``"reference (libblas-bd8a282c.so.3.10.0)"``. ``measure`` appends a timed 512x512 float32
    matmul in GFLOP/s (imports mlx; ~0.1 s on the reference BLAS).
    """
    if sys.platform == "darwin":
        name = "accelerate"
    else:
        provider = _sgemm_provider()
        mapped = _mapped_openblas()
        if provider and "openblas" in Path(provider).name:
            name = _openblas_details(provider)
        elif provider:
            name = f"reference ({Path(provider).name})"
        elif mapped:
            name = _openblas_details(mapped)
        elif reference := _mapped_library("libblas"):
            name = f"reference ({Path(reference).name})"
        elif "mlx.core" in sys.modules:
            name = "reference (netlib)"
        else:
            name = "unknown (mlx not loaded)"
    if measure:
        name += f", {_gflops():.1f} GFLOP/s sgemm 512"
    return name


def backend_report(measure: bool = False) -> dict[str, str]:
    """Device, BLAS and CPU budget, for /health and the startup log line."""
    import mlx.core as mx

    device = mx.default_device()
    kind = "gpu" if device.type == mx.gpu else "cpu"
    report = {"device": kind, "mlx": getattr(mx, "__version__", "?")}
    if kind == "gpu":
        if mx.metal.is_available():
            report["gpu"] = "metal"
        elif hasattr(mx, "cuda") and mx.cuda.is_available():
            report["gpu"] = "cuda"
    report["blas"] = blas_in_use(measure=measure)
    report["cpus"] = str(usable_cpus())
    if sys.platform == "linux" and _disabled(os.environ):
        report["fast_blas"] = f"disabled ({DISABLE_VAR})"
    return report
