"""agents.metrics.SnapshotCollector on a fresh registry: counters from totals, last-window ratios, "other"."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import PipelineMetrics, SnapshotCollector, watch_gc, watch_loop_lag
from agents.snapshot import KpiRow

NAMES = ("impressions", "clicks", "visits", "carts", "orders", "gmv", "spend", "new_customers")
COUNTERS = {
    "impressions": "adpulse_impressions_total",
    "clicks": "adpulse_clicks_total",
    "visits": "adpulse_visits_total",
    "carts": "adpulse_carts_total",
    "orders": "adpulse_orders_total",
    "gmv": "adpulse_gmv_total",
    "spend": "adpulse_spend_total",
}


def counts(**named: float) -> dict[str, float]:
    return {name: named.get(name, 0) for name in NAMES}


def row(
    channel: str, window: str = "total", which: str = "total", campaign: str = "-", **named: float
) -> KpiRow:
    start, end = (0, None) if window == "total" else (1_714_537_920, 1_714_537_980)
    return KpiRow(channel, campaign, window, which, start, end, which == "last", counts(**named))


def registry_with(rows: list[KpiRow], max_channels: int = 500) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: rows, max_channels))
    return registry


def ratio_samples(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["channel"], s.labels["kpi"], s.labels["window"]): s.value
        for family in registry.collect()
        if family.name == "adpulse_kpi_ratio"
        for s in family.samples
    }


def counter_channels(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        s.labels["channel"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_counters_per_channel_come_from_the_total_rows() -> None:
    rows = [
        row("douyin", impressions=1000, clicks=30, visits=20, carts=6, orders=3, gmv=899.7, spend=120.5),
        row("douyin", campaign="c1", impressions=400, clicks=10),  # campaign rows are not added again
        row("douyin", "1m", "current", impressions=7, clicks=7),  # windows are not counters
        row("douyin", "1m", "last", impressions=9, clicks=1),
        row("taobao", impressions=10, clicks=1),
    ]
    registry = registry_with(rows)
    expected = {
        "impressions": 1000,
        "clicks": 30,
        "visits": 20,
        "carts": 6,
        "orders": 3,
        "gmv": 899.7,
        "spend": 120.5,
    }
    for name, metric in COUNTERS.items():
        assert registry.get_sample_value(metric, {"channel": "douyin"}) == expected[name], name
    assert registry.get_sample_value("adpulse_clicks_total", {"channel": "taobao"}) == 1
    assert counter_channels(registry, "adpulse_clicks_total") == {"douyin": 30, "taobao": 1}


def test_counters_are_read_at_scrape_time() -> None:
    rows = [row("douyin", clicks=1)]
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: rows, 500))
    assert registry.get_sample_value("adpulse_clicks_total", {"channel": "douyin"}) == 1
    rows[0] = row("douyin", clicks=5)
    assert registry.get_sample_value("adpulse_clicks_total", {"channel": "douyin"}) == 5


def test_kpi_ratio_only_for_last_windows_with_data() -> None:
    rows = [
        row("douyin", impressions=10_000, clicks=200),
        row("douyin", "1m", "last", impressions=1000, clicks=25, orders=2, gmv=600.0, spend=50.0),
        row("douyin", "1m", "current", impressions=1000, clicks=900),  # never exported
        row("douyin", "1h", "last", impressions=0, clicks=0),  # no data at all: no sample
        row("douyin", "1d", "last", impressions=500, clicks=0),  # CTR is a real 0; the others have no data
        row("douyin", "1m", "last", campaign="c1", impressions=10, clicks=10),  # campaign rows: not exported
    ]
    samples = ratio_samples(registry_with(rows))
    assert samples == {
        ("douyin", "ctr", "1m"): pytest.approx(0.025),
        ("douyin", "cvr", "1m"): pytest.approx(0.08),
        ("douyin", "roi", "1m"): pytest.approx(12.0),
        ("douyin", "aov", "1m"): pytest.approx(300.0),
        ("douyin", "cpc", "1m"): pytest.approx(2.0),
        ("douyin", "cpa", "1m"): pytest.approx(25.0),
        ("douyin", "ctr", "1d"): 0.0,
    }
    assert not any(kpi.startswith("funnel") for _, kpi, _ in samples)  # only the six contract KPIs


def test_channels_beyond_the_limit_are_merged_into_other() -> None:
    rows = []
    for channel, impressions, clicks in (
        ("douyin", 900, 9),
        ("taobao", 800, 40),
        ("wechat", 100, 1),
        ("xiaohongshu", 300, 30),
    ):
        rows.append(row(channel, impressions=impressions, clicks=clicks, gmv=impressions / 10))
        rows.append(row(channel, "1m", "last", impressions=impressions, clicks=clicks))
    registry = registry_with(rows, max_channels=2)
    # The two busiest by impressions keep their names; the rest are summed, not averaged.
    assert counter_channels(registry, "adpulse_impressions_total") == {
        "douyin": 900,
        "taobao": 800,
        "other": 400,
    }
    assert counter_channels(registry, "adpulse_clicks_total") == {"douyin": 9, "taobao": 40, "other": 31}
    assert counter_channels(registry, "adpulse_gmv_total") == pytest.approx(
        {"douyin": 90.0, "taobao": 80.0, "other": 40.0}
    )
    samples = ratio_samples(registry)
    assert {k for k in samples if k[1] == "ctr"} == {
        ("douyin", "ctr", "1m"),
        ("taobao", "ctr", "1m"),
        ("other", "ctr", "1m"),
    }
    assert samples[("other", "ctr", "1m")] == pytest.approx(31 / 400)
    assert samples[("taobao", "ctr", "1m")] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("max_channels", "named"),
    [
        (0, set()),
        (1, {"a"}),
        (2, {"a", "b"}),  # b and c tie on impressions: the name breaks the tie
        (3, {"a", "b", "c"}),
        (4, {"a", "b", "c"}),
    ],
)
def test_label_values_are_bounded(max_channels: int, named: set[str]) -> None:
    rows = [
        row("c", impressions=50, clicks=1),
        row("a", impressions=100, clicks=1),
        row("b", impressions=50, clicks=1),
    ]
    labels = set(counter_channels(registry_with(rows, max_channels), "adpulse_clicks_total"))
    assert labels == named | ({"other"} if len(named) < 3 else set())
    assert len(labels - {"other"}) <= max_channels


def test_no_rows_no_samples_but_valid_exposition() -> None:
    registry = registry_with([])
    assert ratio_samples(registry) == {}
    assert counter_channels(registry, "adpulse_clicks_total") == {}
    text = generate_latest(registry).decode()
    assert "# TYPE adpulse_clicks_total counter" in text
    assert "# TYPE adpulse_kpi_ratio gauge" in text


def test_exposition_names_and_labels() -> None:
    rows = [row("douyin", impressions=10, clicks=1), row("douyin", "1h", "last", impressions=10, clicks=1)]
    text = generate_latest(registry_with(rows)).decode()
    assert 'adpulse_clicks_total{channel="douyin"} 1.0' in text
    assert 'adpulse_kpi_ratio{channel="douyin",kpi="ctr",window="1h"} 0.1' in text


def test_pipeline_metrics_use_the_given_registry() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    metrics.events.labels("clicks", "accepted").inc(3)
    metrics.events.labels("clicks", "duplicate").inc()
    assert registry.get_sample_value("adpulse_events_total", {"topic": "clicks", "outcome": "accepted"}) == 3
    assert registry.get_sample_value("adpulse_events_total", {"topic": "clicks", "outcome": "duplicate"}) == 1
    PipelineMetrics(CollectorRegistry())  # a second instance on another registry does not clash


def test_hostile_channel_names_stay_within_max_channels_and_the_exposition_parses() -> None:
    """Label values are bounded by ADPULSE_MAX_CHANNELS whatever the names (quotes, backslashes, scripts,
    a channel called "other"), and every one survives the text format's escaping."""
    names = [
        'say "hi"',
        "back\\slash",
        "双十一 大促",
        "other",
        "🎉",
        "a\u3000b",
        "x" * 64,
        "<at id=all></at>",
    ]
    names += [f"ch-{i}" for i in range(40)]
    rows = [row(name, impressions=1000 - i, clicks=i) for i, name in enumerate(names)]
    rows += [row(name, window="1m", which="last", impressions=100, clicks=3) for name in names]
    registry = registry_with(rows, max_channels=5)
    parsed = {
        sample.labels["channel"]
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert parsed == {*names[:5], "other"}
    assert counter_channels(registry, "adpulse_impressions_total")["other"] == sum(
        1000 - i for i in range(5, len(names))
    ) + (1000 - 3)


def test_the_loop_lag_watch_records_a_stall_of_the_event_loop() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)

    async def main() -> None:
        watch = asyncio.create_task(watch_loop_lag(metrics, interval_s=0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # holds the loop, as a long computation on it would
        await asyncio.sleep(0.05)
        watch.cancel()

    asyncio.run(main())
    # The loop could not wake the watch before the 0.3 s block ended: at least that much lag, measured.
    assert metrics.max_lag_s >= 0.25
    assert registry.get_sample_value("adpulse_event_loop_lag_max_seconds") == metrics.max_lag_s
    assert (registry.get_sample_value("adpulse_event_loop_lag_seconds_sum") or 0.0) >= 0.25


def test_garbage_collections_are_timed_by_generation() -> None:
    import gc

    registry = CollectorRegistry()
    stop = watch_gc(PipelineMetrics(registry))
    try:
        gc.collect()
    finally:
        stop()
    assert (registry.get_sample_value("adpulse_gc_pause_seconds_count", {"generation": "2"}) or 0) >= 1
    gc.collect()  # not watched any more
    assert registry.get_sample_value("adpulse_gc_pause_seconds_count", {"generation": "2"}) == 1
