"""Sending events to adpulse from Python, the way docs/events.md asks: a small producer helper.

``Emitter`` fills in ``event_id`` (a random UUID) and ``ts`` (now, epoch milliseconds) when an event lacks
them, keys every record by its channel, names the producer in the ``adpulse-producer`` header, and checks
each event with the worker's own decoder (``streams.codec.decode``) before it leaves: an event the worker
would reject raises ``InvalidEventError`` at once, with the reason and the offending field, instead of landing
in the DLQ. Records are batched by the Kafka client (``linger_ms``); ``flush`` waits for every send::

    async with Emitter(settings, producer="shop-web/1.4.2") as emit:
        await emit.send("clicks", {"channel": "douyin", "campaign": "spring", "type": "click"})
        await emit.send("orders", {"channel": "douyin", "order_id": "5521", "amount": 329.9})
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from adpulse.settings import Settings
from streams.codec import Rejection, decode
from streams.dlq import PRODUCER_HEADER
from streams.topics import SOURCE_TOPICS


class InvalidEventError(ValueError):
    """An event the worker would reject; ``rejection`` says why (reason, detail, field)."""

    def __init__(self, topic: str, event: Mapping[str, Any], rejection: Rejection) -> None:
        where = f" (field {rejection.field})" if rejection.field else ""
        super().__init__(f"{topic}: {rejection.reason}{where}: {rejection.detail}")
        self.topic = topic
        self.event = dict(event)
        self.rejection = rejection


def prepare(
    topic: str,
    event: Mapping[str, Any],
    currency: str,
    max_record_bytes: int,
    now_ms: int | None = None,
) -> tuple[bytes, bytes]:
    """The key and value of ``event`` for ``topic`` (``clicks``, ``orders``, ``spend``), with ``event_id`` and
    ``ts`` filled in where missing; raises ``InvalidEventError`` if the worker would reject it."""
    if topic not in SOURCE_TOPICS:
        raise ValueError(f"topic must be one of {', '.join(SOURCE_TOPICS)}, not {topic!r}")
    doc = dict(event)
    doc.setdefault("event_id", uuid.uuid4().hex)
    doc.setdefault("ts", int(time.time() * 1000) if now_ms is None else now_ms)
    try:
        value = orjson.dumps(doc)
    except TypeError as exc:
        raise InvalidEventError(topic, doc, Rejection("invalid", f"not JSON-serialisable: {exc}")) from None
    decoded = decode(topic, value, currency, max_record_bytes)
    if isinstance(decoded, Rejection):
        raise InvalidEventError(topic, doc, decoded)
    return decoded.channel.encode(), value


class Emitter:
    """Batches validated events to the adpulse topics; use as ``async with`` (or ``start``/``stop``)."""

    def __init__(
        self,
        settings: Settings,
        producer: str = "adpulse-emit",
        linger_ms: int = 20,
        max_batch_bytes: int = 256 * 1024,
    ) -> None:
        self.settings = settings
        self._headers = [(PRODUCER_HEADER, producer.encode())]
        self._producer = AIOKafkaProducer(
            **settings.kafka_client_options(),
            acks="all",
            # The embedded broker has no InitProducerId, which idempotence needs; event_ids make retries safe.
            enable_idempotence=False,
            linger_ms=linger_ms,
            max_batch_size=max_batch_bytes,
        )
        self._pending: list[asyncio.Future[Any]] = []
        self.sent = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        """Flush, then close the connection."""
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def __aenter__(self) -> Emitter:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    async def send(self, topic: str, event: Mapping[str, Any]) -> None:
        """Queue one event (validated first: ``InvalidEventError`` if the worker would reject it). Returns
        once the client has it in a batch; ``flush`` waits for the broker's acknowledgements."""
        key, value = prepare(topic, event, self.settings.currency, self.settings.max_record_bytes)
        future = await self._producer.send(self.settings.topic(topic), value, key=key, headers=self._headers)
        self._pending.append(future)
        self.sent += 1

    async def flush(self) -> None:
        """Wait until every event sent so far is acknowledged (raises the first failure)."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
