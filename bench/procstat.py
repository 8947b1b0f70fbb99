"""CPU time and resident memory of a process and its children, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the appliance's supervisor and its workers)."""
    pids = [pid]
    index = 0
    while index < len(pids):
        current = pids[index]
        index += 1
        for task in _read_dir(Path(f"/proc/{current}/task")):
            children = _read(Path(f"/proc/{current}/task/{task}/children"))
            pids.extend(int(child) for child in children.split())
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (live processes only)."""
    total = 0
    for pid in pids:
        stat = _read(Path(f"/proc/{pid}/stat"))
        if not stat:
            continue
        # Fields after the command name, which is in parentheses and may contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLK_TCK


def machine_ticks() -> tuple[int, int]:
    """(idle, total) clock ticks of all CPUs since boot (/proc/stat; idle includes iowait).

    Between two readings, idle/total is the share of the machine nobody used: with the
    appliance and the load generator both running flat out it is near zero."""
    fields = [int(value) for value in _read(Path("/proc/stat")).split("\n", 1)[0].split()[1:]]
    if len(fields) < 5:
        return 0, 0
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return fields[3] + fields[4], sum(fields[:8])


def workers_pinned(pids: list[int]) -> bool:
    """True when every thread of each process may run on one CPU only, a different one per
    process (the appliance's `server.cpu_affinity: auto` with several workers)."""
    cpus: list[frozenset[int]] = []
    for pid in pids:
        masks = set()
        for task in _read_dir(Path(f"/proc/{pid}/task")):
            try:
                masks.add(frozenset(os.sched_getaffinity(int(task))))
            except OSError:  # the thread ended meanwhile
                continue
        if len(masks) != 1:
            return False
        (mask,) = masks
        cpus.append(mask)
    return len(pids) > 1 and all(len(m) == 1 for m in cpus) and len(set(cpus)) == len(cpus)


def rss_bytes(pids: list[int]) -> int:
    """Resident set size summed over the processes (shared pages counted in each)."""
    total = 0
    for pid in pids:
        for line in _read(Path(f"/proc/{pid}/status")).splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _read_dir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
