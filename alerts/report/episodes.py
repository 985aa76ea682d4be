"""Alert episodes from the alerts stream, and the one-line notes a report shows for them. Pure.

The stream holds one entry per state change (fired, escalated, repeat, resolved). An *episode* is one
condition from the moment it fired to its resolution: the entries of one fingerprint with one ``fired_at``.
An episode belongs to the days its evidence covers, in event time (its windows), not to the moment a worker
judged it: a backfill of last Tuesday's data puts its alerts on last Tuesday. A budget's daily period is its
day; a monthly or all-time budget's crossing belongs to the day it happened (``fired_at``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from alerts.budgets import Approval, approval_field
from alerts.model import SEVERITY_ORDER
from alerts.report.model import signed

_LABEL = {
    "ctr": "CTR",
    "cvr": "CVR",
    "roi": "ROI",
    "aov": "AOV",
    "cpc": "CPC",
    "cpa": "CPA",
    "funnel_visit": "click → visit",
    "funnel_cart": "visit → cart",
    "funnel_order": "cart → order",
}
_PERCENT = frozenset({"ctr", "cvr", "funnel_visit", "funnel_cart", "funnel_order"})


@dataclass(frozen=True, slots=True)
class Episode:
    """One alert condition from firing to resolution (``resolved_at`` None: still firing, as far as known).

    ``start``/``end`` span the windows of its evidence (event time); ``severity`` is the highest it reached.
    """

    fingerprint: str
    kind: str
    metric: str
    channel: str
    campaign: str | None
    severity: str
    fired_at: datetime
    resolved_at: datetime | None
    window: str | None
    start: datetime | None
    end: datetime | None
    value: float | None
    threshold: float | None
    baseline: float | None
    change_pct: float | None
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolve_s(self) -> float | None:
        """Seconds from firing to resolution; None while it fires."""
        return None if self.resolved_at is None else (self.resolved_at - self.fired_at).total_seconds()

    def overlaps(self, lo: datetime, hi: datetime) -> bool:
        """Whether the episode belongs to ``[lo, hi)`` (see the module docstring)."""
        if self.kind == "budget" and self.window != "day":
            return lo <= self.fired_at < hi
        start = self.start or self.fired_at
        end = self.end or start
        if self.kind == "budget":
            return lo <= start < hi
        return start < hi and (end > lo or start >= lo)


def episodes(alerts: Iterable[object]) -> list[Episode]:
    """Episodes of the alert JSONs in ``alerts`` (stream order, oldest first), ordered by when they began.

    Malformed entries (any version of any worker wrote them) are skipped; an episode whose firing entry was
    trimmed from the stream is still built from what remains.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for alert in alerts:
        if not isinstance(alert, Mapping):
            continue
        fp, fired = alert.get("fingerprint"), alert.get("fired_at")
        if isinstance(fp, str) and isinstance(fired, str) and _time(fired) is not None:
            groups.setdefault((fp, fired), []).append(alert)
    built = [_episode(fp, entries) for (fp, _fired), entries in groups.items()]
    return sorted(built, key=lambda e: (e.start or e.fired_at, e.fired_at, e.fingerprint))


def _episode(fp: str, entries: list[Mapping[str, Any]]) -> Episode:
    firing = [a for a in entries if a.get("status") == "firing"]
    resolved = next((a for a in entries if a.get("status") == "resolved"), None)
    first = firing[0] if firing else entries[0]
    starts = [t for a in entries if (t := _time(a.get("window_start"))) is not None]
    ends = [t for a in entries if (t := _time(a.get("window_end"))) is not None]
    severities = [str(a.get("severity")) for a in entries if a.get("severity") in SEVERITY_ORDER]
    fired_at = _time(first.get("fired_at"))
    assert fired_at is not None  # checked by episodes()
    campaign = first.get("campaign")
    evidence = first.get("evidence")
    return Episode(
        fingerprint=fp,
        kind=str(first.get("kind") or ""),
        metric=str(first.get("metric") or ""),
        channel=str(first.get("channel") or ""),
        campaign=campaign if isinstance(campaign, str) and campaign != "-" else None,
        severity=max(severities, key=SEVERITY_ORDER.__getitem__, default="warning"),
        fired_at=fired_at,
        resolved_at=_time(resolved.get("resolved_at")) if resolved is not None else None,
        window=first.get("window") if isinstance(first.get("window"), str) else None,
        start=min(starts, default=None),
        end=max(ends, default=None),
        value=_number(first.get("value")),
        threshold=_number(first.get("threshold")),
        baseline=_number(first.get("baseline")),
        change_pct=_number(first.get("change_pct")),
        summary=str(first.get("summary") or ""),
        evidence=evidence if isinstance(evidence, Mapping) else {},
    )


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# -- notes ---------------------------------------------------------------------------------------------------


