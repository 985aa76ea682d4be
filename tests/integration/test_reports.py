"""The daily sheet against the ground truth of a simulated day, on the real broker, worker and Redis.

Yesterday's last 150 minutes (in Asia/Kolkata, whose hours start at :30 UTC) are backfilled with a CTR drop on
douyin; the seed targets flag baidu (ROI, CTR) and douyin (AOV) too. The day then closes (the partitions go
idle), and ``adpulse report daily`` must give every column exactly: orders, GMV, cost and ROI equal to the
generator's ground truth, AOV to 4 digits, visits and new users from the records sent, the same figures
``adpulse kpis`` prints, and as notes exactly the alerts whose windows lie on that day. Today, a daily budget
crosses 80 % and is approved: today's sheet says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from adpulse.settings import Settings
from adpulse.simulate import simulate
from adpulse.stack import free_port
from adpulse.traffic.profiles import DEFAULT_CHANNELS
from adpulse.traffic.scenarios import CtrDrop
from adpulse.traffic.truth import GroundTruth
from streams.metadata import topic_partitions
from tests.support.processes import WorkerProcess, wait_for

pytestmark = pytest.mark.integration
ZONE = "Asia/Kolkata"


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


def _stream(settings: Settings) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], client.xrange(f"{settings.redis_prefix}:alerts")
        )
        return [orjson.loads(fields[b"alert"]) for _, fields in entries]
    finally:
        client.close()


def _day_closed(settings: Settings, day: date) -> bool:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return client.hlen(f"{settings.redis_prefix}:windows:1d:{day.isoformat()}") > 0
    finally:
        client.close()


async def _new_customers(settings: Settings) -> Counter[str]:
    """Orders flagged new_customer per channel, read back from the orders topic (what the trackers sent)."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic("orders")
        partitions = await topic_partitions(settings.kafka_client_options(), topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while (
            any([await consumer.position(tp) < ends[tp] for tp in partitions]) and time.monotonic() < deadline
        ):
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for record in records:
                    doc = orjson.loads(record.value)
                    counts[doc["channel"]] += bool(doc.get("new_customer"))
        return counts
    finally:
        await consumer.stop()


async def _spend_now(settings: Settings, channel: str, amounts: list[float]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for i, cost in enumerate(amounts):
            doc = {"event_id": f"today-{i}", "ts": now, "channel": channel, "cost": cost}
            await producer.send_and_wait(settings.topic("spend"), orjson.dumps(doc), key=channel.encode())
    finally:
        await producer.stop()


def _expected_episodes(alerts: list[dict[str, Any]], lo: datetime, hi: datetime) -> Counter[str]:
    """Per channel, the episodes (fingerprint, fired_at) with a window on ``[lo, hi)``: computed here from
    the raw stream, entry by entry."""
    on_day: set[tuple[str, str, str]] = set()
    for alert in alerts:
        start = datetime.fromisoformat(alert["window_start"])
        end = datetime.fromisoformat(alert["window_end"])
        if start < hi and end > lo:
            on_day.add((alert["channel"], alert["fingerprint"], alert["fired_at"]))
    return Counter(channel for channel, _, _ in on_day)


@pytest.mark.kafka
def test_daily_sheet_equals_the_ground_truth_of_a_simulated_day(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        tz=ZONE,
        grace_s=30.0,
        idle_partition_s=3.0,
        tick_s=0.5,
        flush_interval_s=0.25,
        alert_lookback_s=3 * 86400.0,
        web_port=free_port(),
        home=tmp_path / "home",
    )
    zone = settings.zone
    today = datetime.now(zone).date()
    day = today - timedelta(days=1)
    day_start = datetime(day.year, day.month, day.day, tzinfo=zone)
    day_end = day_start + timedelta(days=1)
    assert (
        adpulse(
            settings, "budget", "set", "wechat", "1000", "--period", "day", "--owner", "@li.na"
        ).returncode
        == 0
    )
    # The day's last 150 minutes, ending at midnight: the silence after the backfill is today's. All sent
    # before the worker starts: sent while it runs, a pause of the sender's as long as the idle time (3 s,
    # seen on a loaded machine) let event time jump to the wall clock, the rest of the backfill then only
    # revised windows already judged, and the CTR drop was never judged on its data.
    report = asyncio.run(
        simulate(
            settings,
            rate=20,
            duration_s=150 * 60,
            seed=11,
            start=day_end - timedelta(minutes=150),
            scenarios=[CtrDrop(at_s=60 * 60, for_s=40 * 60, channel="douyin", factor=0.4)],
            progress=False,
            daily_curve=False,
        )
    )
    truth: GroundTruth = report.truth
    assert set(truth.kinds["orders"]) and truth.kinds["orders"]["invalid"] == 0
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        new_customers = asyncio.run(_new_customers(settings))

        def closed() -> bool:
            assert worker.alive(), worker.log_tail()
            return _day_closed(settings, day)

        wait_for(closed, 240, f"the 1-day windows of {day} to close", interval_s=2.0)
        wait_for(lambda: any(a["kind"] == "anomaly" for a in _stream(settings)), 120, "the CTR drop alert")

        # Today: wechat's daily budget crosses 80 % and is approved. (Its pacing warning may come first: the
        # early morning's spend rate runs out the day's budget long before midnight.)
        asyncio.run(_spend_now(settings, "wechat", [300.0, 300.0, 250.0]))

        def line_80(status: str) -> bool:
            return any(
                a["kind"] == "budget" and a["metric"] == "spend" and a["status"] == status
                for a in _stream(settings)
            )

        wait_for(lambda: line_80("firing"), 60, "the 80 % budget warning")
        approved = adpulse(settings, "budget", "approve", "wechat", "--by", "@li.na")
        assert approved.returncode == 0, approved.stderr
        try:
            wait_for(lambda: line_80("resolved"), 60, "the approved warning to resolve")
        except AssertionError:
            budget = [(a["status"], a["fingerprint"]) for a in _stream(settings) if a["kind"] == "budget"]
            raise AssertionError(f"{approved.stdout}\n{budget}\n{worker.log_tail()}") from None
        time.sleep(2)  # a few more ticks: the alerts of the day settle
    finally:
        worker.stop()

    result = adpulse(settings, "report", "daily", "--date", day.isoformat(), "--format", "json")
    assert result.returncode == 0, result.stderr
    sheet = json.loads(result.stdout)
    assert sheet["complete"] and sheet["time_zone"] == ZONE and sheet["currency"] == "CNY"
    rows = {row["channel"]: row for row in sheet["rows"]}
    per_channel = truth.channel_totals()
    assert set(rows) == set(DEFAULT_CHANNELS) == set(per_channel)

    kpis = adpulse(settings, "kpis", "--json", "--window", "1d", "--since", day_start.isoformat())
    assert kpis.returncode == 0, kpis.stderr
    by_kpis = {
        r["channel"]: r
        for r in json.loads(kpis.stdout)
        if r["campaign"] == "-" and datetime.fromisoformat(r["window_start"]) == day_start
    }
    for channel, expected in per_channel.items():
        row = rows[channel]
        assert row["date"] == day.isoformat()
        assert row["orders"] == expected.orders
        assert round(row["gmv"] * 100) == expected.gmv_cents
        assert round(row["channel_cost"] * 100) == expected.spend_cents
        assert row["roi"] == expected.gmv_cents / expected.spend_cents
        assert round(row["aov"], 4) == round(expected.gmv_cents / 100 / expected.orders, 4)
        assert row["visits"] == expected.visits and row["visits_from"] == "visits"
        assert row["new_users"] == new_customers[channel]
        # The same figures as `adpulse kpis`, to the cent.
        assert round(by_kpis[channel]["gmv"] * 100) == expected.gmv_cents
        assert round(by_kpis[channel]["spend"] * 100) == expected.spend_cents
        assert by_kpis[channel]["orders"] == expected.orders

    total = sheet["total"]
    assert total["orders"] == sum(t.orders for t in per_channel.values())
    assert round(total["gmv"] * 100) == sum(t.gmv_cents for t in per_channel.values())
    assert round(total["channel_cost"] * 100) == sum(t.spend_cents for t in per_channel.values())
    assert total["roi"] == sum(t.gmv_cents for t in per_channel.values()) / sum(
        t.spend_cents for t in per_channel.values()
    )
    assert total["new_users"] == sum(new_customers.values())

    # Notes: exactly the episodes whose windows lie on that day, and the CTR drop among douyin's.
    expected_notes = _expected_episodes(_stream(settings), day_start, day_end)
    assert {c: len(r["notes"]) for c, r in rows.items() if r["notes"]} == dict(expected_notes)
    ctr_notes = [n for n in rows["douyin"]["notes"] if n.startswith("CTR \u2212")]
    assert len(ctr_notes) == 1, rows["douyin"]["notes"]
    drop_at = day_end - timedelta(minutes=90)
    shown = ctr_notes[0].split()[3].split("–")[0]
    first_window = day_start.replace(hour=int(shown[:2]), minute=int(shown[3:5]))
    # The rolling window that fires may still reach a few minutes back before the drop.
    assert drop_at - timedelta(minutes=10) <= first_window <= drop_at + timedelta(minutes=40), ctr_notes

    today_sheet = adpulse(settings, "report", "daily", "--date", "today", "--format", "json")
    assert today_sheet.returncode == 0, today_sheet.stderr
    wechat_today = {r["channel"]: r for r in json.loads(today_sheet.stdout)["rows"]}["wechat"]
    budget_notes = [n for n in wechat_today["notes"] if n.startswith("budget 80 % at ")]
    assert len(budget_notes) == 1 and ", approved by @li.na at " in budget_notes[0], wechat_today["notes"]
    assert round(wechat_today["channel_cost"] * 100) == 85_000

    for fmt in ("table", "csv", "html", "xlsx"):
        out = tmp_path / f"daily.{fmt}"
        made = adpulse(
            settings, "report", "daily", "--date", day.isoformat(), "--format", fmt, "-o", str(out)
        )
        assert made.returncode == 0 and out.stat().st_size > 0, made.stderr
    csv_lines = (tmp_path / "daily.csv").read_text().splitlines()
    assert csv_lines[0].startswith(
        "date,channel,visits,new users,orders,GMV (CNY),AOV (CNY),channel cost (CNY)"
    )
    assert len([line for line in csv_lines if line.startswith(day.isoformat())]) == len(DEFAULT_CHANNELS) + 1
