"""Evaluation on the worker: closed windows and budgets → findings → lifecycle → Redis and Prometheus.

Runs inside the snapshot timer, for the channels this worker owns. What is judged:

- every newly closed window of a size named by a threshold rule (the marketing targets);
- every closed minute, per channel and per campaign, through the sequential judge
  (:mod:`alerts.sequential`): CTR, CVR, ROI and each funnel stage, evidence accumulating minute by minute
  against the hourly (and same-hour-of-day) baseline, or the subject's own earlier minutes at first;
- tracker outages and spend surges on a rolling window (default the last 10 minutes, rolled up from
  1-minute buckets) each time a minute closes, and on each closed hour; the baseline is the preceding
  rolling windows (and, for hours, the same hour on earlier days);
- every budget of an owned channel, every tick, against the spend of its current period.

Only the newest closed window is judged: after a restart the worker does not replay history into
alerts, and the lifecycle's deterministic ids make a re-judged window publish nothing new.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram

from agents.partials import BucketValue, totals
from agents.redis_retry import RedisRetry
from agents.snapshot import KpiRow, NamedCounts, counts_of
from alerts.acks import prune_acks, read_acks
from alerts.budgets import (
    Approval,
    BudgetBook,
    approval_field,
    budget_judged,
    evaluate_budget,
    period_bounds,
    used_ratio,
)
from alerts.detectors import Detectors, DropToZero, Observation, RatioDrop, SpendSurge, Subject
from alerts.drivers import drivers
from alerts.kpi import kpis
from alerts.lifecycle import Alert, AlertBook, Policy
from alerts.model import Finding, Fingerprint, fingerprint
from alerts.payload import AlertJson, Links, build_alert
from alerts.rules import RulesConfig, evaluate_thresholds
from alerts.sequential import SequentialConfig, SequentialJudge
from alerts.sinks.metrics import AlertMetrics
from alerts.sinks.redis_sink import RedisAlertSink
from streams.codec import N_SLOTS
from streams.events import NO_CAMPAIGN
from streams.keys import Keys
from streams.redis_client import AsyncRedis, as_text
from streams.windows import MINUTE_S, TOTAL, Calendar

log = logging.getLogger(__name__)
RATIO_KPIS = frozenset({"ctr", "cvr", "roi", "funnel_visit", "funnel_cart", "funnel_order"})
Lookup = Callable[[str, str, int], BucketValue | None]
DAY_S = 86400


#: Latencies beyond this are a backfill or a catch-up, not how fast alerts are on live traffic.
LIVE_LATENCY_S = 3600.0


class Owned(Protocol):
    """The channels this worker owns: a container with the partitions behind it."""

    partitions: frozenset[int]

    def __contains__(self, channel: object) -> bool: ...


#: The rolling window's baseline is its last 12 windows (2 hours): half of them must have seen the channel.
ROLLING_WARM = 12


def rolling_detectors() -> Detectors:
    """Tracker outages and spend surges on the rolling window. Ratio drops (a collapse to zero included)
    are the sequential judge's: one source per condition, so one judge decides when it is over. Both judge
    against the last 12 windows (2 hours); a surge must also clear the 12 before them."""
    return Detectors(
        detectors=(
            DropToZero(collapse=False, baseline_windows=12),
            SpendSurge(baseline_windows=12, earlier_windows=12),
        )
    )


def hourly_detectors() -> Detectors:
    """The same on each closed hour of a channel and of each campaign."""
    return Detectors(detectors=(DropToZero(collapse=False), SpendSurge()))


@dataclass(frozen=True, slots=True)
class EvaluationConfig:
    """What to judge and how."""

    rules: RulesConfig
    rolling: Detectors = field(default_factory=rolling_detectors)
    hourly: Detectors = field(default_factory=hourly_detectors)
    sequential: SequentialConfig | None = field(default_factory=SequentialConfig)
    policy: Policy = field(default_factory=Policy)
    links: Links = field(default_factory=Links)
    rolling_s: int = 600
    rolling_history: int = 24
    hourly_history: int = 24
    seasonal_days: int = 7
    currency: str = "CNY"
    lookback_s: float = 86400.0
    grace_s: float = 60.0


class _Sums:
    """A bucket's totals per campaign and its channel total, for the bucket values read lately.

    Bucket values never change in place (a merge makes a new one), so the same object has the same sums:
    the judges read the same buckets again and again within a tick (the all-time total once per round, the
    minutes of overlapping rolling windows), and summing one costs all its campaigns. Kept by identity, the
    latest ones up to ``max_rows`` campaign rows in all (holding a value keeps it alive).
    """

    def __init__(self, max_rows: int = 20_000) -> None:
        self.max_rows = max_rows
        self._rows = 0
        self._items: OrderedDict[int, tuple[BucketValue, dict[str, list[int]], list[int]]] = OrderedDict()

    def of(self, value: BucketValue) -> tuple[dict[str, list[int]], list[int]]:
        """(totals per campaign, channel total) of ``value``; do not change them."""
        key = id(value)
        hit = self._items.get(key)
        if hit is not None and hit[0] is value:
            return hit[1], hit[2]
        per_campaign = totals(value)
        whole = [0] * N_SLOTS
        for vector in per_campaign.values():
            for slot in range(N_SLOTS):
                whole[slot] += vector[slot]
        if hit is not None:
            self._rows -= len(hit[1])
        self._items[key] = (value, per_campaign, whole)
        self._rows += len(per_campaign)
        while self._rows > self.max_rows and len(self._items) > 1:
            _, (_, gone, _) = self._items.popitem(last=False)
            self._rows -= len(gone)
        return per_campaign, whole


_SUMS = _Sums()


def add_bucket(summed: list[int], value: BucketValue | None, campaign: str | None) -> list[int]:
    """Add one bucket's counter vector (raw slots, money in micros) into ``summed`` and return it: the
    channel's (``campaign=None``, all campaigns) or one campaign's."""
    if value is not None:
        per_campaign, whole = _SUMS.of(value)
        vector = whole if campaign is None else per_campaign.get(campaign)
        if vector is not None:
            for slot in range(N_SLOTS):
                summed[slot] += vector[slot]
    return summed


def vector_counts(value: BucketValue | None, campaign: str | None) -> dict[str, float]:
    """Named counts of one bucket for the channel (``campaign=None``) or one campaign."""
    return counts_of(add_bucket([0] * N_SLOTS, value, campaign))


def _summed(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    result: dict[str, float] = {}
    for part in parts:
        for name, value in part.items():
            result[name] = result.get(name, 0.0) + value
    return result


class MinuteVectors:
    """Running sums of a channel's closed minutes (channel level), each minute read from the table once.

    The rolling windows of one minute and the next share all but one of their minutes (25 windows of 10
    minutes, every minute): with prefix sums each window costs one subtraction instead of ten bucket reads
    and additions, which keeps the judge's cost per channel and minute small. Closed minutes do not change
    (late data beyond the grace goes to the DLQ).
    """

    def __init__(self) -> None:
        # channel -> (first minute, prefix sums: entry i sums the minutes [first, first + i minutes)).
        self._sums: dict[str, tuple[int, list[list[int]]]] = {}

    def clear(self) -> None:
        self._sums.clear()

    def history(
        self, lookup: Lookup, channel: str, end_s: int, span_s: int, windows: int
    ) -> list[Observation]:
        """``windows`` + 1 windows of ``span_s`` ending at ``end_s`` (oldest first; the newest is the one
        judged), the channel's counts in each."""
        first = end_s - (windows + 1) * span_s
        base, prefix = self._sums.get(channel, (first, [[0] * N_SLOTS]))
        if base > first or base + (len(prefix) - 1) * MINUTE_S < first:
            base, prefix = first, [[0] * N_SLOTS]  # a gap or a step back: start over
        elif first - base > 2 * (windows + 1) * span_s:
            drop = (first - base) // MINUTE_S
            base, prefix = first, prefix[drop:]
        while base + (len(prefix) - 1) * MINUTE_S < end_s:
            start = base + (len(prefix) - 1) * MINUTE_S
            prefix.append(add_bucket(list(prefix[-1]), lookup(channel, "1m", start), None))
        self._sums[channel] = (base, prefix)
        history = []
        for k in range(windows, -1, -1):
            stop = end_s - k * span_s
            high, low = prefix[(stop - base) // MINUTE_S], prefix[(stop - span_s - base) // MINUTE_S]
            history.append(
                Observation(stop - span_s, stop, counts_of([a - b for a, b in zip(high, low, strict=True)]))
            )
        return history


def hourly_history(
    lookup: Lookup,
    calendar: Calendar,
    channel: str,
    campaign: str | None,
    start_s: int,
    recent: int,
    days: int,
    hours: HourCounts | None = None,
) -> list[Observation]:
    """The closed hour at ``start_s`` with its ``recent`` predecessors and the same hour ``days`` back.

    Recent hours are always there (a silent hour is evidence); earlier days only where data exists.
    ``hours`` reads each hour bucket once for all the campaigns of a round (default: read it here).
    """
    hours = hours or HourCounts(lookup)
    recent_starts = {start_s - k * 3600 for k in range(recent + 1)}
    seasonal = {
        s
        for d in range(1, days + 1)
        if (s := start_s - d * DAY_S) not in recent_starts and lookup(channel, "1h", s)
    }
    return [
        Observation(s, calendar.end("1h", s), hours.counts(channel, s, campaign))
        for s in sorted(recent_starts | seasonal)
    ]


class HourCounts:
    """The hour buckets of one judging round, each read and summed once: every campaign of a channel judges
    its closed hour against the same 25-31 hours, and summing a bucket costs all its campaigns."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self._per_campaign: dict[tuple[str, int], dict[str, list[int]]] = {}
        self._channel: dict[tuple[str, int], dict[str, float]] = {}

    def counts(self, channel: str, start_s: int, campaign: str | None) -> dict[str, float]:
        """Named counts of the hour at ``start_s`` for ``channel`` (``campaign=None``) or one campaign."""
        key = (channel, start_s)
        per_campaign = self._per_campaign.get(key)
        if per_campaign is None:
            value = self.lookup(channel, "1h", start_s)
            per_campaign = self._per_campaign[key] = totals(value) if value is not None else {}
        if campaign is not None:
            return counts_of(per_campaign.get(campaign, [0] * N_SLOTS))
        whole = self._channel.get(key)
        if whole is None:
            summed = [0] * N_SLOTS
            for vector in per_campaign.values():
                for slot in range(N_SLOTS):
                    summed[slot] += vector[slot]
            whole = self._channel[key] = counts_of(summed)
        return whole


class Evaluator:
    """The worker's judge: owns the alert book of its channels and publishes state changes."""

    def __init__(
        self,
        config: EvaluationConfig,
        sink: RedisAlertSink | None,
        redis: AsyncRedis | None,
        redis_prefix: str,
        calendar: Calendar,
        budgets: BudgetBook,
        max_channels: int,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.time,
        retry: RedisRetry | None = None,
    ) -> None:
        """``retry``: how Redis calls wait out an outage (``agents.redis_retry``; the worker shares one)."""
        self.config = config
        self.sink = sink
        self.redis = redis
        self.retry = retry if retry is not None else RedisRetry()
        self.redis_prefix = redis_prefix
        self.calendar = calendar
        self.budgets = budgets
        self.clock = clock
        self.book = AlertBook(config.policy)
        self.sequential = SequentialJudge(config.sequential, calendar.zone) if config.sequential else None
        self._minute_vectors = MinuteVectors()
        self._owned: frozenset[int] | None = None
        # "channel|campaign|window" -> start of the newest window judged (persisted: a restart resumes there).
        self._judged: dict[str, int] = {}
        self._progress: dict[str, int] = {}
        self._judged_key = Keys(redis_prefix).judged
        self._judged_pruned_s = -PRUNE_EVERY_S
        self._acks_pruned_s = -PRUNE_EVERY_S
        self.metrics = AlertMetrics(lambda: self.book.firing(), max_channels, registry=registry)
        self.latency = Histogram(
            "adpulse_alert_latency_seconds",
            "Evidence complete (window end + grace; for budgets the spend folded so far) to the alert in"
            " Redis; live traffic only (backfills are left out)",
            ["kind"],
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
        )
        self.budget_used = Gauge(
            "adpulse_budget_used_ratio",
            "Spend in the budget period ÷ spendable budget",
            ["channel", "campaign", "period"],
            registry=registry,
        )

    @property
    def _redis(self) -> AsyncRedis:
        assert self.redis is not None, "an offline judge (no Redis) only decides: use decide()"
        return self.redis

    async def ensure_loaded(self, owned: Owned) -> None:
        """(Re)load the lifecycle state of the owned channels when ownership changes (start, rebalance)."""
        if owned.partitions == self._owned:
            return
        sink = self.sink
        assert sink is not None, "an offline judge (no sink) has no saved state to load"
        state = await self.retry.call("loading alert state", lambda: sink.load_state(channels=owned))
        self.book = AlertBook.from_state(state, self.config.policy)
        if self.sequential is not None:
            self.sequential.forget()  # rebuilt from the buckets of the channels owned now
        self._minute_vectors.clear()
        judged = await self.retry.call("loading alert state", lambda: self._redis.hgetall(self._judged_key))
        self._judged = {as_text(k): int(v) for k, v in judged.items()}
        self._owned = owned.partitions
        log.info(
            "alerts: judging the channels of partitions %s, %d alerts firing",
            sorted(owned.partitions),
            len(self.book.firing()),
        )

    # -- judging -------------------------------------------------------------------------------

    def claim(self, row: KpiRow, now_s: float) -> bool:
        """Claim a closed window for judging if it needs it: newer than the last judged one of its series,
        and (on a first start over old data) within the lookback, so history does not page anyone."""
        key = f"{row.channel}|{row.campaign}|{row.window}"
        if (
            row.window_start <= self._judged.get(key, -1)
            or (row.window_end or 0) < now_s - self.config.lookback_s
        ):
            return False
        self._judged[key] = self._progress[key] = row.window_start
        return True

    def invalidate(self) -> None:
        """Forget what is in memory (after a failed round): the next round reloads it from Redis, so a
        window whose alerts were not published is judged again."""
        self._owned = None
        self._progress = {}

    async def save_progress(self) -> None:
        """Persist which windows were judged (after their alerts were published)."""
        if self._progress:
            progress = self._progress
            await self.retry.call(
                "saving judged windows", lambda: self._redis.hset(self._judged_key, mapping=progress)
            )
            self._progress = {}

    async def prune(self, watermark_s: float, retention_s: Mapping[str, float]) -> None:
        """Once an hour of event time, forget the judged marks of series whose newest judged window is
        older than its window's retention (no bucket is left to judge again: a campaign that stopped); once
        an hour of wall-clock time, delete acknowledgements that can mute nothing any more."""
        if watermark_s - self._judged_pruned_s >= PRUNE_EVERY_S:
            self._judged_pruned_s = watermark_s
            gone = [
                key
                for key, start in self._judged.items()
                if _judged_expired(key, start, watermark_s, retention_s)
            ]
            if gone:
                for key in gone:
                    del self._judged[key]
                    self._progress.pop(key, None)
                await self.retry.call(
                    "pruning judged windows", lambda: self._redis.hdel(self._judged_key, *gone)
                )
        now = self.clock()
        if now - self._acks_pruned_s >= PRUNE_EVERY_S:
            self._acks_pruned_s = now
            await self.retry.call(
                "pruning acknowledgements", lambda: prune_acks(self._redis, self.redis_prefix, now)
            )

    def judge_windows(
        self, fresh: Iterable[KpiRow], lookup: Lookup
    ) -> tuple[list[Finding], dict[Fingerprint, float | None]]:
        """Thresholds and anomaly detectors on closed windows (one event-time step of them)."""
        findings: list[Finding] = []
        judged: dict[Fingerprint, float | None] = {}
        cfg = self.config
        hours = HourCounts(lookup)
        for row in fresh:
            campaign = None if row.campaign == NO_CAMPAIGN else row.campaign
            shown = row.to_json(self.calendar.zone)
            bounds = (str(shown["window_start"]), str(shown["window_end"]))
            found, ok = evaluate_thresholds(
                cfg.rules.rules, row.channel, campaign, row.window, row.counts, bounds
            )
            findings += found
            judged.update(ok)
            if row.window == "1m" and campaign is None and row.window_end is not None:
                if self.sequential is not None:
                    findings += self._sequential(
                        self.sequential, row.channel, row.window_start, lookup, judged
                    )
                history = self._minute_vectors.history(
                    lookup, row.channel, row.window_end, cfg.rolling_s, cfg.rolling_history
                )
                findings += self._detect(
                    cfg.rolling,
                    history,
                    row.channel,
                    None,
                    f"{cfg.rolling_s // 60}m",
                    lookup,
                    judged,
                    warm=ROLLING_WARM,
                )
            elif row.window == "1h":
                history = hourly_history(
                    lookup,
                    self.calendar,
                    row.channel,
                    campaign,
                    row.window_start,
                    cfg.hourly_history,
                    cfg.seasonal_days,
                    hours,
                )
                findings += self._detect(cfg.hourly, history, row.channel, campaign, "1h", lookup, judged)
        return findings, judged

    def _detect(
        self,
        detectors: Detectors,
        history: list[Observation],
        channel: str,
        campaign: str | None,
        window: str,
        lookup: Lookup,
        judged: dict[Fingerprint, float | None],
        warm: int | None = None,
    ) -> list[Finding]:
        if not _warm(history[-1 - (warm or len(history)) : -1]):
            return []  # a baseline still filling (a new channel, the start of the data) proves nothing
        subject = Subject(channel, campaign, window, self.calendar.zone)
        found = detectors.run(history, subject)
        current = history[-1].counts
        values = {**kpis(current), "spend": current.get("spend"), "events": current.get("impressions")}
        holding = {f.fingerprint for f in found}
        for detector in detectors.detectors:
            for kind, metric in _judges(detector):
                fp = fingerprint(kind, metric, channel, campaign)
                if fp in holding or fp in judged:
                    continue
                firing = self.book.firing_finding(fp)
                # "Not significant any more" is no recovery: a firing anomaly resolves only once its
                # value is back past halfway to the baseline (data health: once events arrive again).
                if firing is None or kind != "anomaly" or recovered(firing, values.get(metric)):
                    judged[fp] = values.get(metric)
        if campaign is None and window != "1h":
            found = [self._with_drivers(f, history, lookup) for f in found]
        return found

    def _sequential(
        self,
        judge: SequentialJudge,
        channel: str,
        start_s: int,
        lookup: Lookup,
        judged: dict[Fingerprint, float | None],
    ) -> list[Finding]:
        """One closed minute of ``channel`` (and its campaigns) through the sequential judge."""

        def minutes(s: int) -> dict[str, dict[str, float]] | None:
            value = lookup(channel, "1m", s)
            return {c: counts_of(v) for c, v in totals(value).items()} if value else None

        def hours(s: int) -> NamedCounts | None:
            # The judge keeps what this gives for a channel's last day of hours and the same hour on the
            # week's days: as named counts of every campaign in them, some 336,000 dicts at 100,000
            # campaigns (BENCHMARKS.md).
            value = lookup(channel, "1h", s)
            return NamedCounts(value) if value else None

        verdict = judge.minute(channel, start_s, minutes, hours)
        for fp, value in verdict.recovered.items():
            judged.setdefault(fp, value)
        found = []
        for finding in verdict.findings:
            if finding.campaign is None and finding.window_start and finding.window_end:
                # The campaigns behind a channel's drop: its last hour at most, against the hour before.
                end = int(datetime.fromisoformat(finding.window_end).timestamp())
                begin = max(int(datetime.fromisoformat(finding.window_start).timestamp()), end - 3600)
                before = Observation(begin - 3600, begin, {})
                finding = self._with_drivers(finding, [before, Observation(begin, end, {})], lookup)
            found.append(finding)
        return found

    def _with_drivers(self, finding: Finding, history: list[Observation], lookup: Lookup) -> Finding:
        """For a channel-level ratio drop: the campaigns that drove it, in the evidence."""
        if finding.metric not in RATIO_KPIS:
            return finding
        current, before = history[-1], history[:-1]
        per_campaign_now: dict[str, dict[str, float]] = {}
        per_campaign_before: dict[str, dict[str, float]] = {}
        for target, windows in ((per_campaign_now, [current]), (per_campaign_before, before)):
            for window in windows:
                for start in range(window.start_s, window.end_s, MINUTE_S):
                    value = lookup(finding.channel, "1m", start)
                    for campaign, vector in (totals(value) if value else {}).items():
                        target[campaign] = _summed([target.get(campaign, {}), counts_of(vector)])
        top = drivers(finding.metric, per_campaign_now, per_campaign_before)
        return replace(finding, evidence={**finding.evidence, "campaigns": top})

    def judge_budgets(
        self,
        owned: Container[str],
        lookup: Lookup,
        index_starts: Callable[[str, str], AbstractSet[int]],
        approvals: Mapping[str, bytes | str | None],
        watermark_s: float,
    ) -> tuple[list[Finding], dict[Fingerprint, float | None]]:
        """Every budget of an owned channel against the spend of its current period."""
        findings: list[Finding] = []
        judged: dict[Fingerprint, float | None] = {}
        zone = self.calendar.zone
        now = self.clock()
        for budget in self.budgets:
            if budget.channel not in owned:
                continue
            start, _end = period_bounds(budget.period, now, zone)
            spent = self._spend(lookup, index_starts, budget.channel, budget.campaign, budget.period, start)
            rate = self._spend_rate(lookup, budget.channel, budget.campaign, watermark_s)
            raw = approvals.get(approval_field(budget.channel, budget.campaign, budget.period, start, zone))
            approval = _approval(raw)
            findings += evaluate_budget(
                budget, spent, now, rate, approval, zone=zone, currency=self.config.currency
            )
            judged.update(budget_judged(budget, spent, now, rate, zone=zone))
            self.budget_used.labels(budget.channel, budget.campaign or NO_CAMPAIGN, budget.period).set(
                used_ratio(spent, budget)
            )
        # Budget alerts of earlier periods, or of deleted budgets, are fine now.
        for firing in self.book.firing():
            if firing.kind == "budget" and firing.channel in owned and firing.fingerprint not in judged:
                judged[firing.fingerprint] = None
        return findings, judged

    def _spend(
        self,
        lookup: Lookup,
        index_starts: Callable[[str, str], AbstractSet[int]],
        channel: str,
        campaign: str | None,
        period: str,
        start: int,
    ) -> float:
        if period == "total":
            return vector_counts(lookup(channel, TOTAL, 0), campaign)["spend"]
        if period == "day":
            return vector_counts(lookup(channel, "1d", start), campaign)["spend"]
        return sum(
            vector_counts(lookup(channel, "1d", day), campaign)["spend"]
            for day in index_starts(channel, "1d")
            if day >= start
        )

    def _spend_rate(self, lookup: Lookup, channel: str, campaign: str | None, watermark_s: float) -> float:
        """Spend per second over the last hour of event time."""
        last = int(watermark_s) - int(watermark_s) % MINUTE_S
        spent = sum(
            vector_counts(lookup(channel, "1m", last - m * MINUTE_S), campaign)["spend"] for m in range(60)
        )
        return spent / 3600.0

    # -- publishing ----------------------------------------------------------------------------

    def decide(
        self, findings: list[Finding], judged: dict[Fingerprint, float | None], at: datetime
    ) -> tuple[list[Alert], list[AlertJson]]:
        """The lifecycle's notifications for one round at ``at``, and their alert JSON (no I/O: the
        backtest replays rounds through this, the live worker through :meth:`publish`)."""
        alerts = self.book.evaluate(findings, judged, at)
        return alerts, [build_alert(alert, self.config.links) for alert in alerts]

    async def publish(
        self,
        findings: list[Finding],
        judged: dict[Fingerprint, float | None],
        evidence_s: float | None = None,
        at_s: float | None = None,
    ) -> int:
        """Run the lifecycle and write its state changes; returns how many alerts were written now.

        ``evidence_s`` is the event time the evidence runs to when the findings are not about a closed
        window (budgets: the watermark of the spend folded so far); it feeds the latency histogram.
        ``at_s`` is the lifecycle's clock for this round: the event time of the windows judged, so that a
        backfill or a backtest of the same events decides exactly as the live worker did (default: now).
        """
        now = datetime.fromtimestamp(self.clock() if at_s is None else at_s, UTC)
        alerts, payloads = self.decide(findings, judged, now)
        if any(alert.change == "repeat" for alert in alerts):
            # Someone acknowledged or snoozed it (chat link, `adpulse alerts ack`): no repeats.
            acks = await self.retry.call(
                "reading acknowledgements", lambda: read_acks(self._redis, self.redis_prefix)
            )
            kept = [
                i
                for i, (alert, payload) in enumerate(zip(alerts, payloads, strict=True))
                if not (
                    alert.change == "repeat"
                    and (ack := acks.get(alert.finding.fingerprint)) is not None
                    and ack.mutes(payload, now.timestamp())
                )
            ]
            alerts, payloads = [alerts[i] for i in kept], [payloads[i] for i in kept]
        sink = self.sink
        assert sink is not None, "an offline judge (no sink) cannot publish: use decide()"
        changes = self.book.pop_changes()
        # Safe to send again: the sink writes each alert id once (a retry after a lost reply writes nothing).
        written = await self.retry.call("publishing alerts", lambda: sink.publish(payloads, changes))
        new = [alert for alert, fresh in zip(alerts, written, strict=True) if fresh]
        self.metrics.observe(new)
        done_s = self.clock()
        for alert in new:
            log.info("alert %s %s: %s", alert.change, alert.finding.fingerprint, alert.finding.summary)
            complete_s = self._evidence_complete(alert.finding, evidence_s)
            if complete_s is not None and 0.0 <= done_s - complete_s <= LIVE_LATENCY_S:
                self.latency.labels(alert.finding.kind).observe(done_s - complete_s)
        return len(new)

    def _evidence_complete(self, finding: Finding, evidence_s: float | None) -> float | None:
        """When the evidence of ``finding`` was complete: its window's end plus grace, else ``evidence_s``."""
        if finding.kind != "budget" and finding.window_end is not None:
            return datetime.fromisoformat(finding.window_end).timestamp() + self.config.grace_s
        return evidence_s

    async def approvals(self) -> dict[str, bytes | str | None]:
        """Every recorded approval (few: one per budget and period)."""
        key = Keys(self.redis_prefix).approvals
        raw = await self.retry.call("reading budget approvals", lambda: self._redis.hgetall(key))
        return {as_text(k): v for k, v in raw.items()}


def _judges(detector: object) -> list[tuple[str, str]]:
    """The (kind, metric) conditions a detector decides each time it runs (OK when it finds nothing)."""
    if isinstance(detector, RatioDrop):
        return [("anomaly", detector.metric)]
    if isinstance(detector, SpendSurge):
        return [("anomaly", "spend")]
    if isinstance(detector, DropToZero):
        return [("data_health", "events")]
    return [("anomaly", "roi")]


#: A firing anomaly without a threshold counts as recovered once its value is back within this share of the
#: baseline (halfway to a 50 % drop or a doubling).
RECOVERY_BAND = 0.25


def recovered(finding: Finding, value: float | None) -> bool:
    """Whether ``value`` is evidence that the anomaly of ``finding`` is over: back on the baseline's side of
    the midpoint between the baseline and the line the finding crossed (its threshold, else the baseline
    ∓ 50 %). A value between the line and the midpoint proves nothing either way and keeps it firing."""
    if value is None or finding.baseline is None:
        return False
    falling = (finding.change_pct or 0.0) < 0
    line = finding.threshold
    if line is None:
        line = finding.baseline * (1 - 2 * RECOVERY_BAND if falling else 1 + 2 * RECOVERY_BAND)
    midpoint = (finding.baseline + line) / 2
    return value >= midpoint if falling else value <= midpoint


#: Judged marks and acknowledgements are pruned this often (event time and wall-clock time respectively).
PRUNE_EVERY_S = 3600.0


def _judged_expired(key: str, start: int, watermark_s: float, retention_s: Mapping[str, float]) -> bool:
    """Whether a judged mark (``channel|campaign|window`` → newest judged start) is past its retention."""
    window = key.rpartition("|")[2]
    kept = retention_s.get(window)
    return kept is not None and start + kept < watermark_s


def _warm(baseline: list[Observation]) -> bool:
    """At least half the baseline windows saw the channel's tracker at all."""
    active = sum(
        1 for o in baseline if o.get("impressions") + o.get("clicks") + o.get("orders") + o.get("spend") > 0
    )
    return active * 2 >= len(baseline) and active > 0


def _approval(raw: bytes | str | None) -> Approval | None:
    if raw is None:
        return None
    try:
        return Approval.from_json(raw)
    except ValueError:
        log.warning("ignoring a malformed budget approval record: %r", raw[:200])
        return None
