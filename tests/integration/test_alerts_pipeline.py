"""Alerts end to end on the real broker and Redis: a CTR drop and a budget crossing its lines."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from adpulse.metrics_page import metric_sum
from adpulse.settings import Settings
from adpulse.stack import free_port
from streams.metadata import topic_partitions
from tests.support.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def adpulse(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "adpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def stream_alerts(settings: Settings) -> list[dict]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return [
            orjson.loads(fields[b"alert"]) for _, fields in client.xrange(f"{settings.redis_prefix}:alerts")
        ]
    finally:
        client.close()


def active_alerts(settings: Settings) -> dict[str, dict]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return {
            k.decode(): orjson.loads(v)
            for k, v in client.hgetall(f"{settings.redis_prefix}:alerts:active").items()
        }
    finally:
        client.close()


def _rfc3339(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def _explain(settings: Settings) -> str:
    """Every alert in the stream with the evidence behind it, for a failure message."""
    return "\n".join(
        f"{a['status']} {a['fingerprint']} {a['window_start']}..{a['window_end']}: {a['summary']}\n"
        f"  {a.get('evidence')}"
        for a in stream_alerts(settings)
    )


def test_ctr_drop_fires_once_for_that_channel_and_resolves_after_recovery(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")  # anomalies only: the seed targets would flag low-CTR channels too
    # Idle partitions must not let event time run to the wall clock between the two backfills below.
    settings = make_settings(
        grace_s=30.0,
        idle_partition_s=3600.0,
        tick_s=0.5,
        flush_interval_s=0.25,
        web_port=free_port(),
        home=tmp_path / "home",
        rules_file=rules,
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        # Two backfills up to now (one that stopped short of the present would be a real outage of every
        # channel): the first ends while douyin's CTR is still down, so the alert stays firing until the
        # second one, starting where the first ended, brings the recovery. Both start on a minute, so the
        # minute windows hold the same seeded records in every run.
        start_s = int(time.time()) // 60 * 60 - 4 * 3600
        sim = adpulse(
            settings,
            "simulate",
            "--start",
            _rfc3339(start_s),
            "--duration",
            "150m",
            "--speed",
            "max",
            "--rate",
            "20",
            "--flat",
            "--seed",
            "5",
            "--quiet",
            "--scenario",
            "ctr-drop:channel=douyin,at=120m",
        )
        assert sim.returncode == 0, sim.stderr

        def firing() -> bool:
            assert worker.alive(), worker.log_tail()
            return any(a["status"] == "firing" for a in stream_alerts(settings))

        try:
            wait_for(firing, 120, "the CTR drop to fire")
        except AssertionError:
            raise AssertionError(f"alerts: {stream_alerts(settings)}\n{worker.log_tail()}") from None
        wait_for(lambda: metric_sum(worker.metrics(), "adpulse_alerts_firing") > 0, 10, "the firing gauge")
        metrics = str(wait_for(worker.metrics, 60, "the worker's /metrics page"))
        assert metric_sum(metrics, "adpulse_alerts_firing") == 1
        assert metric_sum(metrics, "adpulse_alerts_firing", kind="anomaly", channel="douyin") == 1
        assert list(active_alerts(settings)) == [stream_alerts(settings)[0]["fingerprint"]], _explain(
            settings
        )

        sim = adpulse(
            settings,
            "simulate",
            "--start",
            _rfc3339(start_s + 150 * 60),
            "--speed",
            "max",
            "--rate",
            "20",
            "--flat",
            "--seed",
            "6",
            "--quiet",
        )
        assert sim.returncode == 0, sim.stderr

        def resolved() -> bool:
            assert worker.alive(), worker.log_tail()
            return any(a["status"] == "resolved" for a in stream_alerts(settings))

        try:
            wait_for(resolved, 180, "the CTR drop to resolve", interval_s=2.0)
        except AssertionError:
            raise AssertionError(f"alerts: {stream_alerts(settings)}\n{worker.log_tail()}") from None
        time.sleep(3)  # a few more ticks: nothing else may fire
        entries = [a for a in stream_alerts(settings) if a.get("change") != "repeat"]
        assert [(a["status"], a["kind"], a["metric"], a["channel"]) for a in entries] == [
            ("firing", "anomaly", "ctr", "douyin"),
            ("resolved", "anomaly", "ctr", "douyin"),
        ], _explain(settings)
        fired, done = entries
        assert fired["fingerprint"] == done["fingerprint"] and fired["id"] != done["id"]
        # The rolling window that fires still overlaps the minutes before the drop (-60 %): it fires once
        # its interval reaches a 50 % drop (-43 % seen).
        assert fired["value"] < fired["baseline"] and fired["change_pct"] <= -35
        assert fired["evidence"]["p_value"] < 0.001 and fired["summary"].startswith("CTR")
        assert fired["evidence"]["campaigns"], "a channel-level drop names the campaigns behind it"
        assert fired["runbook_url"].endswith("#anomaly") and "var-channel=douyin" in fired["dashboard_url"]
        assert done["resolved_at"] and done["value"] is not None
        assert active_alerts(settings) == {}
        assert metric_sum(worker.metrics(), "adpulse_alerts_total", kind="anomaly") == 1
        assert metric_sum(worker.metrics(), "adpulse_alerts_firing") == 0
        listing = adpulse(settings, "alerts", "--json")
        assert listing.returncode == 0 and orjson.loads(listing.stdout) == []
    finally:
        worker.stop()


async def _spend(settings: Settings, channel: str, amounts: list[float], tag: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for i, cost in enumerate(amounts):
            value = {"event_id": f"{tag}-{i}", "ts": now, "channel": channel, "cost": cost}
            await producer.send_and_wait(settings.topic("spend"), orjson.dumps(value), key=channel.encode())
    finally:
        await producer.stop()


def test_budget_warns_once_at_80_percent_and_is_critical_once_at_100(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Only spend flows: wechat's partition gets its event time (budgets are judged with it) once its silent
    # clicks and orders sources are idle, 3 s here instead of the default 30.
    settings = make_settings(
        tick_s=0.5, flush_interval_s=0.25, idle_partition_s=3.0, web_port=free_port(), home=tmp_path / "home"
    )
    assert (
        adpulse(
            settings, "budget", "set", "wechat", "1000", "--period", "day", "--owner", "@li.na"
        ).returncode
        == 0
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()

    def budget_lines() -> list[dict]:
        return [
            a
            for a in stream_alerts(settings)
            if a["kind"] == "budget" and a["metric"] == "spend" and a.get("change") != "repeat"
        ]

    try:
        worker.wait_ready()
        asyncio.run(_spend(settings, "wechat", [300.0, 300.0, 250.0], "a"))  # 850: past 80 %
        wait_for(lambda: budget_lines(), 60, "the 80 % warning")
        time.sleep(2)
        assert [(a["status"], a["severity"]) for a in budget_lines()] == [("firing", "warning")]
        warning = budget_lines()[0]
        assert "approve" in warning["description"] and warning["owner"] == "@li.na"

        asyncio.run(_spend(settings, "wechat", [100.0, 100.0], "b"))  # 1050: past 100 %
        wait_for(lambda: any(a["severity"] == "critical" for a in budget_lines()), 60, "the 100 % critical")
        time.sleep(2)
        firing = [(a["status"], a["severity"]) for a in budget_lines() if a["status"] == "firing"]
        assert firing == [("firing", "warning"), ("firing", "critical")], budget_lines()
        assert metric_sum(worker.metrics(), "adpulse_budget_used_ratio", channel="wechat") == pytest.approx(
            1.05
        )
    finally:
        worker.stop()


async def _events_of(settings: Settings, path: Path) -> int:
    """Every record of the source topics, as the worker read them, into a JSONL file (with its topic)."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [
            tp
            for topic in ("clicks", "orders", "spend")
            for tp in await topic_partitions(settings.kafka_client_options(), settings.topic(topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        written = 0
        with path.open("wb") as out:
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for tp, batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).items():
                    topic = tp.topic.removeprefix(settings.topic_prefix)
                    for record in batch:
                        assert record.value is not None
                        out.write(orjson.dumps({**orjson.loads(record.value), "topic": topic}) + b"\n")
                        written += 1
        return written
    finally:
        await consumer.stop()


def test_a_60_percent_ctr_drop_at_5k_an_hour_fires_once_resolves_once_and_the_backtest_agrees(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Issue 11, as a channel owner saw it: douyin at ~5k impressions an hour, CTR down 60 % for 40 minutes
    after 3 hours of history. No 10-minute window is conclusive; the evidence of the minutes together is.
    One CTR anomaly for douyin, nothing for the others, resolved once after recovery; and `adpulse backtest`
    of the very events the worker read says exactly what the worker wrote."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")  # anomalies only: the seed targets would flag low-CTR channels too
    settings = make_settings(
        grace_s=30.0,
        tick_s=0.5,
        flush_interval_s=0.25,
        web_port=free_port(),
        home=tmp_path / "home",
        rules_file=rules,
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        start_s = int(time.time()) // 60 * 60 - 5 * 3600
        drop_s = start_s + 180 * 60
        sim = adpulse(
            settings,
            "simulate",
            "--start",
            _rfc3339(start_s),
            "--duration",
            "300m",
            "--speed",
            "max",
            "--rate",
            "0.9",  # ~5k impressions an hour for douyin (2.7 % CTR), 2k-5k for the others
            "--flat",
            "--seed",
            "11",
            "--quiet",
            "--scenario",
            "ctr-drop:channel=douyin,at=180m,for=40m,factor=0.4",
        )
        assert sim.returncode == 0, sim.stderr

        def resolved() -> bool:
            assert worker.alive(), worker.log_tail()
            return any(a["status"] == "resolved" and a["kind"] == "anomaly" for a in stream_alerts(settings))

        try:
            wait_for(resolved, 240, "the CTR drop to fire and resolve", interval_s=2.0)
        except AssertionError:
            raise AssertionError(f"alerts:\n{_explain(settings)}\n{worker.log_tail()}") from None
        time.sleep(3)  # a few more ticks: nothing else may fire
        live = [a for a in stream_alerts(settings) if a.get("change") != "repeat"]
        assert [(a["status"], a["kind"], a["metric"], a["channel"]) for a in live] == [
            ("firing", "anomaly", "ctr", "douyin"),
            ("resolved", "anomaly", "ctr", "douyin"),
        ], _explain(settings)
        fired, done = live
        fired_s = datetime.fromisoformat(fired["fired_at"]).timestamp()
        assert drop_s < fired_s <= drop_s + 40 * 60, "caught while the drop lasted"
        assert datetime.fromisoformat(done["resolved_at"]).timestamp() > drop_s + 40 * 60, "after recovery"
        assert "sequential" in fired["evidence"]["test"] and fired["evidence"]["baseline_from"]
        assert fired["change_pct"] <= -40 and done["fired_at"] == fired["fired_at"] and done["duration_s"] > 0

        events = tmp_path / "events.jsonl"
        assert asyncio.run(_events_of(settings, events)) > 10_000
        backtest = adpulse(settings, "backtest", str(events), "--json")
        assert backtest.returncode == 0, backtest.stderr
        replayed = [orjson.loads(line) for line in backtest.stdout.splitlines()]

        def key(alert: dict) -> tuple:
            return (
                alert["id"],
                alert["change"],
                alert["fingerprint"],
                alert["window_start"],
                alert["window_end"],
            )

        assert [key(a) for a in replayed] == [key(a) for a in stream_alerts(settings)], backtest.stderr
    finally:
        worker.stop()
