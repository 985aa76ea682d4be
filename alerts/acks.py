"""Acknowledgements, snoozes and approvals in Redis: written by the action links and the CLI, read by every
router (no escalation, no repeats) and every worker (no repeats, no 80 % warning once approved).

``<prefix>:alerts:acks`` is a hash: fingerprint → JSON ``{by, at, fired_at, until}``. An acknowledgement
holds for the episode that fired at ``fired_at``; a snooze (``until`` set) holds for that episode too, until
then. An episode is an alert's ``fired_at``, exactly: once the alert resolves and fires again (a later
``fired_at``), the new episode pages, repeats and escalates again, whatever was acknowledged or snoozed
before. So an old link, or a snooze meant for a blip an hour ago, never hides a new problem.
``<prefix>:budgets:approvals`` is a hash: :func:`alerts.budgets.approval_field` →
:class:`alerts.budgets.Approval` JSON, one per budget and period; ``adpulse budget approve`` and the chat
links both write it with :func:`approve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from alerts.budgets import Approval, Period, approval_field
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


#: Acknowledgements and snoozes older than this (and whose snooze ran out) are deleted, unless the episode
#: they were given for is still firing.
ACK_RETENTION_S = 7 * 86400.0


async def prune_acks(redis: AsyncRedis, prefix: str, now_s: float, max_age_s: float = ACK_RETENTION_S) -> int:
    """Delete acknowledgements and snoozes that can no longer mute anything: given more than ``max_age_s``
    ago, their snooze over, and their episode no longer firing (a resolved alert that fires again is a new
    episode, which no old ack mutes). Malformed entries go too. Returns how many were deleted."""
    keys = Keys(prefix)
    raw = await redis.hgetall(keys.acks)
    if not raw:
        return 0
    active = {as_text(fp): orjson.loads(body) for fp, body in (await redis.hgetall(keys.active)).items()}
    stale = []
    for field, value in raw.items():
        fingerprint = as_text(field)
        ack = Ack.from_json(value)
        if ack is None:
            stale.append(fingerprint)
            continue
        try:
            given_s = datetime.fromisoformat(ack.at).timestamp()
        except ValueError:
            stale.append(fingerprint)
            continue
        firing = active.get(fingerprint)
        if (
            given_s < now_s - max_age_s
            and (ack.until is None or ack.until < now_s)
            and (firing is None or firing.get("fired_at") != ack.fired_at)
        ):
            stale.append(fingerprint)
    if stale:
        await redis.hdel(keys.acks, *stale)
    return len(stale)


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


async def read_approvals(redis: AsyncRedis, prefix: str) -> dict[str, Approval]:
    """Every recorded approval, by field (malformed entries left out)."""
    approvals = {}
    for field, value in (await redis.hgetall(Keys(prefix).approvals)).items():
        try:
            approvals[as_text(field)] = Approval.from_json(value)
        except ValueError:
            continue
    return approvals


async def approve(
    redis: AsyncRedis,
    prefix: str,
    *,
    channel: str,
    campaign: str | None,
    period: Period,
    period_start_s: int,
    by: str,
    note: str | None,
    now_s: float,
    zone: ZoneInfo,
) -> tuple[Approval, bool]:
    """Approve a budget going past its 80 % line for the period starting at ``period_start_s``, unless
    someone already did: (the approval in force, new?).

    ``HSETNX``: approving twice is harmless and the first approver stays on record (a malformed record is
    replaced). Approvals of the budget's earlier periods are removed, so the hash stays as small as the set
    of budgets; a late click on an old period's link never removes the current period's approval.
    """
    field = approval_field(channel, campaign, period, period_start_s, zone)
    key = Keys(prefix).approvals
    approval = Approval(by=by, at=rfc3339(now_s, zone), note=note)
    created = bool(await redis.hsetnx(key, field, approval.to_json()))
    current = approval
    if not created:
        try:
            current = Approval.from_json(await redis.hget(key, field) or b"")
        except ValueError:
            await redis.hset(key, field, approval.to_json())
            created = True
    budget, _, label = field.rpartition("|")
    earlier = [
        name
        for name in map(as_text, await redis.hkeys(key))
        if name.rpartition("|")[0] == budget and name.rpartition("|")[2] < label
    ]
    if earlier:
        await redis.hdel(key, *earlier)
    return current, created
