"""The chat router: a Redis consumer group on ``<prefix>:alerts`` that delivers each alert to its targets.

Guarantees, and how:

- **Never lost.** An entry is acknowledged (XACK) only after every target of it has a final outcome: sent,
  or dead-lettered to ``<prefix>:alerts:dead`` with the error (so is an alert that cannot be read or
  rendered, and one trimmed from the stream before anyone delivered it). A router that dies leaves its
  entries pending; any router, a restarted one too, takes them over (XAUTOCLAIM) once they sat idle for
  ``claim_idle_s`` (one that comes back under the same ``ADPULSE_ROUTER_NAME`` reads them at once). Entries
  in delivery are kept fresh (XCLAIM JUSTID, only while this router still owns them), so a slow retry is not
  taken over mid-flight.
- **Never doubled.** Before a target gets an alert, ``<prefix>:router:sent:<target>:<id>`` is checked; it is
  set right after the target accepted it. The one gap left is a crash between the target's "OK" and that
  write (well under a millisecond): the generic webhook carries ``Idempotency-Key`` for that case.
- **Redis down.** The router pauses, retries with backoff, and resumes where it was: nothing is acknowledged
  that was not delivered, and a delivery whose "sent" mark could not be written is remembered and written
  when Redis is back.

Later work (quiet hours, escalation) is kept in Redis sorted sets, claimed with a lease that is renewed while
the job is delivered, so any router can do it and a crash in the middle only delays it. Known gap: a router
cut off from Redis for longer than ``claim_idle_s`` after a delivery whose mark it could not write may see
that alert delivered again by the router that took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from alerts.acks import Ack, read_acks
from alerts.router.config import RoutesConfig
from alerts.router.delivery import Deliverer, Delivery
from alerts.router.messages import Notification
from alerts.router.metrics import RouterMetrics
from alerts.router.routing import Plan, grouped, merge_owners, needs_escalation, plan, quiet_until
from alerts.router.targets import TargetSpec, paginate
from alerts.router.tokens import ActionLinks
from streams.keys import Keys

log = logging.getLogger("adpulse.router")

GROUP = "router"
SENT_TTL_S = 30 * 86400
#: On its first start the group begins this far back, so alerts written just before are not missed
#: and an old history does not page anyone.
FIRST_START_LOOKBACK_S = 3600.0
#: A later job (deferred or escalation) is leased this long to the router that took it.
LEASE_S = 60.0

# ZSET member claim: take the job if it is due, by pushing its score past the lease.
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""
# Renew a lease: only while the job's score is still the lease this router set.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
  return 1
end
return 0
"""
#: Consumers of the group idle this long, with nothing pending, are removed (dead routers' names).
STALE_CONSUMER_S = 3600.0


@dataclass(slots=True)
class _Job:
    """One message to one target: alerts of one channel (their delivery keys) and who to mention."""

    target: str
    alerts: list[Mapping[str, Any]]
    keys: list[str]
    owners: tuple[str, ...]
    escalated_from: tuple[str, ...] = ()
    entry_ms: list[int] = field(default_factory=list)


