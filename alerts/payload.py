"""The alert JSON of CONTRACT.md §3, built from a lifecycle ``Alert``. Pure.

Beyond the contract's fields the payload carries ``change`` (``fired`` | ``escalated`` | ``repeat`` |
``resolved``, so a notifier can say "still firing" or "escalated"), ``window`` (``1m``, ``1h``, ...),
``duration_s`` (how long the episode has lasted: from ``fired_at`` to this notification or the resolution)
and ``reopened`` (how often the episode fired again within an hour of resolving; 0 at first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict
from urllib.parse import urlencode

from alerts.lifecycle import Alert, Change, Status
from alerts.model import Kind, Severity
from alerts.wording import format_value


class AlertJson(TypedDict):
    """The alert JSON of CONTRACT.md §3 as :func:`build_alert` makes it: every key present, ``None`` where a
    field does not apply. Times are RFC 3339 strings."""

    id: str
    fingerprint: str
    status: Status
    change: Change
    kind: Kind
    severity: Severity
    metric: str
    channel: str
    campaign: str | None
    region: str | None
    window: str | None
    window_start: str | None
    window_end: str | None
    value: float | None
    baseline: float | None
    threshold: float | None
    change_pct: float | None
    evidence: dict[str, Any]
    summary: str
    description: str
    owner: str | None
    runbook_url: str
    dashboard_url: str | None
    fired_at: str
    resolved_at: str | None
    duration_s: float | None
    reopened: int


@dataclass(frozen=True, slots=True)
class Links:
    """Where ``runbook_url`` and ``dashboard_url`` point.

    ``runbook_base`` is the runbook document; ``#<kind>`` is appended (anchors in ``docs/runbook.md``).
    ``grafana_url`` is Grafana's root URL (``None``: no dashboard link); ``dashboard_path`` the channels
    dashboard under it.
    """

    runbook_base: str = "docs/runbook.md"
    grafana_url: str | None = "http://127.0.0.1:3000"
    dashboard_path: str = "/d/adpulse-channels/adpulse-channels"


def runbook_url(kind: str, links: Links) -> str:
    """The runbook section for an alert kind."""
    return f"{links.runbook_base}#{kind}"


def dashboard_url(
    channel: str,
    campaign: str | None,
    window_start: str | None,
    window_end: str | None,
    fired_at: datetime,
    resolved_at: datetime | None,
    links: Links,
) -> str | None:
    """The channels dashboard filtered to ``channel``, its time range around the window that fired.

    The range starts three window lengths (at least 15 minutes each) before the window and ends one
    after it, or after the resolution, so the drop and what came before it are both in view.
    """
    if links.grafana_url is None:
        return None
    start = datetime.fromisoformat(window_start) if window_start else fired_at
    end = datetime.fromisoformat(window_end) if window_end else fired_at
    pad = max(end - start, timedelta(minutes=15))
    if resolved_at is not None:
        end = max(end, resolved_at)
    params = [("var-channel", channel)]
    if campaign is not None:
        params.append(("var-campaign", campaign))
    params += [
        ("from", str(int((start - 3 * pad).timestamp() * 1000))),
        ("to", str(int((end + pad).timestamp() * 1000))),
    ]
    return f"{links.grafana_url.rstrip('/')}{links.dashboard_path}?{urlencode(params)}"


def build_alert(alert: Alert, links: Links | None = None, owner: str | None = None) -> AlertJson:
    """The CONTRACT.md §3 alert JSON (a dict ready for orjson) of one lifecycle notification.

    ``owner`` (a chat handle) defaults to ``finding.evidence["owner"]`` when the detector put one there.
    """
    links = links or Links()
    finding = alert.finding
    campaign = None if finding.campaign in (None, "-") else finding.campaign
    where = finding.channel if campaign is None else f"{finding.channel}/{campaign}"
    evidence = dict(finding.evidence)
    summary, description = finding.summary, finding.description
    change_pct = finding.change_pct
    lasted = alert.duration_s
    if alert.change == "resolved":
        assert alert.resolved_at is not None
        evidence["last_firing_value"] = finding.value
        recovered = format_value(finding.metric, alert.value)
        summary = f"RESOLVED {where} {finding.metric.upper()}: back to {recovered} (was: {finding.summary})"
        description = (
            f"{finding.description}\n"
            f"Resolved at {alert.resolved_at.isoformat()}: {finding.metric} is {recovered} "
            f"(firing since {alert.fired_at.isoformat()}"
            + (f", {_duration(lasted)}" if lasted is not None else "")
            + ")."
        )
        change_pct = None
    elif alert.change == "escalated":
        summary = f"ESCALATED to {alert.severity}: {finding.summary}"
    elif alert.change == "repeat":
        summary = f"{finding.summary} (still firing since {alert.fired_at.isoformat(timespec='minutes')})"
    elif alert.reopened:
        since = alert.fired_at.isoformat(timespec="minutes")
        summary = f"{finding.summary} (again: one episode since {since}" + (
            f", {_duration(lasted)})" if lasted is not None else ")"
        )
    return {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "status": alert.status,
        "change": alert.change,
        "kind": finding.kind,
        "severity": alert.severity,
        "metric": finding.metric,
        "channel": finding.channel,
        "campaign": campaign,
        "region": evidence.get("region"),
        "window": finding.window,
        "window_start": finding.window_start,
        "window_end": finding.window_end,
        "value": alert.value,
        "baseline": finding.baseline,
        "threshold": finding.threshold,
        "change_pct": change_pct,
        "evidence": evidence,
        "summary": summary,
        "description": description,
        "owner": owner if owner is not None else evidence.get("owner"),
        "runbook_url": runbook_url(finding.kind, links),
        "dashboard_url": dashboard_url(
            finding.channel,
            campaign,
            finding.window_start,
            finding.window_end,
            alert.fired_at,
            alert.resolved_at,
            links,
        ),
        "fired_at": alert.fired_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "duration_s": lasted,
        "reopened": alert.reopened,
    }


def _duration(seconds: float) -> str:
    """'45 min', '2 h 5 min': how long an episode lasted."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"
