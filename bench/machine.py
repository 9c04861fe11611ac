"""What the run ran on, and what it cost the machine: CPU time per process,
peak memory, and the whole machine's busy time (so a noisy neighbour, such
as a test suite running at the same time, shows in the report)."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("trio", "trio-asyncio", "asyncpg", "msgspec", "hypercorn", "quart-trio", "structlog", "redis")


def own_usage() -> tuple[float, float]:
    """(CPU seconds, peak resident MiB) of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def process_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak resident MiB) of a live process, from /proc; zeros
    when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        peak_kib = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak_kib = int(line.split()[1])
        return cpu_s, peak_kib / 1024
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def postgres_cpu_s() -> float:
    """CPU seconds used so far by the PostgreSQL server: every live process
    named `postgres`, plus what the postmaster's children that exited used
    (the kernel adds a reaped child's time to its parent's cutime/cstime)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for _, name, fields in _live_processes():
        if name.startswith("postgres"):
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks
    return total


def child_processes(parent_pid: int) -> dict[int, list[str]]:
    """The live children of a process: pid to command line. Found by each
    process's parent in /proc (psutil does the same; not every kernel has
    /proc/<pid>/task/<tid>/children)."""
    children = {}
    for pid, _, fields in _live_processes():
        if int(fields[1]) == parent_pid:
            try:
                children[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue  # it exited meanwhile
    return children


def _live_processes() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, name, the fields of /proc/<pid>/stat after the name) of every
    process that can be read; nothing where there is no /proc."""
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        yield int(entry.name), text[text.find("(") + 1 : text.rfind(")")], text.rsplit(")", 1)[1].split()


class MachineSample:
    """The machine's CPU counters at one moment (/proc/stat)."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.busy_s, self.total_s = _cpu_times()
        self.postgres_s = postgres_cpu_s()

    def since(self, before: MachineSample) -> dict[str, float]:
        total = self.total_s - before.total_s
        return {
            "wall_s": round(self.at - before.at, 3),
            "machine_busy_fraction": round((self.busy_s - before.busy_s) / total, 3) if total > 0 else 0.0,
            "machine_busy_cpu_s": round(self.busy_s - before.busy_s, 2),
            # Negative when the server restarted meanwhile: unknown then.
            "postgres_cpu_s": round(self.postgres_s - before.postgres_s, 2) if self.postgres_s >= before.postgres_s else None,
        }


def _cpu_times() -> tuple[float, float]:
    try:
        values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / ticks, sum(values) / ticks


def _proc_lines(name: str) -> list[str]:
    """Lines of a /proc file; none where there is no /proc (not Linux)."""
    try:
        return Path("/proc", name).read_text().splitlines()
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    for line in _proc_lines("cpuinfo"):
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_gib = 0.0
    for line in _proc_lines("meminfo"):
        if line.startswith("MemTotal:"):
            memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "packages": versions,
    }
