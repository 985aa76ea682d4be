"""Servers the embedded stack starts (Tansu, Valkey, Kafka nodes): detached, known by their start time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """Kernel start time of a live process, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces; the fields after it start with the state (field 3).
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def spawn_detached(
    command: Sequence[str], log_path: Path, banner: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output appended to ``log_path`` after a timestamped ``banner`` line.

    A new session: the server outlives the command that started it and ignores the terminal's Ctrl-C.
    """
    with log_path.open("ab") as log_file:
        log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} adpulse: {banner}\n".encode())
        log_file.flush()
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
