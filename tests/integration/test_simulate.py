"""``adpulse simulate`` against the real embedded broker: the topics hold what the report says was sent.

The pure helpers of the command (start/speed parsing, pacing, plain progress lines) are tested here too,
without a broker, because they belong to the same module.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from click.testing import CliRunner

from adpulse.settings import Settings
from adpulse.simulate import (
    LineProgress,
    Pacer,
    ProgressSnapshot,
    SimulationError,
    parse_speed,
    parse_start,
    plan,
    simulate,
    simulate_cli,
)
from adpulse.traffic.generator import partition_for
from adpulse.traffic.profiles import DEFAULT_CHANNELS
from adpulse.traffic.scenarios import BadRecords, CtrDrop, Duplicates, LateEvents
from adpulse.traffic.truth import Totals
from streams.metadata import topic_partitions

pytestmark = pytest.mark.kafka

TOPICS = ("clicks", "orders", "spend")
_FUNNEL_FIELDS = {"impression": "impressions", "click": "clicks", "visit": "visits", "cart": "carts"}


async def _read_back(settings: Settings, expected: int, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record of the three topics, in partition order; stops at ``expected`` (or the timeout)."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [
            tp
            for topic in TOPICS
            for tp in await topic_partitions(settings.kafka_client_options(), settings.topic(topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                records.extend(batch)
        # Anything beyond what the report claims would be a bug too.
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
        return records
    finally:
        await consumer.stop()


def _short(settings: Settings, topic: str) -> str:
    return topic.removeprefix(settings.topic_prefix)


# ----------------------------------------------------------------------------------------------- with broker


@pytest.mark.integration
def test_backfill_puts_every_record_on_its_partition(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(partitions=3)
    faults = [BadRecords(fraction=0.02), LateEvents(fraction=0.02), Duplicates(fraction=0.02)]
    scenarios = [*faults, CtrDrop(at_s=30)]
    start = datetime.now(UTC) - timedelta(minutes=5)
    report = asyncio.run(
        simulate(settings, rate=800, duration_s=120, seed=5, start=start, scenarios=scenarios, progress=False)
    )
    records = asyncio.run(_read_back(settings, report.sent))

    assert not report.interrupted and report.mode == "backfill max"
    per_partition = Counter((_short(settings, r.topic), r.partition) for r in records)
    assert per_partition == Counter(report.truth.partition_records)
    for topic in TOPICS:
        on_topic = sum(n for (t, _), n in per_partition.items() if t == topic)
        assert on_topic == sum(report.records[topic].values())
    assert {kind for kinds in report.records.values() for kind, n in kinds.items() if n} == {
        "valid",
        "invalid",
        "late",
        "duplicate",
    }
    start_ms, end_ms = report.truth.start_ms, report.truth.end_ms
    assert start_ms is not None and end_ms is not None
    for record in records:
        assert record.key is not None and record.key.decode() in DEFAULT_CHANNELS
        assert record.partition == partition_for(record.key, 3)
        assert start_ms <= record.timestamp < end_ms  # the Kafka timestamp is the (simulated) send time


@pytest.mark.integration
def test_what_the_broker_holds_adds_up_to_the_ground_truth(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    start = datetime.now(UTC) - timedelta(minutes=3)
    scenarios = [Duplicates(fraction=0.05), CtrDrop(channel="taobao", at_s=60)]
    report = asyncio.run(
        simulate(settings, rate=500, duration_s=150, seed=9, start=start, scenarios=scenarios, progress=False)
    )
    records = asyncio.run(_read_back(settings, report.sent))

    totals: dict[tuple[str, str], Totals] = {}
    seen: set[str] = set()
    for record in records:
        assert record.value is not None
        doc = orjson.loads(record.value)
        if doc["event_id"] in seen:
            continue
        seen.add(doc["event_id"])
        cell = totals.setdefault((doc["channel"], doc["campaign"]), Totals())
        topic = _short(settings, record.topic)
        if topic == "orders":
            cell.orders += 1
            cell.gmv_cents += round(doc["amount"] * 100)
        elif topic == "spend":
            cell.spend_cents += round(doc["cost"] * 100)
        else:
            name = _FUNNEL_FIELDS[doc["type"]]
            setattr(cell, name, getattr(cell, name) + doc.get("count", 1))
    assert totals == report.truth.totals()
    assert len(records) - len(seen) == sum(kinds["duplicate"] for kinds in report.records.values()) > 0


@pytest.mark.integration
def test_live_mode_keeps_event_time_on_the_wall_clock(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    before_ms = time.time() * 1000
    report = asyncio.run(simulate(settings, rate=300, duration_s=3, seed=1, progress=False))
    after_ms = time.time() * 1000
    records = asyncio.run(_read_back(settings, report.sent))

    assert report.mode == "live" and len(records) == report.sent > 0
    timestamps = [orjson.loads(r.value)["ts"] for r in records if r.value is not None]
    assert before_ms - 1000 <= min(timestamps) and max(timestamps) <= after_ms


@pytest.mark.integration
def test_cli_writes_the_ground_truth(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    truth_file = tmp_path / "truth.json"
    args = ["--start", "-2m", "--duration", "60s", "--rate", "200", "--seed", "3", "--channels", "douyin,jd"]
    args += ["--scenario", "duplicates:fraction=0.05", "--truth", str(truth_file)]
    result = CliRunner().invoke(simulate_cli, args, obj=settings)
    assert result.exit_code == 0, result.output
    assert "sent" in result.output and "backfill max" in result.output
    truth = orjson.loads(truth_file.read_bytes())
    records = asyncio.run(_read_back(settings, truth["sent"]))
    assert len(records) == truth["sent"] > 0
    assert {t["channel"] for t in truth["channel_totals"]} == {"douyin", "jd"}
    assert truth["records"]["clicks"]["duplicate"] > 0


@pytest.mark.integration
def test_missing_topics_are_named_in_the_error(stack_settings: Settings) -> None:
    settings = stack_settings.model_copy(update={"topic_prefix": "no-such-prefix."})
    with pytest.raises(SimulationError, match="no-such-prefix.clicks"):
        asyncio.run(simulate(settings, rate=100, duration_s=1, progress=False))


# -------------------------------------------------------------------------------------------- pure helpers

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2024, 6, 18, 10, 0, tzinfo=SHANGHAI)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-30m", NOW - timedelta(minutes=30)),
        ("-2h", NOW - timedelta(hours=2)),
        ("now", NOW),
        ("2024-06-18T09:00:00+08:00", datetime(2024, 6, 18, 9, tzinfo=SHANGHAI)),
        ("2024-06-18T01:00:00Z", datetime(2024, 6, 18, 9, tzinfo=SHANGHAI)),
        ("2024-06-18T09:00:00", datetime(2024, 6, 18, 9, tzinfo=SHANGHAI)),
    ],
)
def test_parse_start(text: str, expected: datetime) -> None:
    assert parse_start(text, SHANGHAI, now=NOW) == expected


def test_parse_start_and_speed_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_start("yesterday", SHANGHAI, now=NOW)
    assert parse_speed("max") == math.inf and parse_speed("2.5") == 2.5
    for bad in ("0", "-1", "fast", "nan"):
        with pytest.raises(ValueError):
            parse_speed(bad)


class _Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def test_plan_chooses_live_or_backfill() -> None:
    clock = _Clock(NOW.timestamp())
    pacer, mode = plan(start=None, speed=None, duration_s=None, rate=100, clock=clock)
    assert mode == "live" and pacer.end_ms is None and pacer.speed == 1.0
    pacer, mode = plan(start=NOW - timedelta(hours=1), speed=None, duration_s=None, rate=100, clock=clock)
    assert mode == "backfill max" and pacer.end_ms == int(NOW.timestamp() * 1000)
    pacer, mode = plan(start=NOW - timedelta(hours=1), speed=10, duration_s=60, rate=100, clock=clock)
    assert mode == "backfill ×10" and pacer.end_ms == pacer.start_ms + 60_000
    with pytest.raises(SimulationError, match="--speed needs --start"):
        plan(start=None, speed=5, duration_s=None, rate=100, clock=clock)
    with pytest.raises(SimulationError, match="future"):
        plan(start=NOW + timedelta(minutes=1), speed=None, duration_s=None, rate=100, clock=clock)


def test_pacer_never_runs_event_time_past_the_clock() -> None:
    clock, elapsed = _Clock(NOW.timestamp()), _Clock(0.0)
    now_ms = int(NOW.timestamp() * 1000)
    pacer = Pacer(now_ms - 60_000, now_ms, speed=10, rate=100, clock=clock, monotonic=elapsed)
    elapsed.now_s = 3.0
    assert pacer.target_ms(pacer.start_ms) == pacer.start_ms + 30_000
    elapsed.now_s = 100.0  # ×10 would be 1000 s ahead: capped at the wall clock
    assert pacer.target_ms(pacer.start_ms + 30_000) == now_ms
    assert pacer.done(now_ms) and not pacer.done(now_ms - 1)


def test_line_progress_prints_at_most_one_line_per_interval() -> None:
    stream, clock = io.StringIO(), _Clock(0.0)
    progress = LineProgress(stream, interval_s=5.0, clock=clock)
    snapshot = ProgressSnapshot(
        mode="live",
        event_time=NOW,
        sent=120,
        per_second=40.0,
        per_topic={"clicks": 100, "orders": 5, "spend": 15},
        faulty={"invalid": 2, "late": 0, "duplicate": 0},
        phases=["ctr-drop douyin: ACTIVE"],
    )
    for now in (0.0, 1.0, 4.9, 5.0, 6.0):
        clock.now_s = now
        progress.update(snapshot)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "sent=120" in lines[0] and "clicks=100" in lines[0] and "invalid=2" in lines[0]
    assert "late=" not in lines[0] and "ctr-drop douyin: ACTIVE" in lines[0]
