"""``adpulse budget set / list / approve`` against a real broker (Tansu, and Apache Kafka) and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from click.testing import CliRunner, Result

from adpulse import budget_cli as cli_module
from adpulse.budget_cli import budget_cli, read_budgets
from adpulse.settings import Settings
from adpulse.stack import free_port
from alerts.budgets import Approval
from streams.keys import Keys

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: 2026-11-24 14:00 in Shanghai: "now" for every command here, so the period is known.
NOW_S = datetime(2026, 11, 24, 14, 0, tzinfo=SHANGHAI).timestamp()


@pytest.fixture
def settings(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(cli_module, "clock", lambda: NOW_S)
    return make_settings(tz="Asia/Shanghai", currency="CNY")


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(budget_cli, list(args), obj=settings, catch_exceptions=False)


def listed(settings: Settings) -> list[dict[str, object]]:
    result = run(settings, "list", "--json")
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


async def _raw_records(settings: Settings) -> list[tuple[bytes | None, dict[str, object]]]:
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic("budgets"), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[tuple[bytes | None, Any]] = []
        while batch := (await consumer.getmany(tp, timeout_ms=1500)).get(tp):
            records.extend((r.key, orjson.loads(r.value)) for r in batch)
        return records
    finally:
        await consumer.stop()


def test_set_then_list_round_trip(settings: Settings) -> None:
    assert listed(settings) == []
    assert (
        run(settings, "set", "douyin", "12500", "--owner", "@zhang.wei", "--reserve-pct", "20").exit_code == 0
    )
    assert run(settings, "set", "taobao", "300,000", "--period", "month").exit_code == 0
    assert (
        run(settings, "set", "douyin", "2000", "--campaign", "spring-sale", "--period", "total").exit_code
        == 0
    )
    # Setting again replaces: last value wins.
    again = run(settings, "set", "taobao", "320000", "--period", "month")
    assert again.exit_code == 0 and "replaced" in again.output

    rows = listed(settings)
    assert [(r["channel"], r["campaign"], r["period"]) for r in rows] == [
        ("douyin", None, "day"),
        ("douyin", "spring-sale", "total"),
        ("taobao", None, "month"),
    ]
    douyin, campaign, taobao = rows
    assert douyin["amount"] == 12500 and douyin["spendable"] == 10000 and douyin["reserve_pct"] == 20
    assert douyin["owner"] == "@zhang.wei" and douyin["approval"] is None and douyin["currency"] == "CNY"
    assert douyin["period_start"] == "2026-11-24T00:00:00+08:00"
    assert douyin["period_end"] == "2026-11-25T00:00:00+08:00"
    assert campaign["amount"] == 2000 and campaign["period_end"] is None
    assert taobao["amount"] == 320000 and taobao["period_start"] == "2026-11-01T00:00:00+08:00"
    assert taobao["period_end"] == "2026-12-01T00:00:00+08:00"

    # On the wire: the contract's keys (with the period, so that compaction keeps every period) and fields.
    records = asyncio.run(_raw_records(settings))
    assert [key for key, _ in records] == [
        b"douyin#day",
        b"taobao#month",
        b"douyin/spring-sale#total",
        b"taobao#month",
    ]
    assert records[0][1] == {
        "channel": "douyin",
        "period": "day",
        "amount": 12500.0,
        "owner": "@zhang.wei",
        "reserve_pct": 20.0,
    }
    assert records[2][1]["campaign"] == "spring-sale"


def test_list_prints_a_table(settings: Settings) -> None:
    run(settings, "set", "douyin", "10000", "--owner", "@zhang.wei")
    result = run(settings, "list")
    assert result.exit_code == 0
    assert "douyin" in result.output and "10,000" in result.output and "@zhang.wei" in result.output


def test_delete_removes_the_budget(settings: Settings) -> None:
    run(settings, "set", "douyin", "10000")
    run(settings, "set", "wechat", "5000")
    result = run(settings, "set", "douyin", "--delete")
    assert result.exit_code == 0 and "deleted" in result.output
    assert [r["channel"] for r in listed(settings)] == ["wechat"]
    assert asyncio.run(_raw_records(settings))[-1] == (
        b"douyin#day",
        {"channel": "douyin", "period": "day", "amount": None},
    )
    # Deleting what is not there sends nothing.
    result = run(settings, "set", "douyin", "--delete")
    assert result.exit_code == 0 and "nothing to delete" in result.output
    assert len(asyncio.run(_raw_records(settings))) == 3


def test_approve_records_the_approval_in_redis(settings: Settings) -> None:
    run(settings, "set", "douyin", "10000", "--owner", "@zhang.wei")
    result = run(settings, "approve", "douyin", "--by", "@zhang.wei", "--note", "11.11 push")
    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hgetall(Keys(settings.redis_prefix).approvals)
    finally:
        client.close()
    assert list(raw) == [b"douyin|-|day|2026-11-24"]
    approval = Approval.from_json(raw[b"douyin|-|day|2026-11-24"])
    assert approval == Approval(by="@zhang.wei", at="2026-11-24T14:00:00+08:00", note="11.11 push")

    # Shown by list; a second approval keeps the first on record.
    assert listed(settings)[0]["approval"] == {
        "by": "@zhang.wei",
        "at": "2026-11-24T14:00:00+08:00",
        "note": "11.11 push",
    }
    again = run(settings, "approve", "douyin", "--by", "@li.na")
    assert again.exit_code == 0 and "already approved" in again.output
    assert listed(settings)[0]["approval"]["by"] == "@zhang.wei"  # type: ignore[index]


def test_an_approval_holds_for_its_period_only(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    run(settings, "set", "douyin", "10000")
    assert run(settings, "approve", "douyin", "--by", "@zhang.wei").exit_code == 0
    monkeypatch.setattr(cli_module, "clock", lambda: NOW_S + 86400)
    assert listed(settings)[0]["approval"] is None
    assert run(settings, "approve", "douyin", "--by", "@li.na").exit_code == 0
    client = redis.Redis.from_url(settings.redis_url)
    try:
        fields = client.hkeys(Keys(settings.redis_prefix).approvals)
    finally:
        client.close()
    # The earlier period's approval is gone: the hash stays as small as the set of budgets.
    assert fields == [b"douyin|-|day|2026-11-25"]


def test_a_late_approval_of_an_earlier_period_keeps_the_current_one(settings: Settings) -> None:
    """The chat link of yesterday's warning, clicked today, records yesterday's approval and prunes nothing
    newer: the CLI and the router approve through the same function."""
    import redis.asyncio as aioredis

    from alerts.acks import approve

    run(settings, "set", "douyin", "10000")
    assert run(settings, "approve", "douyin", "--by", "@zhang.wei").exit_code == 0
    yesterday = int(datetime(2026, 11, 23, tzinfo=SHANGHAI).timestamp())

    async def late_link() -> tuple[Approval, bool]:
        client = aioredis.from_url(settings.redis_url)
        try:
            return await approve(
                client,
                settings.redis_prefix,
                channel="douyin",
                campaign=None,
                period="day",
                period_start_s=yesterday,
                by="@li.na",
                note="via chat link",
                now_s=NOW_S,
                zone=SHANGHAI,
            )
        finally:
            await client.aclose()

    approval, created = asyncio.run(late_link())
    assert created and approval == Approval(by="@li.na", at="2026-11-24T14:00:00+08:00", note="via chat link")
    client = redis.Redis.from_url(settings.redis_url)
    try:
        fields = sorted(client.hkeys(Keys(settings.redis_prefix).approvals))
    finally:
        client.close()
    assert fields == [b"douyin|-|day|2026-11-23", b"douyin|-|day|2026-11-24"]
    assert listed(settings)[0]["approval"]["by"] == "@zhang.wei"  # type: ignore[index]


def test_campaign_approval_and_missing_budget(settings: Settings) -> None:
    run(settings, "set", "douyin", "2000", "--campaign", "spring-sale", "--period", "total")
    missing = run(settings, "approve", "douyin", "--campaign", "spring-sale")
    assert missing.exit_code != 0 and "no day budget" in missing.output and "--period total" in missing.output
    assert run(settings, "approve", "douyin", "--campaign", "spring-sale", "--period", "total").exit_code == 0
    row = listed(settings)[0]
    assert row["campaign"] == "spring-sale" and row["approval"] is not None


def test_a_channel_has_a_day_month_and_total_budget_side_by_side(settings: Settings) -> None:
    assert run(settings, "set", "douyin", "10000").exit_code == 0
    assert run(settings, "set", "douyin", "300000", "--period", "month").exit_code == 0
    assert run(settings, "set", "douyin", "900000", "--period", "total").exit_code == 0
    assert run(settings, "set", "douyin", "--period", "month", "--delete").exit_code == 0
    assert [(r["period"], r["amount"]) for r in listed(settings)] == [("day", 10000), ("total", 900000)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "douyin", "--", "-5"], "not a positive amount"),
        (["set", "douyin", "0"], "not a positive amount"),
        (["set", "douyin", "ten"], "not a number"),
        (["set", "douyin", "nan"], "not a positive amount"),
        (["set", "douyin"], "missing AMOUNT"),
        (["set", "douyin", "100", "--delete"], "not both"),
        (["set", "douyin", "100", "--reserve-pct", "60"], "reserve_pct"),
        (["set", "douyin", "100", "--period", "week"], "week"),
    ],
)
def test_invalid_input_is_refused_before_anything_is_sent(
    settings: Settings, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(budget_cli, args, obj=settings)
    assert result.exit_code == 2 and message in result.output
    assert asyncio.run(_raw_records(settings)) == []


def test_unreachable_broker_is_a_clear_error(settings: Settings) -> None:
    down = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    result = CliRunner().invoke(budget_cli, ["set", "douyin", "100"], obj=down)
    assert (
        result.exit_code == 1
        and "cannot reach Kafka" in result.output
        and "adpulse stack up" in result.output
    )


def test_unreachable_redis_is_a_clear_error(settings: Settings) -> None:
    run(settings, "set", "douyin", "100")
    down = settings.model_copy(update={"redis_url": f"redis://:canary-pw-7f@127.0.0.1:{free_port()}/0"})
    result = CliRunner().invoke(budget_cli, ["approve", "douyin"], obj=down)
    assert result.exit_code == 1 and "cannot reach Redis" in result.output
    assert "canary-pw-7f" not in result.output and "redis://:***@127.0.0.1:" in result.output


def test_missing_topic_is_a_clear_error(settings: Settings) -> None:
    elsewhere = settings.model_copy(update={"topic_prefix": "nowhere-budgets."})
    result = CliRunner().invoke(budget_cli, ["list"], obj=elsewhere)
    assert result.exit_code == 1 and "does not exist" in result.output


def test_reader_sees_records_batched_together(settings: Settings) -> None:
    """Another producer may batch several settings: the reader still sees the last of them."""
    from aiokafka import AIOKafkaProducer

    async def produce_batched() -> None:
        producer = AIOKafkaProducer(
            **settings.kafka_client_options(), linger_ms=200, enable_idempotence=False
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    settings.topic("budgets"),
                    orjson.dumps({"channel": "douyin", "period": "day", "amount": amount}),
                    key=b"douyin",
                )
                for amount in (100, 200, 300, 400)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(produce_batched())
    book, skipped = asyncio.run(read_budgets(settings))
    assert skipped == []
    budget = book.get("douyin", None, "day")
    assert budget is not None and budget.amount == 400


def test_malformed_records_are_skipped_and_reported(settings: Settings) -> None:
    from aiokafka import AIOKafkaProducer

    async def produce() -> None:
        producer = AIOKafkaProducer(**settings.kafka_client_options(), enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("budgets"), b"not json", key=b"douyin")
            await producer.send_and_wait(
                settings.topic("budgets"),
                b'{"channel": "douyin", "period": "day", "amount": 10}',
                key=b"douyin",
            )
        finally:
            await producer.stop()

    asyncio.run(produce())
    result = CliRunner().invoke(budget_cli, ["list", "--json"], obj=settings)
    assert result.exit_code == 0
    assert [r["amount"] for r in orjson.loads(result.stdout)] == [10]
    assert "skipped a malformed record" in result.stderr and "offset 0" in result.stderr


def test_runs_under_the_adpulse_group_with_its_settings(settings: Settings) -> None:
    @click.group()
    @click.pass_context
    def adpulse(ctx: click.Context) -> None:
        ctx.obj = settings

    adpulse.add_command(budget_cli)
    result = CliRunner().invoke(adpulse, ["budget", "set", "douyin", "10000"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(adpulse, ["budget", "list", "--json"])
    assert [r["amount"] for r in orjson.loads(result.stdout)] == [10000]
