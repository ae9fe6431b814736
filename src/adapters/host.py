"""What the machine grants this process: CPUs, memory, and the libraries mapped into it.

Every reading comes from a file the kernel publishes (``/proc``, the cgroup filesystem); their
paths are fields with the real locations as defaults, so a test writes fake files into a
temporary directory and builds a ``Host`` over them instead of patching functions. Nothing here
imports MLX: the process start-up (``app/process.py``) asks before MLX loads.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import attrs

__all__ = ["Host"]


@attrs.frozen
class Host:
    """The probe; ``affinity`` None asks the kernel (``sched_getaffinity``) at each call."""

    platform: str = sys.platform
    meminfo: Path = Path("/proc/meminfo")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    self_cgroup: Path = Path("/proc/self/cgroup")
    self_maps: Path = Path("/proc/self/maps")
    cpuinfo: Path = Path("/proc/cpuinfo")
    affinity: frozenset[int] | None = None

    # ----------------------------------------------------------------------------------- CPUs

    def usable_cpus(self) -> int:
        """CPUs this process may use: its affinity mask, bounded by a cgroup v2/v1 CPU quota.

        A quota of 150000/100000 allows 1.5 CPUs of time; that is rounded up (2 threads) only
        when the fraction is at least one half, else down, with a minimum of one: a thread per
        fraction of a CPU would only queue behind the quota.
        """
        cpus = max(1, len(self._affinity()))
        quota = self.cpu_quota()
        if quota is not None:
            cpus = min(cpus, max(1, math.floor(quota + 0.5)))
        return cpus

    def cpu_model(self) -> str | None:
        """The CPU's model name, for reports (None where /proc/cpuinfo does not say)."""
        try:
            for line in self.cpuinfo.read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    def cpu_quota(self) -> float | None:
        """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors, if any."""
        quotas: list[float] = []
        for hierarchy, controllers, path in self._cgroups():
            if hierarchy == "0" and not controllers:  # cgroup v2 unified hierarchy
                quotas += [q for d in _ancestors(self.cgroup_root, path) for q in _v2_quota(d)]
            elif "cpu" in controllers.split(","):  # cgroup v1 cpu controller
                quotas += self._v1_quotas(controllers, path)
        return min(quotas) if quotas else None

    def _affinity(self) -> frozenset[int]:
        if self.affinity is not None:
            return self.affinity
        try:
            return frozenset(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS has no affinity call
            return frozenset(range(os.cpu_count() or 1))

    def _cgroups(self) -> list[tuple[str, str, str]]:
        """(hierarchy, controllers, path) per line of /proc/self/cgroup; none readable: the root
        of a v2 hierarchy (a container that hides the file still mounts its own cgroup)."""
        try:
            lines = self.self_cgroup.read_text().splitlines()
        except OSError:
            lines = []
        entries = []
        for line in lines or ["0::/"]:
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            entries.append((hierarchy, controllers, path))
        return entries

    def _v1_quotas(self, controllers: str, path: str) -> list[float]:
        root = self.cgroup_root
        for mount in (root / controllers, root / "cpu,cpuacct", root / "cpu"):
            if mount.is_dir():
                return [q for d in _ancestors(mount, path) for q in _v1_quota(d)]
        return []

    # --------------------------------------------------------------------------------- memory

    def available_memory_bytes(self) -> int | None:
        """MemAvailable, bounded by a cgroup v2 memory.max (less its usage); None if unknown."""
        available = self._meminfo("MemAvailable:")
        if available is None:
            available = _sysconf_bytes("SC_AVPHYS_PAGES")
        headroom = self._cgroup_headroom()
        if headroom is not None:
            available = headroom if available is None else min(available, headroom)
        return available

    def total_memory_bytes(self) -> int | None:
        """MemTotal (physical memory), for budgets sized as a share of the machine."""
        total = self._meminfo("MemTotal:")
        return _sysconf_bytes("SC_PHYS_PAGES") if total is None else total

    def _meminfo(self, key: str) -> int | None:
        try:
            for line in self.meminfo.read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def _cgroup_headroom(self) -> int | None:
        """memory.max less memory.current at the cgroup v2 root; None when unlimited/unknown."""
        try:
            limit = (self.cgroup_root / "memory.max").read_text().strip()
            if limit == "max":
                return None
            return int(limit) - int((self.cgroup_root / "memory.current").read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------------------ libraries

    def mapped_library(self, prefix: str) -> str | None:
        """Path of a library whose file name starts with ``prefix`` mapped into this process:
        what the loader really loaded, whatever the environment asked for."""
        try:
            text = self.self_maps.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and Path(fields[5]).name.startswith(prefix):
                return fields[5]
        return None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """mount/path and its parents up to mount; inside a container the path may not exist
    under the (namespaced) mount, so the mount itself is always included."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    found = [mount.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)]
    return [*found, mount]


def _v2_quota(directory: Path) -> list[float]:
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return []
    if len(fields) < 2 or fields[0] == "max":
        return []
    try:
        return [int(fields[0]) / int(fields[1])]
    except (ValueError, ZeroDivisionError):
        return []


def _v1_quota(directory: Path) -> list[float]:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []


def _sysconf_bytes(pages: str) -> int | None:
    """Pages times page size from sysconf: the fallback where /proc/meminfo is unreadable."""
    try:
        return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
