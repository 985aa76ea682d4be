"""Data-health judges: is the data itself sound, per channel? Pure; counts come in, findings go out.

Two kinds of evidence:

- **Counters of the fold stage** per channel and wall-clock bucket (``agents.health`` collects them):
  records accepted, rejected per reason, per offending field, and records whose Kafka CreateTime was
  ahead of the worker's clock. Judged over the last ``window`` against the ``baseline`` before it:

  ============ ====================================================== ==========================
  metric        fires when                                              numbers behind it
  ============ ====================================================== ==========================
  ``rejects``   rejected / records > ``reject_ratio`` (2 %)             one-sided binomial test
                                                                        against the bound, p < α
  ``field``     one field missing or invalid in > ``field_ratio`` (2 %) the same test; per field
                of the records (also when they are rejected)
  ``duplicates``duplicates / records > max(1 %, 3 × the baseline's)    the same test against that
  ``late``      late / records > max(1 %, 3 × the baseline's)          the same test
  ``clock``     ≥ 10 records stamped ahead of the worker's clock        the count and how far ahead
  ============ ====================================================== ==========================

  A field that explains at least half of a channel's rejects is the finding (the more specific cause);
  the ``rejects`` finding then stays quiet, so one broken field pages once.

- **The KPI buckets** (event time): a channel is **silent while its spend keeps flowing** when a whole
  minute brings no click, visit or cart although its spend that minute buys at least
  ``silent_min_expected`` clicks at the channel's usual clicks per unit of spend. That is a tracker that
  stopped (the ad platform still bills), not users who stopped clicking. It is reported as
  ``data_health`` / ``events`` (the fingerprint of the drop-to-zero outage, so one outage is one alert),
  and any window holding such a minute says nothing about CTR, CVR or CPC: those findings are withheld
  (``withhold_funnel``) until the window is clean again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final

from alerts.model import Finding, Fingerprint, Severity, fingerprint
from alerts.stats import binom_ge

ACCEPTED: Final = "accepted"
AHEAD: Final = "ahead"
AHEAD_MS: Final = "ahead_ms"
FIELD_PREFIX: Final = "field:"
#: Reasons judged as rate spikes of their own, not as rejects (a late or repeated record is well-formed).
SPIKE_REASONS: Final = ("duplicate", "late")
#: The counter metrics, whose fingerprints this module's ``judge_counters`` decides.
COUNTER_METRICS: Final = frozenset({"rejects", "field", "duplicates", "late", "clock"})
#: Findings a silent tracker makes meaningless: the funnel ratios over clicks.
FUNNEL_METRICS: Final = frozenset({"ctr", "cvr", "cpc"})
_SPIKE_METRIC: Final = {"duplicate": "duplicates", "late": "late"}
_CLICK_SIDE: Final = ("clicks", "visits", "carts")


@dataclass(frozen=True, slots=True)
class HealthBounds:
    """The bounds of the data-health judges (see the module docstring for what each guards)."""

    reject_ratio: float = 0.02
    reject_critical_ratio: float = 0.2
    field_ratio: float = 0.02
    spike_floor: float = 0.01
    spike_factor: float = 3.0
    alpha: float = 0.001
    min_count: int = 5
    clock_min_records: int = 10
    silent_minutes: int = 2
    silent_min_expected: float = 10.0
    silent_critical_expected: float = 500.0
    history_clicks: int = 100


@dataclass(frozen=True, slots=True)
class Span:
    """The wall-clock window a counter judgement covers, for the finding."""

    start_s: int
    end_s: int
    zone: tzinfo

    @property
    def label(self) -> str:
        seconds = self.end_s - self.start_s
        return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"

    def bounds(self) -> tuple[str, str]:
        return (
            datetime.fromtimestamp(self.start_s, self.zone).isoformat(),
            datetime.fromtimestamp(self.end_s, self.zone).isoformat(),
        )

    def words(self) -> str:
        seconds = self.end_s - self.start_s
        return f"the last {seconds // 60} min" if seconds % 60 == 0 else f"the last {seconds} s"


def records(tally: Mapping[str, int]) -> int:
    """Every record of a channel's tally: accepted, and rejected for any reason."""
    return sum(
        n for what, n in tally.items() if not what.startswith(FIELD_PREFIX) and what not in (AHEAD, AHEAD_MS)
    )


