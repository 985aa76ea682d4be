"""The alert as CONTRACT.md §3 defines it, and the finding a detector reports. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, NewType

Fingerprint = NewType("Fingerprint", str)
Kind = Literal["budget", "threshold", "anomaly", "data_health"]
Severity = Literal["info", "warning", "critical"]
SEVERITY_ORDER: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


def most_severe_first(severity: object) -> int:
    """Sort key: critical, then warning, then info, then anything that is not a severity."""
    return -SEVERITY_ORDER.get(str(severity), -1)


def fingerprint(kind: str, metric: str, channel: str, campaign: str | None, *extra: str) -> Fingerprint:
    """Stable identity of a condition: kind + metric + channel + campaign (+ e.g. the budget period)."""
    return Fingerprint(":".join([kind, metric, channel, campaign or "-", *extra]))


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule or detector says about one evaluation: the condition holds, with its evidence.

    ``value`` is the observed KPI; ``baseline``, ``threshold`` and ``change_pct`` where they apply;
    ``evidence`` holds the volumes and the test behind the decision (counts, p-value, interval).
    """

    kind: Kind
    metric: str
    severity: Severity
    channel: str
    campaign: str | None
    value: float | None
    summary: str
    description: str
    baseline: float | None = None
    threshold: float | None = None
    change_pct: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    window: str | None = None
    window_start: str | None = None
    window_end: str | None = None
    extra_key: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> Fingerprint:
        return fingerprint(self.kind, self.metric, self.channel, self.campaign, *self.extra_key)


def alert_id(fp: Fingerprint, status: str, episode_start: str) -> str:
    """Idempotency key of one state change: the same change always gets the same id."""
    return hashlib.sha256(f"{fp}|{status}|{episode_start}".encode()).hexdigest()[:24]
