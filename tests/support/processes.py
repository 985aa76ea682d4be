"""Start adpulse processes as a user would, watch them, and stop (or kill -9) them by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from adpulse.metrics_page import read_metrics
from adpulse.settings import Settings


class WorkerProcess:
    """``adpulse worker`` in a subprocess, with its log in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.to_env()}
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adpulse", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def metrics(self) -> str | None:
        """The worker's /metrics page, or None while it is not serving."""
        return read_metrics(f"http://{self.settings.web_host}:{self.settings.web_port}/metrics")

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Wait until /metrics answers; fail at once (with the log) if the process exits instead."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"worker exited with {self.proc.returncode if self.proc else None}:\n{self.log_tail()}"
                )
            return self.metrics() is not None

        wait_for(ready, timeout_s, "the worker's /metrics")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_story(self, lines: int = 120) -> str:
        """The log lines that tell what happened (group changes, the fold's resumptions and replays,
        recoveries, warnings and errors), without the repeated noise of an outage or of alerts: what a
        failed test needs when a tail shows only the last seconds."""
        told = [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if _STORY.search(line) and not _NOISE.search(line)
        ]
        skipped = len(told) - lines
        head = [f"[{skipped} earlier lines of the story left out]"] if skipped > 0 else []
        return "\n".join(head + told[-lines:])


_STORY = re.compile(
    r"WARNING|ERROR|CRITICAL|Traceback|fold:|table \w+:|[Jj]oined group|assigned partitions|Revoking|"
    r"Signal received|crashed|tick:|Recovery complete|\]: Ready|Metadata for topic has changed"
)
_NOISE = re.compile(
    r"Unable connect to node|Failed fetch messages|producer buffer full|Timer \S+ is overlapping|"
    r"NodeNotReadyError|Heartbeat failed|Marking the coordinator dead"
)


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.5) -> object:
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout_s`` (a bound, not a timer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
