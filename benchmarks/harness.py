"""What the benchmark scripts share: the processes they start, free ports, the code and machine under test,
percentiles, and the generated sections of BENCHMARKS.md.

The scripts run as ``python benchmarks/<script>.py``; this module and :mod:`procstat` sit beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from procstat import load_average, machine, machine_markdown

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: ``ADPULSE_CHANGELOG_BATCH_BYTES`` of a worker on Apache Kafka, as docs/operations.md and the compose file
#: set it (the default, 1, is what the embedded broker needs; on Kafka a round trip per changelog record).
KAFKA_CHANGELOG_BATCH_BYTES = 65536


def broker_env(broker: str) -> dict[str, str]:
    """What a worker on ``broker`` is configured with beyond the defaults, as docs/operations.md says."""
    return {"ADPULSE_CHANGELOG_BATCH_BYTES": str(KAFKA_CHANGELOG_BATCH_BYTES)} if broker == "kafka" else {}


@dataclass
class Started:
    """Processes this run started, stopped (by pid) at exit whatever happens."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` different free loopback ports."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def code_version() -> str:
    """The commit under test, and whether the worker's packages or the benchmarks had uncommitted changes."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = [
        line
        for line in git(
            "status", "--porcelain", "--", "adpulse", "agents", "streams", "alerts", "benchmarks"
        ).splitlines()
        if line
    ]
    return f"{commit}" + (f" + uncommitted changes in {len(dirty)} files" if dirty else "")


def command_and_machine(script: str, argv: list[str] | None) -> tuple[str, dict[str, str]]:
    """The command line that reruns this measurement, and the machine and code it runs on (printed too)."""
    command = f"python benchmarks/{script} {shlex.join(sys.argv[1:] if argv is None else argv)}".strip()
    info = {**machine(), "load": load_average(), "code": code_version()}
    print(f"machine: {info}")
    return command, info


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default): rank p·(n−1) of the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = p * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def section_head(
    begin: str, title: str, command: str, info: dict[str, str], load_note: str = ""
) -> list[str]:
    """The first lines of a generated section: its marker, title, when, the command and the machine."""
    return [
        begin,
        f"## {title}",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with",
        "",
        "```",
        command,
        "```",
        "",
        *machine_markdown(info, load_note),
        "",
    ]


def write_markdown(path: Path, section: str, begin: str, end: str) -> None:
    """Replace a script's section of ``path`` (between ``begin`` and ``end``, or append it at the end),
    keeping everything else."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def section_markers(script: str, broker: str = "tansu", flag: str = "") -> tuple[str, str]:
    """The begin and end markers of a script's generated section of BENCHMARKS.md: one section per broker
    (and per ``flag``, such as ``--load``), so that each stays when another is rerun."""
    what = (
        f"benchmarks/{script}"
        + (f" {flag}" if flag else "")
        + ("" if broker == "tansu" else f" --broker {broker}")
    )
    return f"<!-- {what}: begin (generated; rerun the script to refresh) -->", f"<!-- {what}: end -->"


def add_report_args(parser: argparse.ArgumentParser) -> None:
    """``--broker``, ``--output`` and ``--no-write``, as the scripts that write a section take them."""
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="broker to start: the embedded Tansu (default) or Apache Kafka (needs Java 17 and Maven)",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file whose section is rewritten"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave the markdown file alone")


def publish(text: str, args: argparse.Namespace, markers: tuple[str, str]) -> None:
    """Print a generated section and, unless ``--no-write``, put it into ``--output``."""
    print(text)
    if not args.no_write:
        write_markdown(args.output, text, *markers)
        print(f"wrote {args.output}")
