"""The host probe over fake /proc and cgroup files: CPU budget, memory, mapped libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from mlx_server.adapters.host import Host

GIB = 2**30


def _host(tmp_path: Path, **fields: Any) -> Host:
    """A Host whose every file lives under tmp_path (absent until a test writes it)."""
    host = Host(platform="linux", meminfo=tmp_path / "meminfo", cgroup_root=tmp_path / "cg",
                self_cgroup=tmp_path / "self-cgroup", self_maps=tmp_path / "maps",
                affinity=frozenset(range(16)))
    return attrs.evolve(host, **fields)


def _cgroup_v2(host: Host, cpu_max: str, path: str = "/") -> None:
    directory = host.cgroup_root.joinpath(*path.strip("/").split("/")) if path != "/" \
        else host.cgroup_root
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.max").write_text(cpu_max + "\n")
    host.self_cgroup.write_text(f"0::{path}\n")


# --------------------------------------------------------------------------------- CPU budget


def test_usable_cpus_follows_the_affinity_mask(tmp_path: Path) -> None:
    host = _host(tmp_path)
    _cgroup_v2(host, "max 100000")
    assert attrs.evolve(host, affinity=frozenset(range(6))).usable_cpus() == 6
    assert attrs.evolve(host, affinity=frozenset({3})).usable_cpus() == 1


def test_usable_cpus_is_bounded_by_a_cgroup_v2_quota(tmp_path: Path) -> None:
    host = _host(tmp_path)
    _cgroup_v2(host, "200000 100000", "/box/job")
    assert host.usable_cpus() == 2
    box = host.cgroup_root / "box"
    (box / "cpu.max").write_text("100000 100000\n")  # a tighter parent wins
    assert host.usable_cpus() == 1
    (box / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one thread
    assert host.usable_cpus() == 1
    (box / "cpu.max").write_text("max 100000\n")
    (box / "job" / "cpu.max").write_text("350000 100000\n")  # 3.5 CPUs -> 4 threads
    assert host.usable_cpus() == 4
    assert attrs.evolve(host, affinity=frozenset({0, 1})).usable_cpus() == 2  # the other bound


def test_a_cgroup_v2_quota_at_the_namespaced_mount(tmp_path: Path) -> None:
    """Inside a container the process's cgroup path need not exist under the mount: the mount's
    own cpu.max still counts."""
    host = _host(tmp_path)
    _cgroup_v2(host, "150000 100000")
    host.self_cgroup.write_text("0::/not/mounted/here\n")
    assert host.cpu_quota() == 1.5
    assert host.usable_cpus() == 2  # 1.5 rounds up


def test_usable_cpus_reads_a_cgroup_v1_quota(tmp_path: Path) -> None:
    host = _host(tmp_path, affinity=frozenset(range(8)))
    mount = host.cgroup_root / "cpu,cpuacct"
    job = mount / "docker" / "abc"
    job.mkdir(parents=True)
    (job / "cpu.cfs_quota_us").write_text("300000\n")
    (job / "cpu.cfs_period_us").write_text("100000\n")
    (mount / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited at the root
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    host.self_cgroup.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert host.usable_cpus() == 3


def test_usable_cpus_without_cgroup_files(tmp_path: Path) -> None:
    host = _host(tmp_path, affinity=frozenset({0, 1, 2}))
    assert host.cpu_quota() is None
    assert host.usable_cpus() == 3


def test_malformed_cgroup_files_are_no_quota(tmp_path: Path) -> None:
    host = _host(tmp_path, affinity=frozenset({0, 1, 2}))
    _cgroup_v2(host, "lots 0")
    assert host.usable_cpus() == 3
    _cgroup_v2(host, "100000 0")
    assert host.usable_cpus() == 3


def test_the_real_host_grants_at_least_one_cpu() -> None:
    assert Host().usable_cpus() >= 1


# ------------------------------------------------------------------------------------ memory


def _meminfo(host: Host, available_kib: int, total_kib: int = 32 * 2**20) -> None:
    host.meminfo.write_text(f"MemTotal:       {total_kib} kB\nMemFree:        1000 kB\n"
                            f"MemAvailable:   {available_kib} kB\n")


def test_available_memory_is_memavailable(tmp_path: Path) -> None:
    host = _host(tmp_path)
    _meminfo(host, 8 * 2**20)
    assert host.available_memory_bytes() == 8 * GIB
    assert host.total_memory_bytes() == 32 * GIB


def test_available_memory_is_bounded_by_the_cgroup_limit(tmp_path: Path) -> None:
    host = _host(tmp_path)
    _meminfo(host, 8 * 2**20)
    host.cgroup_root.mkdir()
    (host.cgroup_root / "memory.max").write_text(f"{4 * GIB}\n")
    (host.cgroup_root / "memory.current").write_text(f"{1 * GIB}\n")
    assert host.available_memory_bytes() == 3 * GIB  # the limit less what the cgroup uses
    (host.cgroup_root / "memory.max").write_text(f"{64 * GIB}\n")
    assert host.available_memory_bytes() == 8 * GIB  # a loose limit: MemAvailable is tighter
    (host.cgroup_root / "memory.max").write_text("max\n")
    assert host.available_memory_bytes() == 8 * GIB


def test_unreadable_meminfo_falls_back_to_sysconf(tmp_path: Path) -> None:
    host = _host(tmp_path)  # no meminfo file
    assert (host.available_memory_bytes() or 0) > 0  # free pages, from sysconf
    assert (host.total_memory_bytes() or 0) > 0
    host.meminfo.write_text("MemAvailable: lots kB\n")  # malformed: the same fallback
    host.cgroup_root.mkdir()
    (host.cgroup_root / "memory.max").write_text("4096\n")
    (host.cgroup_root / "memory.current").write_text("0\n")
    assert host.available_memory_bytes() == 4096  # and the cgroup still bounds it


def test_a_malformed_cgroup_memory_limit_is_ignored(tmp_path: Path) -> None:
    host = _host(tmp_path)
    _meminfo(host, 2**20)
    host.cgroup_root.mkdir()
    (host.cgroup_root / "memory.max").write_text(f"{GIB // 2}\n")  # memory.current missing
    assert host.available_memory_bytes() == GIB


# --------------------------------------------------------------------------------- libraries


def test_mapped_library_reads_the_process_maps(tmp_path: Path) -> None:
    host = _host(tmp_path)
    assert host.mapped_library("libopenblas") is None  # no maps file: nothing known
    host.self_maps.write_text(
        "55d0-55d1 r--p 00000000 08:01 1 /usr/bin/python3.11\n"
        "7f00-7f01 r-xp 00000000 00:00 0 \n"
        "7f10-7f20 r-xp 00001000 08:01 2 /opt/lib dir/libopenblas.so.0\n")
    assert host.mapped_library("libopenblas") == "/opt/lib dir/libopenblas.so.0"
    assert host.mapped_library("libblas") is None


def test_the_prefix_cache_budget_is_an_eighth_of_memtotal_within_bounds(tmp_path: Path) -> None:
    from mlx_server.adapters.mlx.kv_store import default_budget_mb

    host = _host(tmp_path)
    for total_gib, budget_mb in ((16, 2048), (1, 256), (64, 4096)):
        host.meminfo.write_text(f"MemTotal: {total_gib * GIB // 1024} kB\n")
        assert default_budget_mb(host) == budget_mb


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path: Path) -> None:
    host = _host(tmp_path, cpuinfo=tmp_path / "cpuinfo")
    assert host.cpu_model() is None  # no file: unknown, not an error
    host.cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.00GHz\nflags\t: fpu\n")
    assert host.cpu_model() == "Example CPU @ 2.00GHz"
