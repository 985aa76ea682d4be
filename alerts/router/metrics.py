"""The router's Prometheus metrics (CONTRACT.md §4), with an injectable registry."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class RouterMetrics:
    """``adpulse_notifications_total`` and the router's latency and backlog."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.notifications = Counter(
            "adpulse_notifications",
            "Alert notifications by target and outcome (sent; retried: attempts that were retried; failed:"
            " dead-lettered)",
            ["target", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "adpulse_notification_latency_seconds",
            "Alert in Redis (stream entry) to accepted by the target",
            ["target"],
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0),
        )
        self.pending = Gauge(
            "adpulse_router_pending_alerts",
            "Alert stream entries read by a router and not yet delivered",
            registry=registry,
        )
        self.unacknowledged = Gauge(
            "adpulse_alerts_unacknowledged",
            "Alerts firing that nobody acknowledged or snoozed",
            ["severity"],
            registry=registry,
        )
        self.unacknowledged_age = Gauge(
            "adpulse_alerts_unacknowledged_age_seconds",
            "Age of the oldest firing alert nobody acknowledged or snoozed (0: none)",
            ["severity"],
            registry=registry,
        )
