"""Alerts into Redis (CONTRACT.md §3): the ``<prefix>:alerts`` stream and the ``<prefix>:alerts:active`` hash.

One Lua script applies a whole batch in one round trip. Per alert it sets the guard key
``<prefix>:alerts:ids:<id>`` with ``SET NX EX``; only when that succeeds does it append to the stream and
update the active hash (HSET when firing, HDEL when resolved). A retry of an alert already written changes
nothing, so publishing is safe to retry after any error. The lifecycle state (``<prefix>:alerts:state``,
a hash fingerprint → entry) is written by the same script, after the alerts: state and notifications can
never disagree after a crash.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

import orjson

from alerts.lifecycle import STATE_VERSION, StateDelta
from alerts.payload import AlertJson
from streams.keys import Keys
from streams.redis_client import AsyncRedis, as_text

# KEYS: stream, active hash, state hash, then one guard key per alert.
# ARGV: guard ttl, stream maxlen, alert count, then (fingerprint, status, json) per alert,
#       then upsert count, (fingerprint, entry json) per upsert, then the fingerprints to delete.
# Returns one element per alert: the stream entry id, or 0 when the alert was written before.
_PUBLISH = """
local ttl, maxlen, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 1, n do
  local fp, status, body = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if redis.call('SET', KEYS[3 + i], '1', 'NX', 'EX', ttl) then
    out[i] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'alert', body)
    if status == 'firing' then
      redis.call('HSET', KEYS[2], fp, body)
    else
      redis.call('HDEL', KEYS[2], fp)
    end
  else
    out[i] = 0
  end
end
local at = 4 + 3 * n
local upserts = tonumber(ARGV[at])
for j = 1, upserts do
  redis.call('HSET', KEYS[3], ARGV[at + 2 * j - 1], ARGV[at + 2 * j])
end
for k = at + 2 * upserts + 1, #ARGV do
  redis.call('HDEL', KEYS[3], ARGV[k])
end
return out
"""


class RedisAlertSink:
    """Publishes alert payloads and keeps the lifecycle state, on a ``redis.asyncio`` client passed in."""

    def __init__(
        self,
        client: AsyncRedis,
        prefix: str = "adpulse",
        *,
        maxlen: int = 10_000,
        id_ttl_s: float = 7 * 86400.0,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        if id_ttl_s < 1:
            raise ValueError(f"id_ttl_s must be >= 1 s, got {id_ttl_s}")
        self._client = client
        self._script = client.register_script(_PUBLISH)
        self.maxlen = maxlen
        self.id_ttl_s = id_ttl_s
        keys = Keys(prefix)
        self.stream_key = keys.alerts
        self.active_key = keys.active
        self.state_key = keys.alert_state
        self._ids_prefix = keys.alert_ids

    async def publish(self, alerts: Sequence[AlertJson], state: StateDelta | None = None) -> list[bool]:
        """Write alert payloads (and a lifecycle state delta) atomically, in one round trip.

        Returns, per alert, whether it was written now (``False``: the same ``id`` was written before).
        On an error nothing is lost: call again with the same arguments.
        """
        if not alerts and not state:
            return []
        keys = [self.stream_key, self.active_key, self.state_key]
        args: list[Any] = [int(self.id_ttl_s), self.maxlen, len(alerts)]
        for alert in alerts:
            if alert["status"] not in ("firing", "resolved"):
                raise ValueError(
                    f"alert {alert['id']}: status must be firing or resolved, got {alert['status']!r}"
                )
            keys.append(self._ids_prefix + str(alert["id"]))
            args += [alert["fingerprint"], alert["status"], orjson.dumps(alert)]
        upserts = state.upserts if state else {}
        args.append(len(upserts))
        for fp, entry in upserts.items():
            args += [fp, orjson.dumps(entry)]
        if state:
            args += sorted(state.deletes)
        written = await self._script(keys=keys, args=args)
        return [result != 0 for result in written]

    async def load_active(self) -> dict[str, AlertJson]:
        """Every alert firing now: fingerprint → alert JSON."""
        raw = await self._client.hgetall(self.active_key)
        return {as_text(fp): orjson.loads(body) for fp, body in raw.items()}

    async def history(self, count: int) -> list[AlertJson]:
        """The last ``count`` alert state changes from the stream, newest first."""
        entries = await self._client.xrevrange(self.stream_key, count=count) or []
        return [orjson.loads(fields.get(b"alert") or fields["alert"]) for _, fields in entries if fields]

    async def load_state(self, channels: Container[str] | None = None) -> dict[str, Any]:
        """The saved lifecycle state, for ``AlertBook.from_state``; only ``channels``' entries if given.

        A worker restarted (or newly assigned some channels) loads the entries of the channels it owns
        and resumes with the same decisions it would have taken without the restart.
        """
        raw = await self._client.hgetall(self.state_key)
        entries = {}
        for fp, body in raw.items():
            entry = orjson.loads(body)
            if channels is None or entry["finding"]["channel"] in channels:
                entries[as_text(fp)] = entry
        return {"version": STATE_VERSION, "entries": entries}

    async def save_state(self, state: StateDelta) -> None:
        """Write a lifecycle state delta alone (``publish`` does it with the alerts when there are some)."""
        await self.publish([], state)
