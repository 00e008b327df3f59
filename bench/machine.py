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


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in _read("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def cpu_busy(seconds: float = 1.0, exclude_groups: tuple[int, ...] = ()) -> float | None:
    """The fraction of all CPUs busy over the next `seconds` (0..1), None where /proc/stat is missing.

    Sampled while the benchmark itself is idle, it tells how much other work shared the machine.
    `exclude_groups`: process groups whose own CPU time is not counted (the benchmark's
    background worker, which should be idle but is part of what is measured).
    """
    if not _read("/proc/stat"):
        return None
    own0 = sum(cpu_seconds(group=g) for g in exclude_groups)
    total0, idle0 = _cpu_times()
    time.sleep(seconds)
    total1, idle1 = _cpu_times()
    own = sum(cpu_seconds(group=g) for g in exclude_groups) - own0
    total = total1 - total0
    if not total:
        return None
    busy = (total - (idle1 - idle0)) / total - own * _TICKS / total
    return round(max(busy, 0.0), 3)


def _stat_fields(pid: str) -> list[str] | None:
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    head, _, rest = raw.rpartition(")")
    return [head.split("(", 1)[-1], *rest.split()]


def cpu_seconds(*, group: int | None = None, command: str | None = None) -> float:
    """CPU seconds (user + system) used so far by the processes of a process group, or of a command name."""
    return sum(cpu_by_process(group=group, command=command).values())


def cpu_used_since(before: dict[int, float], *, group: int | None = None, command: str | None = None) -> float:
    """CPU seconds used since `before` (a cpu_by_process() snapshot) by the processes alive now.

    A process that ended meanwhile is left out rather than subtracted: with a sum of totals,
    a postgres backend of another client ending would make the difference negative.
    """
    now = cpu_by_process(group=group, command=command)
    return sum(max(seconds - before.get(pid, 0.0), 0.0) for pid, seconds in now.items())


def cpu_by_process(*, group: int | None = None, command: str | None = None) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process of a process group, or of a command name."""
    found: dict[int, float] = {}
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
        found[int(entry.name)] = (int(fields[12]) + int(fields[13])) / _TICKS
    return found


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
