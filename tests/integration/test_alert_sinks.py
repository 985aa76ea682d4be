"""Alert sinks on the real embedded Redis (Valkey): idempotent publishing, the exact active hash, stream
trimming, lifecycle state round trips, the metrics and ``adpulse alerts``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from adpulse.alerts_cli import alerts_cli
from adpulse.settings import Settings
from alerts.lifecycle import Alert, AlertBook, Policy, StateDelta
from alerts.model import Finding
from alerts.payload import build_alert
from alerts.sinks.metrics import AlertMetrics
from alerts.sinks.redis_sink import RedisAlertSink

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
R = TypeVar("R")


def ctr_low(channel: str, severity: str = "warning", value: float = 0.012) -> Finding:
    return Finding(
        kind="threshold",
        metric="ctr",
        severity=severity,
        channel=channel,
        campaign=None,  # type: ignore[arg-type]
        value=value,
        summary=f"{channel} CTR {value:.2%} < 2 %",
        description="CTR below target",
        threshold=0.02,
        evidence={"clicks": 120, "impressions": 10_000},
        window="1m",
        window_start="2026-11-24T10:00:00+08:00",
        window_end="2026-11-24T10:01:00+08:00",
    )


def payloads(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    return [build_alert(a) for a in alerts]


def with_sink(settings: Settings, use: Callable[[RedisAlertSink], Awaitable[R]], **options: Any) -> R:
    async def main() -> R:
        client = aioredis.from_url(settings.redis_url)
        try:
            return await use(RedisAlertSink(client, settings.redis_prefix, **options))
        finally:
            await client.aclose()

    return asyncio.run(main())


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def stream_alerts(settings: Settings) -> list[dict[str, Any]]:
    client = sync_client(settings)
    try:
        return [
            orjson.loads(fields[b"alert"]) for _, fields in client.xrange(f"{settings.redis_prefix}:alerts")
        ]
    finally:
        client.close()


def active_hash(settings: Settings) -> dict[str, dict[str, Any]]:
    client = sync_client(settings)
    try:
        return {
            k.decode(): orjson.loads(v)
            for k, v in client.hgetall(f"{settings.redis_prefix}:alerts:active").items()
        }
    finally:
        client.close()


def test_publishing_the_same_alert_twice_gives_one_entry(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    [alert] = payloads(AlertBook().evaluate([ctr_low("douyin")], [], T0))

    async def twice(sink: RedisAlertSink) -> tuple[list[bool], list[bool]]:
        return await sink.publish([alert]), await sink.publish([alert])

    assert with_sink(settings, twice) == ([True], [False])
    assert stream_alerts(settings) == [alert]
    assert active_hash(settings) == {alert["fingerprint"]: alert}


def test_a_retried_batch_writes_only_what_is_new(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    first = payloads(AlertBook().evaluate([ctr_low("douyin"), ctr_low("taobao")], [], T0))
    late = payloads(AlertBook().evaluate([ctr_low("wechat")], [], T0))

    async def retry(sink: RedisAlertSink) -> tuple[list[bool], list[bool]]:
        return await sink.publish(first[:1]), await sink.publish(first + late)

    assert with_sink(settings, retry) == ([True], [False, True, True])
    assert [a["channel"] for a in stream_alerts(settings)] == ["douyin", "taobao", "wechat"]


def test_active_hash_is_exact_through_fire_escalate_resolve(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    book = AlertBook(Policy(resolve_after=2))
    douyin, taobao = ctr_low("douyin").fingerprint, ctr_low("taobao").fingerprint
    rounds = [
        ([ctr_low("douyin"), ctr_low("taobao")], {}),
        ([ctr_low("douyin", "critical"), ctr_low("taobao")], {}),
        ([ctr_low("douyin", "critical")], {taobao: 0.025}),
        ([], {taobao: 0.031, douyin: 0.022}),
        ([], {douyin: 0.03}),
    ]
    expected_active = [
        {douyin: "warning", taobao: "warning"},
        {douyin: "critical", taobao: "warning"},
        {douyin: "critical", taobao: "warning"},
        {douyin: "critical"},
        {},
    ]

    async def play(sink: RedisAlertSink) -> list[dict[str, str]]:
        seen = []
        for i, (findings, judged) in enumerate(rounds):
            alerts = payloads(book.evaluate(findings, judged, T0 + i * MINUTE))
            await sink.publish(alerts, book.pop_changes())
            seen.append({fp: a["severity"] for fp, a in (await sink.load_active()).items()})
        return seen

    assert with_sink(settings, play) == expected_active
    changes = [(a["channel"], a["change"], a["value"]) for a in stream_alerts(settings)]
    assert changes == [
        ("douyin", "fired", 0.012),
        ("taobao", "fired", 0.012),
        ("douyin", "escalated", 0.012),
        ("taobao", "resolved", 0.031),
        ("douyin", "resolved", 0.03),
    ]
    assert active_hash(settings) == {}


def test_stream_is_trimmed_to_about_maxlen(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    maxlen, n = 50, 1500
    alerts = payloads(AlertBook().evaluate([ctr_low(f"ch{i:04d}") for i in range(n)], [], T0))

    async def publish(sink: RedisAlertSink) -> list[bool]:
        return await sink.publish(alerts)

    assert all(with_sink(settings, publish, maxlen=maxlen))
    client = sync_client(settings)
    try:
        length = client.xlen(f"{settings.redis_prefix}:alerts")
        node_size = int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
        newest = orjson.loads(client.xrevrange(f"{settings.redis_prefix}:alerts", count=1)[0][1][b"alert"])
        guards = client.keys(f"{settings.redis_prefix}:alerts:ids:*")
        ttl = client.ttl(guards[0])
    finally:
        client.close()
    # MAXLEN ~ trims whole stream nodes: at least maxlen entries stay, at most one node more.
    assert maxlen <= length <= maxlen + node_size < n
    assert newest["channel"] == f"ch{n - 1:04d}"
    assert len(active_hash(settings)) == n
    assert len(guards) == n and 0 < ttl <= 7 * 86400


def test_state_round_trip_resumes_the_same_decisions(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    policy = Policy(for_evaluations=2, resolve_after=2, repeat_interval_s=180)
    douyin, taobao = ctr_low("douyin").fingerprint, ctr_low("taobao").fingerprint
    rounds: list[tuple[list[Finding], dict[Any, float]]] = [
        ([ctr_low("douyin"), ctr_low("taobao")], {}),
        ([ctr_low("douyin")], {taobao: 0.03}),
        ([ctr_low("douyin"), ctr_low("taobao")], {}),
        ([ctr_low("douyin")], {taobao: 0.03}),
        ([ctr_low("douyin", "critical")], {}),
        ([], {douyin: 0.028}),
        ([ctr_low("douyin", "critical")], {}),
        ([ctr_low("douyin", "critical")], {}),
        ([], {douyin: 0.028}),
        ([], {douyin: 0.031}),
    ]

    def decisions(alerts: list[Alert]) -> list[tuple[str, str, str]]:
        return [(a.id, a.channel, a.change) for a in alerts]

    reference = AlertBook(policy)
    expected = [decisions(reference.evaluate(f, j, T0 + i * MINUTE)) for i, (f, j) in enumerate(rounds)]
    assert any(expected), "the scenario must produce some alerts"

    async def restart_every_round(sink: RedisAlertSink) -> list[list[tuple[str, str, str]]]:
        got = []
        for i, (findings, judged) in enumerate(rounds):
            book = AlertBook.from_state(await sink.load_state(), policy)  # a fresh worker each round
            alerts = book.evaluate(findings, judged, T0 + i * MINUTE)
            await sink.publish(payloads(alerts), book.pop_changes())
            got.append(decisions(alerts))
        return got

    assert with_sink(settings, restart_every_round) == expected
    assert with_sink(settings, lambda sink: sink.load_state()) == reference.to_state()


def test_load_state_keeps_only_the_channels_asked_for(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    book = AlertBook()
    book.evaluate([ctr_low("douyin"), ctr_low("taobao")], [], T0)

    async def save_and_load(sink: RedisAlertSink) -> dict[str, Any]:
        await sink.save_state(book.pop_changes())
        return await sink.load_state(channels={"taobao"})

    state = with_sink(settings, save_and_load)
    assert list(state["entries"]) == [ctr_low("taobao").fingerprint]
    assert [f.channel for f in AlertBook.from_state(state).firing()] == ["taobao"]


def test_state_deltas_from_two_workers_do_not_clobber_each_other(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    # Resolved entries deleted at once (no hour kept for a re-fire), so the state shows whose survive.
    a, b = AlertBook(Policy(resolve_after=1, reopen_s=0)), AlertBook(Policy(resolve_after=1, reopen_s=0))

    async def run(sink: RedisAlertSink) -> dict[str, Any]:
        await sink.publish(payloads(a.evaluate([ctr_low("douyin")], [], T0)), a.pop_changes())
        await sink.publish(payloads(b.evaluate([ctr_low("taobao")], [], T0)), b.pop_changes())
        await sink.publish(
            payloads(a.evaluate([], {ctr_low("douyin").fingerprint: 0.03}, T0 + MINUTE)), a.pop_changes()
        )
        return await sink.load_state()

    state = with_sink(settings, run)
    assert list(state["entries"]) == [ctr_low("taobao").fingerprint]
    assert list(active_hash(settings)) == [ctr_low("taobao").fingerprint]


def test_empty_publish_is_a_no_op(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert with_sink(settings, lambda sink: sink.publish([], StateDelta())) == []
    client = sync_client(settings)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


def test_metrics_count_new_firing_changes_and_gauge_the_book(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    registry = CollectorRegistry()
    book = AlertBook(Policy(resolve_after=1))
    metrics = AlertMetrics(book.firing, max_channels=1, registry=registry)

    async def run(sink: RedisAlertSink) -> None:
        for i, (findings, judged) in enumerate(
            [
                (
                    [ctr_low("douyin"), ctr_low("douyin", "critical"), ctr_low("taobao"), ctr_low("wechat")],
                    {},
                ),
                ([ctr_low("douyin", "critical")], {ctr_low("wechat").fingerprint: 0.03}),
            ]
        ):
            alerts = book.evaluate(findings, judged, T0 + i * MINUTE)
            published = payloads(alerts)
            for _ in range(2):  # the retry of a batch must not count twice
                written = await sink.publish(published, book.pop_changes())
                metrics.observe(a for a, new in zip(alerts, written, strict=True) if new)

    with_sink(settings, run)
    assert (
        registry.get_sample_value("adpulse_alerts_total", {"kind": "threshold", "severity": "critical"}) == 1
    )
    assert (
        registry.get_sample_value("adpulse_alerts_total", {"kind": "threshold", "severity": "warning"}) == 2
    )
    firing = {
        (s.labels["severity"], s.labels["channel"]): s.value
        for family in registry.collect()
        if family.name == "adpulse_alerts_firing"
        for s in family.samples
    }
    # douyin (critical) sorts first among the channels with one alert; taobao falls into "other".
    assert firing == {("critical", "douyin"): 1, ("warning", "other"): 1}


def test_cli_lists_active_alerts_and_history(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    book = AlertBook(Policy(resolve_after=1))

    async def run(sink: RedisAlertSink) -> None:
        await sink.publish(
            payloads(book.evaluate([ctr_low("douyin"), ctr_low("taobao", "critical")], [], T0))
        )
        await sink.publish(payloads(book.evaluate([], {ctr_low("douyin").fingerprint: 0.03}, T0 + MINUTE)))

    with_sink(settings, run)
    runner = CliRunner()
    result = runner.invoke(alerts_cli, ["--json"], obj=settings)
    assert result.exit_code == 0, result.output
    assert [(a["channel"], a["severity"]) for a in orjson.loads(result.output)] == [("taobao", "critical")]

    result = runner.invoke(alerts_cli, ["--json", "--all", "--last", "2"], obj=settings)
    assert result.exit_code == 0, result.output
    both = orjson.loads(result.output)
    assert [(a["channel"], a["status"]) for a in both["history"]] == [
        ("douyin", "resolved"),
        ("taobao", "firing"),
    ]

    result = runner.invoke(alerts_cli, ["--all"], obj=settings)
    assert result.exit_code == 0, result.output
    assert (
        "taobao" in result.output
        and "taobao CTR 1.20% < 2 %" in result.output
        and "resolved" in result.output
    )


def test_cli_says_when_redis_is_unreachable(stack_settings: Settings) -> None:
    from adpulse.stack import free_port

    settings = stack_settings.model_copy(update={"redis_url": f"redis://:s3cret@127.0.0.1:{free_port()}/0"})
    result = CliRunner().invoke(alerts_cli, [], obj=settings)
    assert result.exit_code == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in result.output
    assert "adpulse stack up" in result.output and "s3cret" not in result.output


def test_an_acknowledged_alert_is_not_repeated_by_the_worker(make_settings: Callable[..., Settings]) -> None:
    from agents.evaluate import EvaluationConfig, Evaluator
    from alerts.acks import acknowledge
    from alerts.budgets import BudgetBook
    from alerts.rules import load_rules
    from streams.windows import Calendar

    settings = make_settings()
    now = [T0.timestamp()]

    async def main() -> list[int]:
        client = aioredis.from_url(settings.redis_url)
        try:
            judge = Evaluator(
                EvaluationConfig(rules=load_rules(None), policy=Policy(repeat_interval_s=60.0)),
                RedisAlertSink(client, settings.redis_prefix),
                client,
                settings.redis_prefix,
                Calendar(settings.zone),
                BudgetBook(),
                max_channels=10,
                registry=CollectorRegistry(),
                clock=lambda: now[0],
            )
            written = [await judge.publish([ctr_low("douyin"), ctr_low("taobao")], {})]
            fired = {a["channel"]: a for a in stream_alerts(settings)}
            await acknowledge(
                client,
                settings.redis_prefix,
                fired["douyin"]["fingerprint"],
                fired["douyin"]["fired_at"],
                "@zhang.wei",
                now[0],
            )
            now[0] += 61
            written.append(await judge.publish([ctr_low("douyin"), ctr_low("taobao")], {}))
            return written
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [2, 1]
    repeats = [a for a in stream_alerts(settings) if a["change"] == "repeat"]
    assert [a["channel"] for a in repeats] == ["taobao"], "douyin was acknowledged: no repeat"


def test_old_acks_that_can_mute_nothing_are_pruned(make_settings: Callable[..., Settings]) -> None:
    from alerts.acks import ACK_RETENTION_S, acknowledge, prune_acks

    settings = make_settings()
    now = 1_800_000_000.0
    old = now - ACK_RETENTION_S - 3600

    async def main() -> int:
        client = aioredis.from_url(settings.redis_url)
        prefix = settings.redis_prefix
        try:
            await acknowledge(client, prefix, "fp:resolved", "2027-01-01T00:00:00+00:00", "ops", old)
            await acknowledge(client, prefix, "fp:recent", "2027-01-01T00:00:00+00:00", "ops", now - 60)
            await acknowledge(client, prefix, "fp:firing", "2027-01-01T00:00:00+00:00", "ops", old)
            await acknowledge(client, prefix, "fp:snoozed", None, "ops", old, snooze_s=ACK_RETENTION_S * 2)
            await client.hset(f"{prefix}:alerts:acks", "fp:junk", b"not json")
            await client.hset(
                f"{prefix}:alerts:active",
                "fp:firing",
                orjson.dumps({"fired_at": "2027-01-01T00:00:00+00:00"}),
            )
            return await prune_acks(client, prefix, now)
        finally:
            await client.aclose()

    assert asyncio.run(main()) == 2
    client = sync_client(settings)
    try:
        kept = {k.decode() for k in client.hkeys(f"{settings.redis_prefix}:alerts:acks")}
    finally:
        client.close()
    assert kept == {"fp:recent", "fp:firing", "fp:snoozed"}
