"""The alert lifecycle: when findings become notifications and when they stop. Pure; the clock is passed in.

An ``AlertBook`` keeps one small state machine per fingerprint::

    ok ──finding──► pending ──(for_evaluations consecutive findings)──► firing ──(resolve_after
    consecutive OK evaluations)──► resolved ──(reopen_s without a finding)──► ok
                                                    │
                                                    └──finding──► firing again, the same episode

Only evaluated fingerprints move: the caller says which fingerprints it *judged* OK this round (and their
current value), so a fingerprint judged OK is "recovered this round" while one not judged at all (window
not closed yet, channel owned by another worker, or a detector that saw no evidence either way) keeps its
state. "OK" must mean evidence of recovery, not merely "not significant any more": the caller decides
(``agents.evaluate``). Hysteresis comes from ``resolve_after``: a value hovering around a threshold fires
once and stays firing instead of flapping; and an alert that fires again within ``reopen_s`` of its
resolution continues the same episode (same ``fired_at``, the count in ``reopened``).

While firing, a repeat notification goes out every ``repeat_interval_s`` (Alertmanager's 4 h by default)
and another when the severity escalates. Every notification is one ``Alert`` with an id derived only from
the fingerprint, the episode (when it fired) and the kind of change, so re-evaluating the same inputs from
the same state gives the same ids, and the Redis sink drops the duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from alerts.model import SEVERITY_ORDER, Finding, Fingerprint, Severity, alert_id

Status = Literal["firing", "resolved"]
Change = Literal["fired", "escalated", "repeat", "resolved"]

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Policy:
    """When to fire, repeat and resolve (same meaning as Prometheus ``for`` and Alertmanager's repeat)."""

    for_evaluations: int = 1
    resolve_after: int = 2
    repeat_interval_s: float = 4 * 3600.0
    reopen_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.for_evaluations < 1:
            raise ValueError(f"for_evaluations must be >= 1, got {self.for_evaluations}")
        if self.resolve_after < 1:
            raise ValueError(f"resolve_after must be >= 1, got {self.resolve_after}")
        if not self.repeat_interval_s > 0:
            raise ValueError(f"repeat_interval_s must be > 0, got {self.repeat_interval_s}")
        if not self.reopen_s >= 0:
            raise ValueError(f"reopen_s must be >= 0, got {self.reopen_s}")


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification-worthy state change: one entry in the ``adpulse:alerts`` stream.

    ``finding`` is this round's finding for a firing change, and the last firing finding for a resolved
    one (it still says what the condition was); ``value`` is what was observed this round, for a resolved
    alert the value it recovered to. ``severity`` is the highest severity notified in this episode.
    ``fired_at`` is when the episode began (a re-fire within ``Policy.reopen_s`` keeps it), ``at`` the
    round that made this notification, ``reopened`` how often the episode fired again after resolving.
    """

    id: str
    change: Change
    finding: Finding
    severity: Severity
    fired_at: datetime
    value: float | None
    resolved_at: datetime | None = None
    at: datetime | None = None
    reopened: int = 0

    @property
    def duration_s(self) -> float | None:
        """How long the episode has lasted: from ``fired_at`` to this notification (or the resolution)."""
        end = self.resolved_at or self.at
        return None if end is None else (end - self.fired_at).total_seconds()

    @property
    def status(self) -> Status:
        return "resolved" if self.change == "resolved" else "firing"

    @property
    def fingerprint(self) -> Fingerprint:
        return self.finding.fingerprint

    @property
    def kind(self) -> str:
        return self.finding.kind

    @property
    def channel(self) -> str:
        return self.finding.channel


@dataclass(frozen=True, slots=True)
class Firing:
    """A fingerprint firing now (for the ``adpulse_alerts_firing`` gauge and for views)."""

    fingerprint: Fingerprint
    finding: Finding
    severity: Severity
    fired_at: datetime

    @property
    def kind(self) -> str:
        return self.finding.kind

    @property
    def channel(self) -> str:
        return self.finding.channel


@dataclass(frozen=True, slots=True)
class StateDelta:
    """What changed in the book since the last ``pop_changes``: entries to write and entries to delete.

    Writing only what this book changed keeps several workers, each judging its own channels, from
    overwriting each other's entries in one shared Redis hash.
    """

    upserts: dict[str, dict[str, Any]] = field(default_factory=dict)
    deletes: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


@dataclass(slots=True)
class _Entry:
    finding: Finding
    hits: int = 0
    oks: int = 0
    fired_at: datetime | None = None
    severity: Severity | None = None
    notified_at: datetime | None = None
    repeats: int = 0
    resolved_at: datetime | None = None
    reopened: int = 0

    @property
    def is_firing(self) -> bool:
        return self.fired_at is not None and self.severity is not None and self.resolved_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "finding": {**asdict(self.finding), "extra_key": list(self.finding.extra_key)},
            "hits": self.hits,
            "oks": self.oks,
            "fired_at": _iso(self.fired_at),
            "severity": self.severity,
            "notified_at": _iso(self.notified_at),
            "repeats": self.repeats,
            "resolved_at": _iso(self.resolved_at),
            "reopened": self.reopened,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> _Entry:
        finding = dict(raw["finding"])
        finding["extra_key"] = tuple(finding.get("extra_key", ()))
        return cls(
            finding=Finding(**finding),
            hits=int(raw["hits"]),
            oks=int(raw["oks"]),
            fired_at=_parse(raw["fired_at"]),
            severity=raw["severity"],
            notified_at=_parse(raw["notified_at"]),
            repeats=int(raw["repeats"]),
            resolved_at=_parse(raw.get("resolved_at")),
            reopened=int(raw.get("reopened", 0)),
        )


def _episode(entry: _Entry) -> str:
    """The part of an id that tells re-fires of one episode apart (empty for the first firing)."""
    return f"/reopened/{entry.reopened}" if entry.reopened else ""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class AlertBook:
    """Alert state per fingerprint; ``evaluate`` turns one evaluation round into notifications."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self._entries: dict[Fingerprint, _Entry] = {}
        self._dirty: set[Fingerprint] = set()
        self._deleted: set[Fingerprint] = set()

    def evaluate(
        self,
        findings: Iterable[Finding],
        judged: Mapping[Fingerprint, float | None] | Iterable[Fingerprint],
        now: datetime,
    ) -> list[Alert]:
        """One evaluation round at ``now`` (timezone-aware): the notifications it causes, by fingerprint.

        ``findings`` are the conditions that hold this round. ``judged`` names every fingerprint the
        caller evaluated this round, best as a mapping to its current value (the value a resolved alert
        reports as recovered to); a fingerprint with a finding counts as judged whether listed or not.
        Several findings for one fingerprint count once, the most severe.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
        values: Mapping[Fingerprint, float | None] = (
            judged if isinstance(judged, Mapping) else dict.fromkeys(judged)
        )
        hits: dict[Fingerprint, Finding] = {}
        for finding in findings:
            fp = finding.fingerprint
            held = hits.get(fp)
            if held is None or SEVERITY_ORDER[finding.severity] >= SEVERITY_ORDER[held.severity]:
                hits[fp] = finding
        alerts = []
        for fp in sorted(hits.keys() | values.keys()):
            hit = hits.get(fp)
            alert = self._hit(fp, hit, now) if hit is not None else self._ok(fp, values[fp], now)
            if alert is not None:
                alerts.append(alert)
        self._forget_resolved(now)
        return alerts

    def _forget_resolved(self, now: datetime) -> None:
        """Episodes resolved more than ``reopen_s`` ago are over: a new finding starts a new one."""
        for fp, entry in list(self._entries.items()):
            if (
                entry.resolved_at is not None
                and (now - entry.resolved_at).total_seconds() >= self.policy.reopen_s
            ):
                self._drop(fp)

    def _hit(self, fp: Fingerprint, finding: Finding, now: datetime) -> Alert | None:
        entry = self._entries.get(fp)
        if (
            entry is not None
            and entry.resolved_at is not None
            and (now - entry.resolved_at).total_seconds() >= self.policy.reopen_s
        ):
            entry = None  # that episode is over
        if entry is None:
            entry = self._entries[fp] = _Entry(finding)
        self._touch(fp)
        entry.finding, entry.oks = finding, 0
        if entry.resolved_at is not None:
            # Resolved within the hour: if it holds again, the episode goes on (same fired_at).
            entry.hits += 1
            if entry.hits < self.policy.for_evaluations:
                return None
            entry.resolved_at, entry.reopened, entry.repeats = None, entry.reopened + 1, 0
            entry.severity, entry.notified_at = finding.severity, now
            return self._alert(entry, "fired", f"/reopened/{entry.reopened}", now)
        if entry.fired_at is None or entry.severity is None or entry.notified_at is None:
            entry.hits += 1
            if entry.hits < self.policy.for_evaluations:
                return None
            entry.fired_at, entry.severity, entry.notified_at, entry.repeats = now, finding.severity, now, 0
            return self._alert(entry, "fired", "", now)
        if SEVERITY_ORDER[finding.severity] > SEVERITY_ORDER[entry.severity]:
            entry.severity, entry.notified_at = finding.severity, now
            return self._alert(entry, "escalated", f"{_episode(entry)}/escalated/{finding.severity}", now)
        if (now - entry.notified_at).total_seconds() >= self.policy.repeat_interval_s:
            entry.repeats += 1
            entry.notified_at = now
            return self._alert(entry, "repeat", f"{_episode(entry)}/repeat/{entry.repeats}", now)
        return None

    def _ok(self, fp: Fingerprint, value: float | None, now: datetime) -> Alert | None:
        entry = self._entries.get(fp)
        if entry is None:
            return None
        if entry.resolved_at is not None:
            if entry.hits:
                entry.hits = 0  # a re-fire needs consecutive findings too
                self._touch(fp)
            return None
        if entry.fired_at is None or entry.severity is None:
            self._drop(fp)  # pending needs consecutive findings: one OK round starts over
            return None
        entry.oks += 1
        self._touch(fp)
        if entry.oks < self.policy.resolve_after:
            return None
        resolved = Alert(
            id=alert_id(fp, "resolved", entry.fired_at.isoformat() + _episode(entry)),
            change="resolved",
            finding=entry.finding,
            severity=entry.severity,
            fired_at=entry.fired_at,
            value=value,
            resolved_at=now,
            at=now,
            reopened=entry.reopened,
        )
        if self.policy.reopen_s > 0:
            entry.resolved_at, entry.hits, entry.oks = now, 0, 0
        else:
            self._drop(fp)
        return resolved

    def _alert(self, entry: _Entry, change: Change, suffix: str, now: datetime) -> Alert:
        assert entry.fired_at is not None and entry.severity is not None
        fp = entry.finding.fingerprint
        return Alert(
            id=alert_id(fp, "firing", entry.fired_at.isoformat() + suffix),
            change=change,
            finding=entry.finding,
            severity=entry.severity,
            fired_at=entry.fired_at,
            value=entry.finding.value,
            at=now,
            reopened=entry.reopened,
        )

    def _touch(self, fp: Fingerprint) -> None:
        self._dirty.add(fp)
        self._deleted.discard(fp)

    def _drop(self, fp: Fingerprint) -> None:
        del self._entries[fp]
        self._dirty.discard(fp)
        self._deleted.add(fp)

    def firing(self) -> list[Firing]:
        """Every fingerprint firing now, in fingerprint order."""
        return [
            Firing(fp, entry.finding, entry.severity, entry.fired_at)
            for fp, entry in sorted(self._entries.items())
            if entry.is_firing and entry.fired_at is not None and entry.severity is not None
        ]

    def firing_finding(self, fp: Fingerprint) -> Finding | None:
        """The last finding of ``fp`` if it is firing now, else ``None``."""
        entry = self._entries.get(fp)
        return entry.finding if entry is not None and entry.is_firing else None

    def pop_changes(self) -> StateDelta:
        """Entries changed and removed since the last call (for incremental persistence), then forget them."""
        delta = StateDelta(
            upserts={fp: self._entries[fp].to_json() for fp in sorted(self._dirty)},
            deletes=frozenset(self._deleted),
        )
        self._dirty.clear()
        self._deleted.clear()
        return delta

    def to_state(self) -> dict[str, Any]:
        """The whole book as JSON-able data; ``AlertBook.from_state`` restores it exactly."""
        return {
            "version": STATE_VERSION,
            "entries": {fp: entry.to_json() for fp, entry in sorted(self._entries.items())},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], policy: Policy | None = None) -> AlertBook:
        """A book resuming from ``to_state()`` output (e.g. after a worker restart)."""
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"alert state version {version!r} is not supported (expected {STATE_VERSION})")
        book = cls(policy)
        book._entries = {Fingerprint(fp): _Entry.from_json(raw) for fp, raw in state["entries"].items()}
        return book
