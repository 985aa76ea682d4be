"""Alert metrics for Prometheus (CONTRACT.md §4), with an injectable registry.

``adpulse_alerts_firing{kind,severity,channel}`` is computed at scrape time from whatever the caller says
is firing (the worker: its ``AlertBook.firing()``, so each worker reports only the alerts it owns and a
``sum`` across workers counts each alert once). ``adpulse_alerts_total{kind,severity}`` counts firing
state changes: an alert that fires, and one that escalates to a higher severity; repeats are not counted.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

OTHER = "other"


def _get(item: Any, name: str) -> Any:
    """A field of an alert given as JSON (a mapping) or as a lifecycle object (attributes)."""
    return item[name] if isinstance(item, Mapping) else getattr(item, name)


class FiringCollector(Collector):
    """``adpulse_alerts_firing`` from ``firing()`` at scrape time.

    ``firing`` returns the alerts firing now, as alert JSON mappings or objects with ``kind``,
    ``severity`` and ``channel`` (``alerts.lifecycle.Firing``). The ``max_channels`` channels with the most
    firing alerts keep their name; the rest are reported together as ``other``.
    """

    def __init__(self, firing: Callable[[], Iterable[Any]], max_channels: int = 500) -> None:
        if max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {max_channels}")
        self._firing = firing
        self._max_channels = max_channels

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = [(_get(a, "kind"), _get(a, "severity"), _get(a, "channel")) for a in self._firing()]
        per_channel = Tally(channel for _, _, channel in labels)
        keep = set(sorted(per_channel, key=lambda c: (-per_channel[c], c))[: self._max_channels])
        counts = Tally(
            (kind, severity, channel if channel in keep else OTHER) for kind, severity, channel in labels
        )
        family = GaugeMetricFamily(
            "adpulse_alerts_firing", "Alerts firing now", labels=["kind", "severity", "channel"]
        )
        for key, value in sorted(counts.items()):
            family.add_metric(list(key), value)
        yield family


class AlertMetrics:
    """The alert metrics of one process: the firing gauge (a collector) and the state-change counter."""

    def __init__(
        self,
        firing: Callable[[], Iterable[Any]],
        max_channels: int = 500,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.total = Counter(
            "adpulse_alerts",
            "Alert firing state changes (fired or escalated)",
            ["kind", "severity"],
            registry=registry,
        )
        registry.register(FiringCollector(firing, max_channels))

    def observe(self, alerts: Iterable[Any]) -> None:
        """Count the firing state changes among ``alerts`` (lifecycle ``Alert``s or alert JSON).

        Pass only alerts written now (``RedisAlertSink.publish`` says which), so retries never count twice.
        """
        for alert in alerts:
            if _get(alert, "change") in ("fired", "escalated"):
                self.total.labels(_get(alert, "kind"), _get(alert, "severity")).inc()
