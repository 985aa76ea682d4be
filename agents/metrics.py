"""Prometheus metrics of the worker (CONTRACT.md §4), with an injectable registry.

Counters of the pipeline are incremented once per fetched batch, never per event. KPI gauges and the
per-channel counters are read from the latest snapshot at scrape time by ``SnapshotCollector``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.snapshot import KpiRow

#: Channels whose campaign overflow is logged (once each, by the fold stage and by the bucket agent);
#: beyond, only the metrics count, so that a flood of new channel names cannot flood the log.
MAX_LOGGED_OVERFLOWS = 1000


class PipelineMetrics:
    """The worker's own counters and gauges."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.max_lag_s = 0.0
        self.events = Counter(
            "adpulse_events", "Source records by topic and outcome", ["topic", "outcome"], registry=registry
        )
        self.late_within_grace = Counter(
            "adpulse_late_within_grace_events",
            "Events behind their partition's watermark but within the grace period (counted)",
            ["topic"],
            registry=registry,
        )
        self.dlq = Counter(
            "adpulse_dlq_records",
            "Records sent to the DLQ by source topic and reason",
            ["topic", "reason"],
            registry=registry,
        )
        self.watermark = Gauge(
            "adpulse_watermark_seconds",
            "Event-time watermark of the KPI snapshot (epoch seconds)",
            registry=registry,
        )
        self.event_time_lag = Gauge(
            "adpulse_event_time_lag_seconds", "Wall clock minus the event-time watermark", registry=registry
        )
        self.dedup_ids = Gauge(
            "adpulse_dedup_ids", "Event ids held for deduplication by this worker", registry=registry
        )
        self.partials = Counter(
            "adpulse_partials",
            "Partial aggregates (or pieces of one) published by the fold stage",
            registry=registry,
        )
        self.campaign_overflow = Counter(
            "adpulse_campaign_overflow_events",
            "Events counted under the campaign (other): their channel had ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL "
            "campaigns in the block already",
            ["topic"],
            registry=registry,
        )
        self.overflowing_buckets = Counter(
            "adpulse_campaign_overflow_buckets",
            "Window buckets that reached ADPULSE_MAX_CAMPAIGNS_PER_CHANNEL campaigns (more count as (other))",
            registry=registry,
        )
        self.quarantined = Counter(
            "adpulse_quarantined",
            "Table keys and partials messages the bucket agent skipped because handling them raised",
            ["where"],
            registry=registry,
        )
        self.source_resets = Counter(
            "adpulse_source_resets",
            "Source partitions the fold stage could not resume at its checkpoint, by reason (recreated: the "
            "checkpoint is past the log end; expired: records past it were deleted before they were read)",
            ["topic", "reason"],
            registry=registry,
        )
        self.redis_outages = Counter(
            "adpulse_redis_outages",
            "Redis outages this worker rode out (from the first failed call to the first that succeeded)",
            registry=registry,
        )
        self.redis_retries = Counter(
            "adpulse_redis_retries",
            "Redis calls that failed with a transient error and wait to be retried, by what they were for",
            ["operation"],
            registry=registry,
        )
        self.redis_unavailable = Gauge(
            "adpulse_redis_unavailable",
            "1 while this worker cannot reach Redis (its progress is held back), else 0",
            registry=registry,
        )
        self.snapshot_seconds = Histogram(
            "adpulse_snapshot_seconds",
            "Time to compute and write one KPI snapshot",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.loop_lag = Histogram(
            "adpulse_event_loop_lag_seconds",
            "How late the worker's event loop ran a timer (a stall: nothing else ran meanwhile, heartbeats "
            "included)",
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.loop_lag_max = Gauge(
            "adpulse_event_loop_lag_max_seconds",
            "The longest event-loop stall since the worker started",
            registry=registry,
        )
        self.bucket_keys = Gauge(
            "adpulse_bucket_keys",
            "Window buckets this worker's table holds (its retention bounds them)",
            registry=registry,
        )
        self.gc_pause = Histogram(
            "adpulse_gc_pause_seconds",
            "Garbage collections by generation and how long each held the process",
            ["generation"],
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.gc_freezes = Counter(
            "adpulse_gc_freezes",
            "Slow full garbage collections whose survivors were frozen out of the next ones "
            "(ADPULSE_GC_FREEZE_AFTER_S)",
            registry=registry,
        )
        self.gc_sweep_unreachable = Counter(
            "adpulse_gc_sweep_unreachable",
            "Unreachable objects the periodic sweep (ADPULSE_GC_SWEEP_S) found among the frozen and old ones",
            registry=registry,
        )
        self.malloc_trim_seconds = Histogram(
            "adpulse_malloc_trim_seconds",
            "Time to hand memory the worker freed back to the system (glibc malloc_trim, "
            "ADPULSE_MALLOC_TRIM_S; off the event loop)",
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.malloc_trimmed_bytes = Counter(
            "adpulse_malloc_trimmed_bytes",
            "Resident memory malloc_trim handed back to the system",
            registry=registry,
        )
        self.judge_seconds = Histogram(
            "adpulse_judge_seconds",
            "Time to judge one tick's closed windows and budgets (off the event loop where it is heavy)",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.abandoned_ticks = Counter(
            "adpulse_abandoned_ticks",
            "Snapshot ticks that wrote nothing because the worker's partitions moved while they ran",
            registry=registry,
        )


def watch_gc(metrics: PipelineMetrics, clock: Callable[[], float] = time.perf_counter) -> Callable[[], None]:
    """Time every garbage collection into ``adpulse_gc_pause_seconds`` (by generation): a collection of the
    oldest generation walks every tracked object, the table's buckets included, and holds every thread
    meanwhile. Returns the function that stops watching."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [clock()]
        elif started:
            metrics.gc_pause.labels(str(info.get("generation", -1))).observe(clock() - started[0])
            started.clear()

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)


#: Event-loop lag buckets: a tick of the snapshot timer is 0.5 s, a consumer's session 10 s by default.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


async def watch_loop_lag(
    metrics: PipelineMetrics, interval_s: float = 0.1, clock: Callable[[], float] = time.monotonic
) -> None:
    """Sleep ``interval_s`` over and over and record how much later than asked the loop woke up: anything
    that holds the event loop (a long computation, a blocking call) shows here, whoever caused it."""
    while True:
        asked = clock() + interval_s
        await asyncio.sleep(interval_s)
        lag = max(0.0, clock() - asked)
        metrics.loop_lag.observe(lag)
        if lag > metrics.max_lag_s:
            metrics.max_lag_s = lag
            metrics.loop_lag_max.set(lag)


_COUNTERS = (
    ("adpulse_impressions", "Impressions (sum of counts)", "impressions", 1),
    ("adpulse_clicks", "Clicks", "clicks", 1),
    ("adpulse_visits", "Landing-page visits", "visits", 1),
    ("adpulse_carts", "Add-to-cart events", "carts", 1),
    ("adpulse_orders", "Orders", "orders", 1),
    ("adpulse_gmv", "GMV in currency units", "gmv", 1),
    ("adpulse_spend", "Ad spend in currency units", "spend", 1),
)
_RATIOS = ("ctr", "cvr", "roi", "aov", "cpc", "cpa")


class SnapshotCollector(Collector):
    """Exports the KPIs of the latest snapshot: exact per-channel counters and last-window ratios.

    Channels beyond ``max_channels`` (the busiest are kept) are reported together as ``other``.
    """

    def __init__(self, rows: Callable[[], Iterable[KpiRow]], max_channels: int) -> None:
        self._rows = rows
        self._max_channels = max_channels

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        rows = [row for row in self._rows() if row.campaign == "-"]
        totals = {row.channel: row for row in rows if row.window == "total"}
        keep = set(sorted(totals, key=lambda c: (-totals[c].counts["impressions"], c))[: self._max_channels])
        label = {channel: channel if channel in keep else "other" for channel in totals}
        for name, doc, field, _ in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["channel"])
            summed: dict[str, float] = {}
            for channel, row in totals.items():
                summed[label[channel]] = summed.get(label[channel], 0) + row.counts[field]
            for channel, value in sorted(summed.items()):
                family.add_metric([channel], value)
            yield family
        ratio = GaugeMetricFamily(
            "adpulse_kpi_ratio",
            "KPI of the last complete window (no sample when there is no data)",
            labels=["channel", "kpi", "window"],
        )
        merged: dict[tuple[str, str], KpiRow] = {}
        for row in rows:
            if row.window == "total" or row.which != "last":
                continue
            key = (label.get(row.channel, "other"), row.window)
            merged[key] = row if key not in merged else merged[key].plus(row)
        for (channel, window), row in sorted(merged.items()):
            for kpi, kpi_value in row.ratios().items():
                if kpi in _RATIOS and kpi_value is not None:
                    ratio.add_metric([channel, kpi, window], kpi_value)
        yield ratio
