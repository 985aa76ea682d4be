"""The trackers' side on the real broker and Redis: `adpulse dlq` against the worker's counters, data-health
alerts for bad records and for a tracker outage while spend flows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from adpulse.settings import Settings
from adpulse.stack import free_port
from tests.support.processes import WorkerProcess, metric_sum, wait_for

pytestmark = pytest.mark.integration


def adpulse(settings: Settings, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "adpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _rfc3339(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def test_adpulse_dlq_lists_every_reject_with_the_counts_of_adpulse_events_total(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(web_port=free_port(), home=tmp_path / "home")
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        start_s = int(time.time()) // 60 * 60 - 20 * 60
        truth_path = tmp_path / "truth.json"
        sim = adpulse(
            settings,
            *("simulate", "--start", _rfc3339(start_s), "--duration", "15m", "--rate", "40", "--flat"),
            *("--seed", "3", "--quiet", "--truth", str(truth_path)),
            *("--scenario", "bad-records:fraction=0.05", "--scenario", "late-events:fraction=0.03"),
            *("--scenario", "duplicates:fraction=0.03"),
        )
        assert sim.returncode == 0, sim.stderr
        truth = orjson.loads(truth_path.read_bytes())
        sent: int = truth["sent"]

        def counted() -> bool:
            assert worker.alive(), worker.log_tail()
            return metric_sum(worker.metrics(), "adpulse_events_total") >= sent

        wait_for(counted, 120, f"the worker to account for all {sent} records")
        metrics = worker.metrics()
        outcomes = {
            outcome: metric_sum(metrics, "adpulse_events_total", outcome=outcome)
            for outcome in ("invalid", "late", "duplicate")
        }
        assert all(n > 0 for n in outcomes.values()), outcomes

        listing = adpulse(settings, "dlq", "--json")
        assert listing.returncode == 0, listing.stderr
        summary: dict[str, Any] = orjson.loads(listing.stdout)
        by_reason = summary["by_reason"]
        assert summary["total"] == sum(outcomes.values())
        assert by_reason.get("late", 0) == outcomes["late"]
        assert by_reason.get("duplicate", 0) == outcomes["duplicate"]
        assert sum(n for r, n in by_reason.items() if r not in ("late", "duplicate")) == outcomes["invalid"]
        per_reason = {r: metric_sum(metrics, "adpulse_dlq_records_total", reason=r) for r in by_reason}
        assert per_reason == {r: float(n) for r, n in by_reason.items()}
        # The simulator keys by channel: every reject counts against one of its channels.
        assert set(summary["by_channel"]) <= set(truth["channels"])
        assert sum(summary["by_channel"].values()) == summary["total"]
        assert all(s["reason"] and s["detail"] and s["channel"] for s in summary["samples"])
        assert any(s["field"] for s in summary["samples"] if s["reason"] == "invalid")

        only = adpulse(settings, "dlq", "--json", "--reason", "late", "--channel", "douyin")
        filtered = orjson.loads(only.stdout)
        assert set(filtered["by_reason"]) <= {"late"} and set(filtered["by_channel"]) <= {"douyin"}
        assert filtered["total"] == sum(
            1 for s in _all_rejects(settings) if s["reason"] == "late" and s["channel"] == "douyin"
        )
        text = adpulse(settings, "dlq", "--reason", "invalid")
        assert text.returncode == 0 and "rejected records" in text.stdout and "»" in text.stdout
    finally:
        worker.stop()


def _all_rejects(settings: Settings) -> list[dict[str, Any]]:
    """Every reject, one JSON line each, from `adpulse dlq --follow --json` stopped after a while."""
    env = {**os.environ, **settings.to_env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "adpulse", "dlq", "--follow", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]
