"""The worker's judging configuration from the settings, shared by ``adpulse worker`` and ``adpulse
backtest``: one place, so a backtest judges exactly as the live worker does."""

from __future__ import annotations

from typing import cast

from prometheus_client import CollectorRegistry

from adpulse.settings import Settings
from agents.evaluate import EvaluationConfig, Evaluator
from agents.health import HealthConfig, HealthMonitor
from alerts.budgets import BudgetBook
from alerts.data_health import HealthBounds
from alerts.lifecycle import Policy
from alerts.payload import Links
from alerts.rules import load_rules
from alerts.sequential import SequentialConfig
from streams.redis_client import AsyncRedis
from streams.windows import Calendar


def evaluation_config(settings: Settings) -> EvaluationConfig:
    """Rules, lifecycle policy, links and windows as the settings give them."""
    return EvaluationConfig(
        rules=load_rules(settings.rules_file),
        policy=Policy(resolve_after=settings.alert_resolve_after, repeat_interval_s=settings.alert_repeat_s),
        links=Links(runbook_base=settings.runbook_url, grafana_url=settings.grafana_url),
        rolling_s=settings.anomaly_window_s,
        currency=settings.currency,
        lookback_s=settings.alert_lookback_s,
        grace_s=settings.grace_s,
        sequential=SequentialConfig(max_campaigns=settings.max_campaigns_per_channel),
    )


def health_config(settings: Settings) -> HealthConfig:
    """The data-health judges' buckets, windows and bounds as the settings give them."""
    return HealthConfig(
        bucket_s=settings.health_bucket_s,
        window_s=max(settings.health_window_s, settings.health_bucket_s),
        baseline_s=settings.health_baseline_s,
        clock_ahead_s=settings.clock_ahead_s,
        max_channels=settings.max_channels,
        rolling_s=settings.anomaly_window_s,
        bounds=HealthBounds(reject_ratio=settings.health_reject_ratio),
    )


def offline_evaluator(settings: Settings, config: EvaluationConfig | None = None) -> Evaluator:
    """The worker's judge without Redis (for replays): its decisions, nothing written anywhere."""
    return Evaluator(
        config or evaluation_config(settings),
        sink=None,
        redis=None,
        redis_prefix=settings.redis_prefix,
        calendar=Calendar(settings.zone),
        budgets=BudgetBook(),
        max_channels=settings.max_channels,
        registry=CollectorRegistry(),
    )


def offline_screen(settings: Settings) -> HealthMonitor:
    """The worker's data-health screen of each judging round, without Redis: it reads only the KPI buckets
    (the fold stage's counters, which need Redis, are not part of a replay)."""
    return HealthMonitor(
        health_config(settings), cast(AsyncRedis, None), settings.redis_prefix, Calendar(settings.zone)
    )
