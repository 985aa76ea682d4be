"""Which targets and owners hear of an alert, when, and together with which others. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from alerts.router.config import Escalation, QuietHours, RoutesConfig

# A budget's owner comes with the data (the budgets topic), not from the routes file: it may name one
# person by a plain handle, id or email, never everyone, and nothing that could become markup of its own.
_PLAIN_OWNER = re.compile(r"@?[\w.\-]{1,64}|[\w.%+\-]{1,64}@[\w\-]{1,63}(\.[\w\-]{1,63})+")
_EVERYONE = frozenset({"all", "here", "channel", "everyone"})


@dataclass(frozen=True, slots=True)
class Plan:
    """One target an alert goes to, the owners to mention there, and the route's policies."""

    target: str
    owners: tuple[str, ...]
    escalate: Escalation | None = None
    quiet_hours: QuietHours | None = None


def plan(alert: Mapping[str, Any], config: RoutesConfig) -> list[Plan]:
    """The targets of ``alert``: matching routes in order (the first one wins unless it says
    ``continue: true``), else the default targets. A target named twice gets the alert once, with the
    owners of every route that named it. Owners come from the route, else from the alert (a budget's owner).
    """
    alert_owner = data_owner(alert)
    plans: dict[str, Plan] = {}
    matched = False
    for route in config.routes:
        if not route.match.matches(alert):
            continue
        matched = True
        owners = tuple(route.owners) or alert_owner
        for target in route.targets:
            _add(plans, Plan(target, owners, route.escalate, route.quiet_hours))
        if not route.continue_:
            break
    if not matched:
        owners = tuple(config.default_owners) or alert_owner
        for target in config.default_targets:
            _add(plans, Plan(target, owners))
    return list(plans.values())


def data_owner(alert: Mapping[str, Any]) -> tuple[str, ...]:
    """The alert's own ``owner`` (a budget's), when it is one plain handle: else nobody."""
    owner = alert.get("owner")
    if not isinstance(owner, str) or not _PLAIN_OWNER.fullmatch(owner.strip()):
        return ()
    return () if owner.strip().lstrip("@").lower() in _EVERYONE else (owner.strip(),)


def _add(plans: dict[str, Plan], new: Plan) -> None:
    old = plans.get(new.target)
    if old is None:
        plans[new.target] = new
        return
    plans[new.target] = Plan(
        new.target,
        merge_owners(old.owners, new.owners),
        old.escalate or new.escalate,
        old.quiet_hours and new.quiet_hours,
    )


def merge_owners(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    """``old``, then the owners of ``new`` not in it: each mentioned once, in the order routes named them."""
    return old + tuple(o for o in new if o not in old)


def quiet_until(quiet: QuietHours | None, alert: Mapping[str, Any], now_s: float) -> float | None:
    """When quiet hours hold ``alert`` back: the epoch second they end; None to deliver now.

    Critical alerts are never held. Hours that wrap midnight (22:00–08:00) are understood.
    """
    if quiet is None or alert.get("severity") == "critical" or quiet.start == quiet.end:
        return None
    zone = ZoneInfo(quiet.tz)
    now = datetime.fromtimestamp(now_s, zone)
    today_start = now.replace(hour=quiet.start.hour, minute=quiet.start.minute, second=0, microsecond=0)
    today_end = now.replace(hour=quiet.end.hour, minute=quiet.end.minute, second=0, microsecond=0)
    if quiet.start < quiet.end:
        return today_end.timestamp() if today_start <= now < today_end else None
    if now >= today_start:  # evening part: ends tomorrow
        return (today_end + timedelta(days=1)).timestamp()
    if now < today_end:  # morning part
        return today_end.timestamp()
    return None


def needs_escalation(alert: Mapping[str, Any], escalate: Escalation | None) -> bool:
    """A new critical firing alert on a route that escalates."""
    return (
        escalate is not None
        and alert.get("status") == "firing"
        and alert.get("severity") == "critical"
        and alert.get("change") in (None, "fired", "escalated")
    )


def grouped(items: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """(target, alert) pairs as one list per (target, channel), in arrival order: one message each."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for target, alert in items:
        groups.setdefault((target, str(alert.get("channel"))), []).append(alert)
    return groups
