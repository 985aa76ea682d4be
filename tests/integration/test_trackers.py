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

from adpulse.metrics_page import metric_sum
from adpulse.settings import Settings
from adpulse.stack import free_port
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


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
        assert text.returncode == 0 and "rejected records" in text.stdout
        # Each sample points at its field: marked in the original, or named as missing.
        assert text.stdout.count("»") + text.stdout.count("(no '") >= 1
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


def stream_alerts(settings: Settings) -> list[dict[str, Any]]:
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(f"{settings.redis_prefix}:alerts")  # type: ignore[assignment]
        return [orjson.loads(fields[b"alert"]) for _, fields in entries]
    finally:
        client.close()


def _explain(alerts: list[dict[str, Any]]) -> str:
    return "\n".join(f"{a['status']} {a['fingerprint']}: {a['summary']}" for a in alerts)


def test_bad_records_on_one_channel_raise_one_data_health_alert_for_that_channel_only(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    settings = make_settings(
        web_port=free_port(),
        home=tmp_path / "home",
        rules_file=rules,
        health_bucket_s=5,
        health_window_s=15,
        health_baseline_s=60,
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        sim = adpulse(
            settings,
            *("simulate", "--start", "-30m", "--rate", "40", "--flat", "--seed", "4", "--quiet"),
            *("--scenario", "bad-records:channel=taobao,fraction=0.1"),
        )
        assert sim.returncode == 0, sim.stderr

        def data_health() -> list[dict[str, Any]]:
            assert worker.alive(), worker.log_tail()
            return [a for a in stream_alerts(settings) if a["kind"] == "data_health"]

        wait_for(data_health, 90, "a data-health alert")
        # A few more judging rounds (one per 5 s bucket): nothing else may fire.
        time.sleep(20)
        fired = [a for a in data_health() if a["status"] == "firing" and a.get("change") != "repeat"]
        assert [(a["metric"], a["channel"]) for a in fired] == [("rejects", "taobao")], _explain(
            data_health()
        )
        alert = fired[0]
        assert 0.05 < alert["value"] < 0.2 and alert["evidence"]["p_value"] < 0.001
        assert alert["runbook_url"].endswith("#data_health")
        assert "adpulse dlq --channel taobao" in alert["description"]
    finally:
        worker.stop()


def test_a_tracker_outage_with_spend_flowing_is_data_health_not_a_ctr_alert(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")  # anomalies only: the seed targets would flag low-CTR channels anyway
    settings = make_settings(
        grace_s=30.0, tick_s=0.5, web_port=free_port(), home=tmp_path / "home", rules_file=rules
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        # Up to now, starting on a minute; wechat's site tracker is down from 130 to 142 min, while the ad
        # platform's impression and spend reports and the orders keep coming.
        start_s = int(time.time()) // 60 * 60 - 150 * 60
        sim = adpulse(
            settings,
            *("simulate", "--start", _rfc3339(start_s), "--rate", "20", "--flat", "--seed", "8", "--quiet"),
            *("--scenario", "tracker-outage:channel=wechat,at=130m,for=12m,spend=keep"),
        )
        assert sim.returncode == 0, sim.stderr

        def judged_to_the_end() -> bool:
            assert worker.alive(), worker.log_tail()
            # Every minute window up to the end of the backfill has been judged (rolling windows included).
            return any(
                a["kind"] == "data_health" and a["status"] == "resolved" for a in stream_alerts(settings)
            )

        try:
            wait_for(judged_to_the_end, 180, "the outage alert to fire and resolve", interval_s=2.0)
        except AssertionError:
            raise AssertionError(_explain(stream_alerts(settings)) + "\n" + worker.log_tail()) from None
        time.sleep(3)
        alerts = [a for a in stream_alerts(settings) if a.get("change") != "repeat"]
        wechat = [(a["status"], a["kind"], a["metric"]) for a in alerts if a["channel"] == "wechat"]
        # One alert: fired (perhaps escalated as the outage grew), then resolved.
        assert {w[1:] for w in wechat} == {("data_health", "events")}, _explain(alerts)
        assert (wechat[0][0], wechat[-1][0]) == ("firing", "resolved")
        assert len({a["fingerprint"] for a in alerts if a["channel"] == "wechat"}) == 1
        fired = next(a for a in alerts if a["channel"] == "wechat")
        assert "spend keeps arriving" in fired["summary"] and fired["evidence"]["expected_clicks"] >= 10
        assert not [a for a in alerts if a["metric"] in ("ctr", "cvr", "cpc")], _explain(alerts)
    finally:
        worker.stop()