def rejected(tally: Mapping[str, int]) -> dict[str, int]:
    """Rejects per reason, the spike reasons (late, duplicate) left out."""
    return {
        what: n
        for what, n in tally.items()
        if n and what not in (ACCEPTED, AHEAD, AHEAD_MS, *SPIKE_REASONS) and not what.startswith(FIELD_PREFIX)
    }


def _fields(tally: Mapping[str, int]) -> dict[tuple[str, str], int]:
    found = {}
    for what, n in tally.items():
        if what.startswith(FIELD_PREFIX) and n:
            name, _, problem = what[len(FIELD_PREFIX) :].rpartition(":")
            found[(name, problem)] = n
    return found


def judge_counters(
    channel: str,
    current: Mapping[str, int],
    baseline: Mapping[str, int],
    span: Span,
    bounds: HealthBounds = HealthBounds(),
) -> tuple[list[Finding], dict[Fingerprint, float | None]]:
    """The counter judges for one channel: findings, and every fingerprint judged with its value."""
    n = records(current)
    judged: dict[Fingerprint, float | None] = {}
    findings: list[Finding] = []
    if n == 0:
        return findings, judged
    base_n = records(baseline)
    start, end = span.bounds()

    def finding(
        metric: str, severity: Severity, value: float, summary: str, description: str, **kw: Any
    ) -> Finding:
        return Finding(
            kind="data_health",
            metric=metric,
            severity=severity,
            channel=channel,
            campaign=None,
            value=value,
            summary=summary,
            description=description,
            window=span.label,
            window_start=start,
            window_end=end,
            **kw,
        )

    # Fields first: the more specific cause.
    rejects = rejected(current)
    n_rejected = sum(rejects.values())
    explained = 0
    base_fields = _fields(baseline)
    for (name, problem), count in sorted(_fields(current).items()):
        share = count / n
        fp = fingerprint("data_health", "field", channel, None, name)
        judged[fp] = share
        p_value = binom_ge(count, n, bounds.field_ratio)
        if count < bounds.min_count or share <= bounds.field_ratio or p_value >= bounds.alpha:
            continue
        explained += count
        before = base_fields.get((name, problem), 0)
        findings.append(
            finding(
                "field",
                "critical" if share >= bounds.reject_critical_ratio else "warning",
                share,
                f"field {name} {problem} in {share:.1%} of {channel}'s records "
                f"({count} of {n}, {span.words()})",
                f"{count} of {n} records from {channel} in {span.words()} were rejected because field "
                f"{name!r} is {problem}; before that: {before} of {base_n}. A tracker release that renamed, "
                "dropped or retyped the field is the usual cause: see `adpulse dlq --channel "
                f"{channel} --reason invalid` for samples.",
                threshold=bounds.field_ratio,
                baseline=before / base_n if base_n else None,
                evidence={
                    "field": name,
                    "problem": problem,
                    "records": n,
                    "count": count,
                    "baseline_records": base_n,
                    "baseline_count": before,
                    "p_value": p_value,
                    "test": "one-sided binomial against the bound",
                },
                extra_key=(name,),
            )
        )

    ratio = n_rejected / n
    fp = fingerprint("data_health", "rejects", channel, None)
    judged[fp] = ratio
    p_value = binom_ge(n_rejected, n, bounds.reject_ratio)
    if (
        n_rejected >= bounds.min_count
        and ratio > bounds.reject_ratio
        and p_value < bounds.alpha
        and explained * 2 < n_rejected
    ):
        top = sorted(_fields(current).items(), key=lambda item: -item[1])[:3]
        reasons = ", ".join(f"{r} {c}" for r, c in sorted(rejects.items(), key=lambda item: -item[1]))
        findings.append(
            finding(
                "rejects",
                "critical" if ratio >= bounds.reject_critical_ratio else "warning",
                ratio,
                f"{ratio:.1%} of {channel}'s records rejected in {span.words()} ({reasons})",
                f"{n_rejected} of {n} records from {channel} went to the DLQ in {span.words()} (bound "
                f"{bounds.reject_ratio:.0%}): {reasons}. The KPIs of {channel} miss them. See "
                f"`adpulse dlq --channel {channel}` for samples with the offending field.",
                threshold=bounds.reject_ratio,
                evidence={
                    "records": n,
                    "rejected": n_rejected,
                    "by_reason": rejects,
                    "fields": {f"{name} {problem}": c for (name, problem), c in top},
                    "p_value": p_value,
                    "test": "one-sided binomial against the bound",
                },
            )
        )

    for reason in SPIKE_REASONS:
        metric = _SPIKE_METRIC[reason]
        count = current.get(reason, 0)
        share = count / n
        base_share = baseline.get(reason, 0) / base_n if base_n else 0.0
        limit = max(bounds.spike_floor, bounds.spike_factor * base_share)
        judged[fingerprint("data_health", metric, channel, None)] = share
        if count < bounds.min_count or share <= limit or limit >= 1:
            continue
        p_value = binom_ge(count, n, limit)
        if p_value >= bounds.alpha:
            continue
        cause = (
            "a tracker retrying sends without waiting for the first (or a proxy double-sending)"
            if reason == "duplicate"
            else "a tracker buffering and sending in bursts, a slow collector, or a clock running behind"
        )
        findings.append(
            finding(
                metric,
                "warning",
                share,
                f"{reason} records from {channel} at {share:.1%} ({count} of {n}) in {span.words()}, "
                f"usually {base_share:.1%}",
                f"{count} of {n} records from {channel} in {span.words()} were {reason}s, against "
                f"{base_share:.2%} before (limit {limit:.1%}). Likely: {cause}. "
                + (
                    "Duplicates are counted once, so the KPIs are right; the tracker wastes its sends."
                    if reason == "duplicate"
                    else "Late records are not counted: the KPIs of their windows are short by them."
                ),
                threshold=limit,
                baseline=base_share,
                evidence={
                    "records": n,
                    "count": count,
                    "baseline_records": base_n,
                    "baseline_count": baseline.get(reason, 0),
                    "p_value": p_value,
                    "test": "one-sided binomial against max(floor, factor × baseline)",
                },
            )
        )

    ahead = current.get(AHEAD, 0)
    mean_ahead_s = current.get(AHEAD_MS, 0) / ahead / 1000 if ahead else 0.0
    judged[fingerprint("data_health", "clock", channel, None)] = mean_ahead_s
    if ahead >= bounds.clock_min_records:
        findings.append(
            finding(
                "clock",
                "warning",
                mean_ahead_s,
                f"{channel}'s producer clock runs ahead: {ahead} records stamped {mean_ahead_s:.0f} s in "
                "the future on average",
                f"{ahead} of {n} records from {channel} in {span.words()} carry a Kafka timestamp "
                f"(CreateTime) ahead of the worker's clock, by {mean_ahead_s:.0f} s on average. Their "
                "event times are suspect too; events too far ahead are rejected as future. Check NTP on the "
                "producing hosts.",
                evidence={"records": n, "ahead": ahead, "mean_ahead_s": round(mean_ahead_s, 3)},
            )
        )
    return findings, judged


