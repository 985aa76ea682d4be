"""Summaries of a ``py-spy record --format raw`` profile: where a process spent its CPU samples.

Raw lines are ``frame;frame;...;leaf COUNT`` with frames ``function (file:line)``, outermost first
(``--threads`` adds a ``thread (0x...)`` frame at the root).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: Packages a leaf frame is attributed to, first match wins (path fragments as py-spy prints them).
PACKAGES: tuple[tuple[str, str], ...] = (
    ("agents/fold.py", "adpulse fold (agents/fold.py)"),
    ("streams/codec.py", "adpulse decode (streams/codec.py)"),
    ("agents/fold_stage.py", "adpulse fold stage I/O (agents/fold_stage.py)"),
    ("agents/", "adpulse agents (other)"),
    ("streams/", "adpulse streams (other)"),
    ("aiokafka/", "aiokafka"),
    ("kafka/", "aiokafka"),
    ("faust/", "faust + mode"),
    ("mode/", "faust + mode"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("pydantic", "pydantic"),
    ("prometheus_client/", "prometheus_client"),
    ("redis/", "redis-py"),
    ("aiohttp/", "aiohttp (metrics page)"),
    ("threading.py", "threads (waiting/handoff)"),
    ("(<string>", "generated dataclass __init__"),
    ("concurrent/", "threads (waiting/handoff)"),
)


@dataclass(slots=True)
class Profile:
    """Sample counts: per leaf function (self), per function anywhere on the stack (inclusive), per thread."""

    total: int = 0
    self_: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)
    threads: Counter[str] = field(default_factory=Counter)

    def share(self, count: int) -> float:
        return 100.0 * count / self.total if self.total else 0.0


def parse(path: Path) -> Profile:
    """Read a raw py-spy profile."""
    profile = Profile()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread "):
            thread = frames.pop(0)
        if frames and frames[0].startswith("process "):
            frames.pop(0)
        if not frames:
            continue
        names = [_name(frame) for frame in frames]
        profile.total += count
        profile.threads[_thread_label(names, thread)] += count
        profile.self_[names[-1]] += count
        for name in set(names):
            profile.inclusive[name] += count
        profile.packages[_package(frames[-1])] += count
    return profile


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['func']} ({file})"


def _package(frame: str) -> str:
    for fragment, label in PACKAGES:
        if fragment in frame:
            return label
    return "other"


def _thread_label(names: list[str], thread: str) -> str:
    name = thread.split(": ", 1)[1] if ": " in thread else thread
    if name == "MainThread":
        return "MainThread (event loop: fold stage, Faust agents, timers, /metrics)"
    if any("mode/threads.py" in n or "faust/transport/" in n for n in names):
        return f"{name} (Faust's consumer thread)"
    return name


def markdown(profile: Profile, top: int = 15, focus: tuple[str, ...] = ()) -> str:
    """Tables: CPU by package (leaf frame), top functions by self time, and inclusive time of ``focus``."""
    lines = [f"{profile.total} samples.", "", "| where the leaf frame is | % of samples |", "|---|---|"]
    for label, count in profile.packages.most_common():
        lines.append(f"| {label} | {profile.share(count):.1f} |")
    lines += ["", "| thread | % of samples |", "|---|---|"]
    for label, count in profile.threads.most_common():
        lines.append(f"| {label} | {profile.share(count):.1f} |")
    lines += [
        "",
        f"Top {top} functions by self time (C code such as `orjson.loads` is charged to its caller):",
        "",
        "| function | self % | inclusive % |",
        "|---|---|---|",
    ]
    for name, count in profile.self_.most_common(top):
        lines.append(
            f"| `{name}` | {profile.share(count):.1f} | {profile.share(profile.inclusive[name]):.1f} |"
        )
    rows = [(name, count) for name, count in profile.inclusive.items() if any(f in name for f in focus)]
    if rows:
        lines += ["", "Inclusive time of the stages:", "", "| function | inclusive % |", "|---|---|"]
        for name, count in sorted(rows, key=lambda item: -item[1]):
            lines.append(f"| `{name}` | {profile.share(count):.1f} |")
    return "\n".join(lines)