def clock_text(moment: datetime, zone: ZoneInfo, day: date | None = None) -> str:
    """``14:10`` on ``day``, ``11-25 14:10`` on another day (local time in ``zone``)."""
    local = moment.astimezone(zone)
    return local.strftime("%H:%M") if local.date() == day else local.strftime("%m-%d %H:%M")


def duration_text(seconds: float) -> str:
    """``45 min``, ``3 h 5 min``, ``2.5 days``."""
    minutes = max(round(seconds / 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours / 24:.1f} days"


def approval_of(episode: Episode, approvals: Mapping[str, Approval], zone: ZoneInfo) -> Approval | None:
    """Who approved the budget of a budget episode past its 80 % line, for its period (None: nobody)."""
    if episode.kind != "budget":
        return None
    by, at = episode.evidence.get("approved_by"), episode.evidence.get("approved_at")
    if isinstance(by, str) and isinstance(at, str):
        return Approval(by=by, at=at)
    period = episode.evidence.get("period")
    if period not in ("day", "month", "total") or episode.start is None:
        return None
    key = approval_field(episode.channel, episode.campaign, period, int(episode.start.timestamp()), zone)
    return approvals.get(key)


def note(
    episode: Episode, zone: ZoneInfo, day: date | None, approvals: Mapping[str, Approval] | None = None
) -> str:
    """One line for a report cell: ``CTR −52 % 14:10–15:00, resolved 15:20``; ``budget 80 % at 16:42,
    approved by @li.na at 16:50``. Times are local; ``day`` is the report's day (others show the date)."""
    at = clock_text(episode.fired_at, zone, day)
    span = (
        f"{clock_text(episode.start, zone, day)}–{clock_text(episode.end, zone, day)}"
        if episode.start is not None and episode.end is not None
        else f"at {at}"
    )
    label = _LABEL.get(episode.metric, episode.metric.upper() or "?")
    approval = approval_of(episode, approvals or {}, zone)
    if episode.kind == "budget" and episode.metric == "spend":
        spendable = _number(episode.evidence.get("spendable"))
        line = (
            round(episode.threshold / spendable * 100)
            if episode.threshold is not None and spendable
            else (100 if episode.severity == "critical" else 80)
        )
        text = f"budget {line} % at {at}"
        if approval is not None:
            approved = _time(approval.at)
            when = f" at {clock_text(approved, zone, day)}" if approved is not None else ""
            return _campaign(episode, f"{text}, approved by {approval.by}{when}")
        if episode.severity == "warning":
            text += ", not approved"
    elif episode.kind == "budget" and episode.metric == "spend_pacing":
        projected = f" {round(episode.value * 100)} %" if episode.value is not None else ""
        text = f"budget pacing: projected{projected} by period end, at {at}"
    elif episode.kind == "anomaly" and episode.change_pct is not None:
        text = f"{label} {signed(episode.change_pct, 0, ' %')} {span}"
    elif episode.kind == "threshold" and episode.value is not None and episode.threshold is not None:
        side = "below" if episode.value < episode.threshold else "above"
        shown = _value(episode.metric, episode.value), _value(episode.metric, episode.threshold)
        text = f"{label} {shown[0]} {side} {shown[1]} {span}"
    elif episode.kind == "data_health":
        text = f"no tracker events {span}"
    else:
        text = f"{label} {episode.kind} {span}"
    if episode.resolved_at is not None:
        text += f", resolved {clock_text(episode.resolved_at, zone, day)}"
    else:
        text += ", still firing"
    return _campaign(episode, text)


def _campaign(episode: Episode, text: str) -> str:
    return f"{episode.campaign}: {text}" if episode.campaign else text


def _value(metric: str, value: float) -> str:
    return f"{value * 100:.2f} %" if metric in _PERCENT else f"{value:,.2f}"
