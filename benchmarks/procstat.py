"""What /proc says about a process and the machine (Linux only)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all threads), or ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def status_kb(pid: int, name: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (``VmHWM`` is the peak resident set), or ``None``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine() -> dict[str, str]:
    """CPU count and model, RAM, OS and Python of this machine."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }


def load_average() -> str:
    """The 1-minute load average (the machine is shared; high load means the figures are pessimistic)."""
    return f"{os.getloadavg()[0]:.2f}"


def run_delay_seconds(pid: int) -> float | None:
    """Time the threads of ``pid`` were runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with open(task / "schedstat") as stat:
                total += int(stat.read().split()[1])
    except OSError:
        return None
    return total / 1e9


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine used so far (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def machine_markdown(info: dict[str, str], load_note: str = "") -> list[str]:
    """The "machine" table every benchmark section in BENCHMARKS.md starts with."""
    return [
        "| machine | |",
        "|---|---|",
        f"| CPUs (nproc) | {info['nproc']} |",
        f"| CPU model | {info['cpu']} |",
        f"| RAM | {info['ram']} |",
        f"| OS | {info['os']} |",
        f"| Python | {info['python']} |",
        f"| code | {info['code']} |",
        f"| load average (1 min) at start | {info['load']}{load_note} |",
    ]
