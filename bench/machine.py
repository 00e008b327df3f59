"""What the benchmark ran on, and whether something else was using the CPUs meanwhile."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def describe() -> dict[str, Any]:
    """Cores, CPU model, memory and kernel."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release()}


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in _read("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def cpu_busy(seconds: float = 1.0) -> float | None:
    """The fraction of all CPUs busy over the next `seconds` (0..1), None where /proc/stat is missing.

    Sampled while the benchmark itself is idle, it tells how much other work shared the machine.
    """
    if not _read("/proc/stat"):
        return None
    total0, idle0 = _cpu_times()
    time.sleep(seconds)
    total1, idle1 = _cpu_times()
    total = total1 - total0
    return round(1 - (idle1 - idle0) / total, 3) if total else None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: str) -> list[str] | None:
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    head, _, rest = raw.rpartition(")")
    return [head.split("(", 1)[-1], *rest.split()]


def cpu_seconds(*, group: int | None = None, command: str | None = None) -> float:
    """CPU seconds (user + system) used so far by the processes of a process group, or of a command name."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None:
            continue
        # After the name: state, ppid, pgrp, ...; utime and stime are fields 14 and 15 of stat.
        if group is not None and fields[3] != str(group):
            continue
        if command is not None and fields[0] != command:
            continue
        total += int(fields[12]) + int(fields[13])
    return total / _TICKS


def busy_seconds() -> float:
    """CPU seconds all processes have used so far in user and system mode, all cores (/proc/stat).

    Interrupt time (loopback networking lands there) and steal time are left out: they
    are no process's, so they cannot be told apart from the benchmark's own work.
    """
    line = _read("/proc/stat").splitlines()
    if not line:
        return 0.0
    fields = [int(v) for v in line[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / _TICKS