class Router:
    """Delivers alerts from the stream to the targets of their routes. ``run()`` until ``stop`` is set."""

    def __init__(
        self,
        redis: Any,
        config: RoutesConfig,
        deliverer: Deliverer,
        metrics: RouterMetrics,
        *,
        prefix: str = "adpulse",
        name: str = "router-1",
        claim_idle_s: float = 30.0,
        group_wait_s: float = 0.1,
        links: ActionLinks | None = None,
        batch: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.config = config
        self.deliverer = deliverer
        self.metrics = metrics
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.name = name
        self.claim_idle_s = claim_idle_s
        self.group_wait_s = group_wait_s
        self.links = links
        self.batch = batch
        self.clock = clock
        self._inflight: set[str] = set()
        self._unrecorded: dict[str, int] = {}  # "sent" marks that Redis could not take yet
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self.ready = asyncio.Event()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; Redis outages pause the loop, never end it."""
        backoff = 0.5
        own_pending = True
        last_housekeeping = 0.0
        keeper = asyncio.create_task(self._keep_inflight_fresh(stop))
        try:
            while not stop.is_set():
                try:
                    if own_pending:
                        await self._ensure_group()
                        await self._record_unrecorded()
                        # Entries this consumer read before a crash or restart: deliver them first.
                        await self._own_pending()
                        own_pending = False
                        self.ready.set()
                        log.info("router %s: reading %s", self.name, self.keys.alerts)
                    now = time.monotonic()
                    if now - last_housekeeping >= 1.0:
                        last_housekeeping = now
                        await self._record_unrecorded()
                        await self._take_over_idle()
                        await self._due_jobs()
                        await self._update_gauges()
                        await self._forget_stale_consumers()
                    entries = await self._read(">", block_ms=500)
                    if entries and self.group_wait_s > 0:
                        # A burst comes in one tick of the worker: wait a moment to put it in one message.
                        await asyncio.sleep(self.group_wait_s)
                        entries += await self._read(">")
                    await self._process(entries)
                    backoff = 0.5
                except (RedisError, OSError) as exc:
                    self.ready.clear()
                    own_pending = True
                    log.warning(
                        "router %s: Redis unavailable (%s); paused, retrying in %.1f s",
                        self.name,
                        type(exc).__name__,
                        backoff,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            keeper.cancel()

    async def _ensure_group(self) -> None:
        start_ms = int((self.clock() - FIRST_START_LOOKBACK_S) * 1000)
        try:
            await self.redis.xgroup_create(self.keys.alerts, GROUP, id=f"{max(start_ms, 0)}-0", mkstream=True)
            log.info("router: created consumer group %r on %s", GROUP, self.keys.alerts)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, which: str, block_ms: int | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = await self.redis.xreadgroup(
            GROUP, self.name, {self.keys.alerts: which}, count=self.batch, block=block_ms
        )
        return [entry for _, entries in reply or () for entry in entries]

    async def _own_pending(self) -> None:
        """Deliver every entry this consumer read and did not acknowledge, in batches."""
        after = "0"
        while entries := await self._read(after):
            await self._process(entries)
            after = _text(entries[-1][0])

    async def _forget_stale_consumers(self) -> None:
        """Remove consumers of dead routers (nothing pending, idle for an hour) so the group stays tidy."""
        for consumer in await self.redis.xinfo_consumers(self.keys.alerts, GROUP):
            name = _text(consumer["name"])
            if name != self.name and consumer["pending"] == 0 and consumer["idle"] > STALE_CONSUMER_S * 1000:
                await self.redis.xgroup_delconsumer(self.keys.alerts, GROUP, name)

    async def _take_over_idle(self) -> None:
        """Entries a dead router left pending: claim and deliver them."""
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.keys.alerts,
                GROUP,
                self.name,
                int(self.claim_idle_s * 1000),
                start_id=start,
                count=self.batch,
            )
            start, entries = reply[0], reply[1]
            for gone in reply[2] if len(reply) > 2 else ():
                await self._dead(
                    None, {"entry": _text(gone)}, "trimmed from the stream before it was delivered"
                )
            if entries:
                log.warning(
                    "router %s: took over %d alert(s) another router left undelivered",
                    self.name,
                    len(entries),
                )
                await self._process(entries)
            if start in (b"0-0", "0-0"):
                return

    async def _keep_inflight_fresh(self, stop: asyncio.Event) -> None:
        """Reset the idle time of entries in delivery, so no other router takes them over meanwhile."""
        while not stop.is_set():
            await asyncio.sleep(max(self.claim_idle_s / 3, 0.1))
            if self._inflight:
                try:
                    # Only entries still ours: one another router took over (after an outage) stays its.
                    owned = await self.redis.xpending_range(
                        self.keys.alerts,
                        GROUP,
                        min="-",
                        max="+",
                        count=len(self._inflight) + self.batch,
                        consumername=self.name,
                    )
                    mine = [_text(p["message_id"]) for p in owned if _text(p["message_id"]) in self._inflight]
                    if mine:
                        await self.redis.xclaim(self.keys.alerts, GROUP, self.name, 0, mine, justid=True)
                except (RedisError, OSError):
                    pass  # the main loop notices and pauses

    # -- processing ----------------------------------------------------------------------------

    async def _process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        if not entries:
            return
        ids = [_text(entry_id) for entry_id, _ in entries]
        self._inflight.update(ids)
        try:
            now = self.clock()
            acks = await read_acks(self.redis, self.prefix)
            pairs: list[tuple[str, Mapping[str, Any]]] = []
            owners: dict[tuple[str, str], tuple[str, ...]] = {}
            entry_ms: dict[int, int] = {}
            for entry_id, (_, fields) in zip(ids, entries, strict=True):
                alert = await self._decode(entry_id, fields)
                if alert is None:
                    continue
                entry_ms[id(alert)] = int(entry_id.split("-")[0])
                if _muted(alert, acks.get(str(alert.get("fingerprint"))), now):
                    log.info(
                        "router: %s %s muted (acknowledged or snoozed)",
                        alert.get("change"),
                        alert.get("fingerprint"),
                    )
                    continue
                for route_plan in plan(alert, self.config):
                    held = quiet_until(route_plan.quiet_hours, alert, now)
                    if held is not None:
                        await self._defer(alert, route_plan, held, entry_ms[id(alert)])
                        continue
                    pairs.append((route_plan.target, alert))
                    key = (route_plan.target, str(alert.get("channel")))
                    owners[key] = merge_owners(owners.get(key, ()), route_plan.owners)
                    if needs_escalation(alert, route_plan.escalate):
                        await self._schedule_escalation(alert, route_plan)
            jobs = [
                _Job(
                    target,
                    part,
                    [str(a["id"]) for a in part],
                    owners[(target, channel)],
                    entry_ms=[entry_ms[id(a)] for a in part],
                )
                for (target, channel), alerts in grouped(pairs).items()
                for part in self._messages(target, alerts)
            ]
            await self._deliver_all(jobs)
            await self.redis.xack(self.keys.alerts, GROUP, *ids)
        finally:
            self._inflight.difference_update(ids)

    def _messages(self, target: str, alerts: list[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
        """How a target's alerts of one channel go out: one grouped message, or one request per alert for a
        webhook (its body is one alert), each marked sent on its own so a crash resends at most one."""
        if self.config.targets[target].type == "webhook":
            return [[alert] for alert in alerts]
        return [alerts]

    async def _decode(self, entry_id: str, fields: Mapping[bytes, bytes]) -> Mapping[str, Any] | None:
        """The alert of a stream entry; anything else is dead-lettered with its raw content."""
        if not fields:
            await self._dead(None, {"entry": entry_id}, "trimmed from the stream before it was delivered")
            return None
        raw = fields.get(b"alert")
        try:
            alert = orjson.loads(raw) if raw is not None else None
            problem = _not_an_alert(alert)
        except ValueError as exc:
            problem = f"not JSON: {exc}"
        if problem is None:
            return alert
        shown = (raw or b"").decode("utf-8", "replace")[:4000]
        await self._dead(None, {"entry": entry_id, "raw": shown}, f"not an alert: {problem}")
        return None

    async def _deliver_all(self, jobs: list[_Job]) -> None:
        """Each target's messages in order; targets side by side."""
        by_target: dict[str, list[_Job]] = {}
        for job in jobs:
            by_target.setdefault(job.target, []).append(job)
        # Every target finishes (or fails) before the batch is judged: none goes on alone during an outage.
        results = await asyncio.gather(
            *(self._deliver_in_order(target_jobs) for target_jobs in by_target.values()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _deliver_in_order(self, jobs: Iterable[_Job]) -> None:
        for job in jobs:
            await self._deliver(job)

    async def _deliver(self, job: _Job) -> bool:
        """Deliver the alerts of ``job`` not yet delivered to its target; True when none is left over.

        A burst bigger than one message holds goes out as several (``paginate``); each message's alerts are
        marked sent when that message is accepted, so only what really reached the chat counts as sent.
        """
        marks = [self.keys.sent(job.target, key) for key in job.keys]
        done = await self.redis.mget(marks)
        todo = [
            i
            for i, (mark, seen) in enumerate(zip(marks, done, strict=True))
            if seen is None and mark not in self._unrecorded
        ]
        if not todo:
            return True
        spec = self.config.spec(job.target)
        now = self.clock()
        try:
            alerts = tuple(job.alerts[i] for i in todo)
            notification = Notification(
                alerts=alerts,
                owners=job.owners,
                locale=spec.locale,
                actions={str(a["id"]): self.links.for_alert(a, now) for a in alerts} if self.links else {},
                escalated_from=job.escalated_from,
            )
            pages = paginate(spec, notification, now)
        except Exception as exc:
            log.exception("router: cannot render %d alert(s) for %s", len(todo), job.target)
            await self._failed(job, todo, f"cannot render: {type(exc).__name__}", attempts=0)
            return False
        delivered = True
        start = 0
        for page in pages:
            part = todo[start : start + len(page.alerts)]
            start += len(page.alerts)
            delivered = await self._deliver_page(job, spec, page, part, marks) and delivered
        return delivered

    async def _deliver_page(
        self, job: _Job, spec: TargetSpec, page: Notification, part: list[int], marks: list[str]
    ) -> bool:
        """Send one message of a job: ``part`` are the indexes of its alerts in the job."""
        try:
            result = await self.deliverer.deliver(spec, page)
        except (RedisError, OSError):
            raise
        except Exception as exc:
            log.exception("router: cannot deliver %d alert(s) to %s", len(part), job.target)
            result = Delivery(
                outcome="failed",
                attempts=0,
                retries=0,
                status=None,
                error=f"cannot render or send: {type(exc).__name__}",
            )
        if result.retries:
            self.metrics.notifications.labels(job.target, "retried").inc(result.retries)
        if result.outcome == "sent":
            await self._mark_sent([marks[i] for i in part])
            self.metrics.notifications.labels(job.target, "sent").inc(len(part))
            delivered_s = self.clock()
            for i in part:
                if i < len(job.entry_ms):
                    self.metrics.latency.labels(job.target).observe(
                        max(0.0, delivered_s - job.entry_ms[i] / 1000)
                    )
            return True
        await self._failed(job, part, result.error or "failed", result.attempts)
        return False

    async def _failed(self, job: _Job, part: list[int], error: str, attempts: int) -> None:
        log.error(
            "router: %d alert(s) to %s failed after %d attempt(s): %s", len(part), job.target, attempts, error
        )
        for i in part:
            await self._dead(job.target, job.alerts[i], error)
        self.metrics.notifications.labels(job.target, "failed").inc(len(part))

    async def _mark_sent(self, marks: list[str]) -> None:
        # Remembered first: if Redis is away, the retry after the outage must not send them again.
        self._unrecorded.update(dict.fromkeys(marks, int(self.clock()) + SENT_TTL_S))
        await self._record_unrecorded()

    async def _record_unrecorded(self) -> None:
        """Write the "sent" marks not in Redis yet; only those written are forgotten (targets run at once)."""
        writing = dict(self._unrecorded)
        if writing:
            pipe = self.redis.pipeline(transaction=False)
            for mark, expires in writing.items():
                pipe.set(mark, b"1", exat=expires)
            await pipe.execute()
            for mark in writing:
                self._unrecorded.pop(mark, None)

    async def _dead(self, target: str | None, alert: Mapping[str, Any], error: str) -> None:
        await self.redis.xadd(
            self.keys.dead,
            {
                "alert": orjson.dumps(alert),
                "target": target or "",
                "error": error,
                "at": str(int(self.clock() * 1000)),
            },
            maxlen=100_000,
            approximate=True,
        )
        if target is None:
            self.metrics.notifications.labels("-", "failed").inc()

    # -- later work: quiet hours and escalation ------------------------------------------------

    async def _defer(self, alert: Mapping[str, Any], route_plan: Plan, until_s: float, entry_ms: int) -> None:
        job = {
            "alert": alert,
            "target": route_plan.target,
            "owners": list(route_plan.owners),
            "kind": "deferred",
        }
        # One due time for a whole night: a few seconds' offset by stream order keeps fired before resolved.
        order = max(0.0, entry_ms / 1000 - (until_s - 86400)) / 1000
        await self.redis.zadd(self.keys.deferred, {orjson.dumps(job): until_s + order}, nx=True)
        log.info("router: %s to %s held for quiet hours", alert.get("fingerprint"), route_plan.target)

    async def _schedule_escalation(self, alert: Mapping[str, Any], route_plan: Plan) -> None:
        escalate = route_plan.escalate
        assert escalate is not None
        job = {
            "kind": "escalation",
            "fingerprint": alert.get("fingerprint"),
            "id": alert.get("id"),
            "fired_at": alert.get("fired_at"),
            "owners": list(escalate.owners),
            "targets": list(escalate.targets or [route_plan.target]),
            "from": list(route_plan.owners),
        }
        await self.redis.zadd(
            self.keys.escalations, {orjson.dumps(job): self.clock() + escalate.after_s}, nx=True
        )

    async def _due_jobs(self) -> None:
        now = self.clock()
        for key in (self.keys.deferred, self.keys.escalations):
            for member in await self.redis.zrangebyscore(key, "-inf", now, start=0, num=self.batch):
                lease = now + LEASE_S
                if not await self._claim(keys=[key], args=[member, now, lease]):
                    continue  # another router took it
                renewing = asyncio.create_task(self._renew_lease(key, member, lease))
                try:
                    job = orjson.loads(member)
                    if job.get("kind") == "deferred":
                        await self._deliver_deferred(job)
                    else:
                        await self._escalate(job)
                except (RedisError, OSError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a malformed job must not stop the router
                    await self._dead(
                        None,
                        {"job": member.decode("utf-8", "replace")[:4000]},
                        f"malformed {key.rsplit(':', 1)[-1]} job: {type(exc).__name__}",
                    )
                finally:
                    renewing.cancel()
                await self.redis.zrem(key, member)

    async def _renew_lease(self, key: str, member: bytes, lease: float) -> None:
        """Keep a job's lease while it is delivered (retries can outlast one lease)."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            renewed = self.clock() + LEASE_S
            if not await self._renew(keys=[key], args=[member, repr(lease), renewed]):
                return
            lease = renewed

    async def _deliver_deferred(self, job: Mapping[str, Any]) -> None:
        """A job held for quiet hours: skipped if acknowledged, snoozed or (firing) resolved meanwhile."""
        alert, target = job["alert"], job["target"]
        if target not in self.config.targets:
            await self._dead(target, alert, "the target is no longer in the routes file")
            return
        if alert.get("status") == "firing":
            raw = await self.redis.hget(self.keys.active, str(alert.get("fingerprint")))
            current = orjson.loads(raw) if raw else None
            if not isinstance(current, dict) or current.get("fired_at") != alert.get("fired_at"):
                return  # resolved during the quiet hours: its resolution is the news
        ack = (await read_acks(self.redis, self.prefix)).get(str(alert.get("fingerprint")))
        if ack is not None and ack.mutes(alert, self.clock()) and alert.get("status") == "firing":
            return
        await self._deliver(_Job(target, [alert], [str(alert["id"])], tuple(job["owners"])))

    async def _escalate(self, job: Mapping[str, Any]) -> None:
        """Escalate a critical alert that is still firing in the same episode and nobody acknowledged."""
        raw = await self.redis.hget(self.keys.active, job["fingerprint"])
        alert = orjson.loads(raw) if raw else None
        if alert is None or alert.get("fired_at") != job["fired_at"]:
            return  # resolved (or a new episode) meanwhile
        acks = await read_acks(self.redis, self.prefix)
        ack = acks.get(str(job["fingerprint"]))
        if ack is not None and ack.mutes(alert, self.clock()):
            return
        log.warning(
            "router: escalating %s (not acknowledged) to %s", job["fingerprint"], ", ".join(job["targets"])
        )
        escalated = {**alert, "change": "escalated"}
        for target in job["targets"]:
            if target not in self.config.targets:
                await self._dead(target, escalated, "the escalation target is no longer in the routes file")
            else:
                await self._deliver(
                    _Job(
                        target,
                        [escalated],
                        [f"{job['id']}:escalation"],
                        tuple(job["owners"]),
                        escalated_from=tuple(job["from"]),
                    )
                )

    # -- gauges ---------------------------------------------------------------------------------

    async def _update_gauges(self) -> None:
        now = self.clock()
        pending = await self.redis.xpending(self.keys.alerts, GROUP)
        self.metrics.pending.set(pending["pending"] if pending else 0)
        acks = await read_acks(self.redis, self.prefix)
        counts: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for raw in (await self.redis.hgetall(self.keys.active)).values():
            try:
                alert = orjson.loads(raw)
            except ValueError:
                continue
            if not isinstance(alert, dict):
                continue
            ack = acks.get(str(alert.get("fingerprint")))
            if ack is not None and ack.mutes(alert, now):
                continue
            severity = str(alert.get("severity"))
            counts[severity] = counts.get(severity, 0) + 1
            fired = _epoch(alert.get("fired_at"))
            if fired is not None:
                oldest[severity] = max(oldest.get(severity, 0.0), now - fired)
        for severity in ("info", "warning", "critical"):
            self.metrics.unacknowledged.labels(severity).set(counts.get(severity, 0))
            self.metrics.unacknowledged_age.labels(severity).set(oldest.get(severity, 0.0))


def _muted(alert: Mapping[str, Any], ack: Ack | None, now_s: float) -> bool:
    """Repeats of an acknowledged or snoozed alert are not sent (its resolution and a higher severity are)."""
    return ack is not None and alert.get("change") == "repeat" and ack.mutes(alert, now_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _not_an_alert(alert: Any) -> str | None:
    """What makes ``alert`` unusable (None: it is fine): the fields routing and rendering rely on."""
    if not isinstance(alert, dict):
        return "field 'alert' holds no JSON object"
    if not isinstance(alert.get("id"), str) or not alert["id"]:
        return "no string 'id'"
    for name in ("channel", "campaign", "owner", "fingerprint", "severity", "kind", "status", "summary"):
        if alert.get(name) is not None and not isinstance(alert[name], str):
            return f"'{name}' is not a string"
    if alert.get("evidence") is not None and not isinstance(alert["evidence"], dict):
        return "'evidence' is not an object"
    return None


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp() if text else None
    except ValueError:
        return None