# -- silence while spend flows (event time, from the KPI buckets) ---------------------------------------


@dataclass(frozen=True, slots=True)
class Minute:
    """One channel-level 1-minute bucket: its start and counts (money in currency units)."""

    start_s: int
    counts: Mapping[str, float]

    def get(self, name: str) -> float:
        return float(self.counts.get(name, 0.0))


def clicks_per_spend(total: Mapping[str, float], bounds: HealthBounds = HealthBounds()) -> float | None:
    """The channel's usual clicks per unit of spend, from its all-time totals; None without enough history."""
    clicks, spend = total.get("clicks", 0.0), total.get("spend", 0.0)
    return clicks / spend if clicks >= bounds.history_clicks and spend > 0 else None


def is_silent(minute: Minute, rate: float | None, bounds: HealthBounds = HealthBounds()) -> bool:
    """No click-side event in a minute whose spend would have bought ``silent_min_expected`` clicks."""
    return (
        rate is not None
        and sum(minute.get(name) for name in _CLICK_SIDE) == 0
        and minute.get("spend") * rate >= bounds.silent_min_expected
    )


def judge_silence(
    channel: str,
    minutes: Sequence[Minute],
    rate: float | None,
    zone: tzinfo,
    bounds: HealthBounds = HealthBounds(),
) -> Finding | None:
    """The tracker-outage finding if the newest ``silent_minutes`` minutes (oldest first) are all silent."""
    run = 0
    for minute in reversed(minutes):
        if not is_silent(minute, rate, bounds):
            break
        run += 1
    if run < bounds.silent_minutes or rate is None:
        return None
    silent = minutes[-run:]
    spend = sum(m.get("spend") for m in silent)
    expected = spend * rate
    impressions = sum(m.get("impressions") for m in silent)
    orders = sum(m.get("orders") for m in silent)
    start_s, end_s = silent[0].start_s, silent[-1].start_s + 60
    since = datetime.fromtimestamp(start_s, zone).isoformat()
    return Finding(
        kind="data_health",
        metric="events",
        severity="critical" if expected >= bounds.silent_critical_expected else "warning",
        channel=channel,
        campaign=None,
        value=0.0,
        summary=f"tracker outage? no clicks from {channel} for {run} min while spend keeps arriving",
        description=(
            f"No click, visit or cart from {channel} since {since}, while {spend:.2f} of spend arrived in "
            f"those {run} minutes: about {expected:.0f} clicks at the channel's usual {rate:.3f} clicks per "
            f"unit of spend. The ad platform still bills, so users still click: the site or app tracker "
            f"stopped sending (impressions {impressions:.0f}, orders {orders:.0f} meanwhile). CTR, CVR and "
            "CPC of the affected windows are withheld; fix the tracker, not the campaign."
        ),
        baseline=expected,
        evidence={
            "silent_minutes": run,
            "spend": round(spend, 2),
            "expected_clicks": round(expected, 1),
            "clicks_per_spend": rate,
            "impressions": impressions,
            "orders": orders,
            "test": (
                f"no click-side event in {run} whole minutes, "
                f"each expected ≥ {bounds.silent_min_expected:.0f}"
            ),
        },
        window="1m",
        window_start=since,
        window_end=datetime.fromtimestamp(end_s, zone).isoformat(),
    )


def withhold_funnel(
    findings: Iterable[Finding], judged: Mapping[Fingerprint, float | None], silent_channels: set[str]
) -> tuple[list[Finding], dict[Fingerprint, float | None]]:
    """Drop the CTR, CVR and CPC findings (anomaly or threshold) of channels whose judged windows hold a
    silent minute, and their judged entries too: those windows neither fire nor resolve a funnel alert."""

    def withheld(kind: str, metric: str, channel: str) -> bool:
        return kind in ("anomaly", "threshold") and metric in FUNNEL_METRICS and channel in silent_channels

    kept = [f for f in findings if not withheld(f.kind, f.metric, f.channel)]
    prefixes = [
        f"{kind}:{metric}:{channel}:"
        for channel in silent_channels
        for kind in ("anomaly", "threshold")
        for metric in FUNNEL_METRICS
    ]
    # A fingerprint is kind:metric:channel:campaign[:extra] (a threshold rule's ends in its window); names
    # hold no ':' (streams.events.NAME_RULE), so the prefix names exactly one channel.
    still = {fp: value for fp, value in judged.items() if not any(fp.startswith(p) for p in prefixes)}
    return kept, still
