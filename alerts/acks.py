"""Acknowledgements, snoozes and approvals in Redis: written by the action links and the CLI, read by every
router (no escalation, no repeats) and every worker (no repeats).

``<prefix>:alerts:acks`` is a hash: fingerprint → JSON ``{by, at, fired_at, until}``. An acknowledgement
holds for the episode that fired at ``fired_at``; a snooze (``until`` set) holds for that episode too, until
then. An episode is an alert's ``fired_at``, exactly: once the alert resolves and fires again (a later
``fired_at``), the new episode pages, repeats and escalates again, whatever was acknowledged or snoozed
before. So an old link, or a snooze meant for a blip an hour ago, never hides a new problem. Approvals go
where ``adpulse budget approve`` puts them (:mod:`alerts.budgets`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from alerts.budgets import Approval, approval_field
from alerts.payload import AlertJson
from alerts.wording import rfc3339
from streams.keys import Keys
from streams.redis_client import AsyncRedis, as_text


@dataclass(frozen=True, slots=True)
class Ack:
    by: str
    at: str
    fired_at: str | None
    until: float | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({"by": self.by, "at": self.at, "fired_at": self.fired_at, "until": self.until})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Ack | None:
        try:
            body = orjson.loads(raw)
            return cls(str(body["by"]), str(body["at"]), body.get("fired_at"), body.get("until"))
        except (ValueError, KeyError, TypeError):
            return None

    def mutes(self, alert: Mapping[str, Any], now_s: float) -> bool:
        """Whether this ack or snooze silences repeats and escalation of ``alert`` now: only for the
        episode it was given for (the same ``fired_at``), and a snooze only until ``until``."""
        same_episode = self.fired_at is not None and self.fired_at == alert.get("fired_at")
        return same_episode and (self.until is None or now_s < self.until)


async def read_acks(redis: AsyncRedis, prefix: str) -> dict[str, Ack]:
    """Every acknowledgement and snooze, by fingerprint (malformed entries left out)."""
    raw = await redis.hgetall(Keys(prefix).acks)
    acks = {}
    for field, value in raw.items():
        ack = Ack.from_json(value)
        if ack is not None:
            acks[as_text(field)] = ack
    return acks


async def find_active(redis: AsyncRedis, prefix: str, ref: str) -> AlertJson | None:
    """The firing alert whose fingerprint or id is ``ref``."""
    raw = await redis.hget(Keys(prefix).active, ref)
    if raw is not None:
        found: AlertJson = orjson.loads(raw)
        return found
    for value in (await redis.hgetall(Keys(prefix).active)).values():
        alert: AlertJson = orjson.loads(value)
        if alert.get("id") == ref:
            return alert
    return None


async def acknowledge(
    redis: AsyncRedis,
    prefix: str,
    fingerprint: str,
    fired_at: str | None,
    by: str,
    now_s: float,
    snooze_s: float | None = None,
) -> Ack:
    """Record an acknowledgement (or, with ``snooze_s``, a snooze) of the episode ``fired_at``."""
    ack = Ack(by=by, at=rfc3339(now_s, UTC), fired_at=fired_at, until=now_s + snooze_s if snooze_s else None)
    await redis.hset(Keys(prefix).acks, fingerprint, ack.to_json())
    return ack


async def approve(
    redis: AsyncRedis,
    prefix: str,
    budget: Mapping[str, Any],
    by: str,
    now_s: float,
    zone: ZoneInfo,
    note: str | None,
) -> tuple[Approval, bool]:
    """Approve a budget's period past its 80 % line, as ``adpulse budget approve`` does: (in force, new?)."""
    start_s = int(datetime.fromisoformat(str(budget["period_start"])).timestamp())
    field = approval_field(str(budget["channel"]), budget.get("campaign"), budget["period"], start_s, zone)
    approval = Approval(by=by, at=rfc3339(now_s, UTC), note=note)
    key = Keys(prefix).approvals
    created = bool(await redis.hsetnx(key, field, approval.to_json()))
    if created:
        return approval, True
    current = await redis.hget(key, field)
    return (Approval.from_json(current) if current else approval), False
