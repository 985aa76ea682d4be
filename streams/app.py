"""The Faust app factory, tuned for both the embedded broker and real Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP, TransportT

from streams.metadata import GROUP_METADATA_MAX_AGE_MS
from streams.store import SCHEME as STORE_SCHEME


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable fetch wait.

    Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. An idle partials partition then
    holds each fetch for up to 1.5 s, and a partial sent meanwhile waits for the next fetch: measured, that
    hop was most of the alert latency. The wait is read by the fetcher at start, so set it before.
    """

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = self.app.adpulse_fetch_wait_ms  # type: ignore[attr-defined]
        consumer._fetch_max_wait_ms = wait_ms  # noqa: SLF001 - aiokafka has no public setter for it
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every partition to its committed offset, and one with none to its beginning.

        Faust calls this after each rebalance. aiokafka seeks only partitions with a committed offset past 0
        and leaves the others where its fetcher was: a partials partition that stayed with this worker
        across a rebalance before its first commit then resumes after the records fetched, but never
        processed, in the previous generation, and those partials are lost. Seen on Kafka when the second
        worker joins a second after the first (the compose file starts two at once); Tansu's slow group
        joins hid it. Re-reading from the beginning is safe: merging a partial twice changes nothing.
        """
        committed: Mapping[TP, int] = await self.call_thread(self._seek_to_committed_or_beginning)
        return committed

    async def _seek_to_committed_or_beginning(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed: Mapping[TP, int] = await consumer.seek_to_committed()
        # Changelog partitions are positioned by table recovery, not by commits.
        changelogs = self.app.tables.changelog_topics
        fresh = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        return committed


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class DrainingBuffer(ProducerBuffer):
    """Faust's producer buffer with a ``flush`` that waits for every message buffered when it was called.

    Faust flushes this buffer before it commits source offsets, so that the changelog writes of the
    events being committed are in Kafka first. Its own ``flush`` (faust-streaming 0.15) gives up as soon
    as 0.1 s pass without a message going out, with messages still buffered: on a loaded machine the
    commit then runs ahead of the changelog, and a ``kill -9`` in that window loses table updates for
    good (seen: a partial of one channel missing after a kill in the exactness test). Messages buffered
    after the call belong to later offsets and are not waited for.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.buffered_total = 0
        self.sent_total = 0

    def put(self, fut: Any) -> None:
        self.buffered_total += 1
        super().put(fut)

    async def _send_pending(self, fut: Any) -> None:
        await super()._send_pending(fut)
        self.sent_total += 1

    async def flush(self) -> None:
        if self.app is not None and self.app.conf.producer_threaded:
            await super().flush()  # another queue, not counted here (adpulse does not use it)
            return
        target = self.buffered_total
        while self.sent_total < target:
            if self.state != "running":
                raise RuntimeError(f"cannot flush: the producer buffer is {self.state} with messages unsent")
            self.message_sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)


class _Producer(faust_aiokafka.Producer):
    def __init__(self, transport: Any, loop: Any = None, **kwargs: Any) -> None:
        super().__init__(transport, loop=loop, **kwargs)
        self.buffer = DrainingBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class App(faust.App):
    """faust.App on the aiokafka driver with ``fetch_wait_ms`` for its consumer and a producer buffer whose
    flush before a commit really drains it (:class:`DrainingBuffer`)."""

    adpulse_fetch_wait_ms: int = 1500

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._early_tasks: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

    def early_task(
        self, fun: Callable[[], Coroutine[Any, Any, None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """Like ``app.task``, but started with the app instead of once Faust's consumer has joined its group
        and its tables are read back: for work that needs neither. The fold stage's own group join then
        overlaps Faust's instead of following it (the embedded broker holds each join for half a session,
        3–5 s). An exception stops the worker as a task's does (both are the app's futures)."""
        self._early_tasks.append(fun)
        return fun

    async def on_start(self) -> None:
        await super().on_start()
        for fun in self._early_tasks:
            self.add_future(fun())


def make_app(
    app_id: str,
    bootstrap: str,
    *,
    partitions: int,
    web_host: str,
    web_port: int,
    datadir: str,
    credentials: Any = None,
    fetch_wait_ms: int = 100,
    replication_factor: int = 1,
    instance_id: str | None = None,
    changelog_batch_bytes: int = 1,
    session_timeout_s: float = 10.0,
) -> App:
    """A Faust app whose agents own adpulse's changelog-backed tables.

    - group timings: the session is ``session_timeout_s`` (10 s by default): the embedded broker (Tansu)
      holds every join for half a session, and on Kafka a dead worker's partitions move after one;
    - ``changelog_batch_bytes`` (Faust's ``producer_max_batch_size``) is 1 by default: every changelog
      record in its own record batch, for Tansu: it reports a partition's end offset as "last batch start
      + 1", and table recovery reads up to that end, so multi-record batches would make recovery stop short
      of the newest records. Kafka reports the true end; there a record per batch costs a round trip per
      record and partition (measured: about 1,200 changelog records/s on loopback), so set it higher;
    - no standby replicas: the in-memory store recovers from the changelog on assignment, in bulk
      (:mod:`streams.store`);
    - ``fetch_wait_ms`` bounds how long an idle fetch waits (see :class:`_ConsumerThread`);
    - ``instance_id`` makes the worker a static member of its group (``group.instance.id``): after a
      ``kill -9`` the restarted worker takes its place at once, where a new member waits for the dead one's
      session to time out first. A static member does not leave the group when it stops either: its
      partitions wait for the session timeout (or its return) before they move.
    """
    app = App(
        app_id,
        broker=[f"kafka://{server.strip()}" for server in bootstrap.split(",")],
        broker_credentials=credentials,
        store=f"{STORE_SCHEME}://",
        datadir=datadir,
        autodiscover=False,
        topic_partitions=partitions,
        topic_replication_factor=replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=0,
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=10.0,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=instance_id,
        consumer_metadata_max_age_ms=GROUP_METADATA_MAX_AGE_MS,
        producer_max_batch_size=changelog_batch_bytes,
        producer_linger=0.0,
        stream_wait_empty=False,
        web_enabled=True,
        web_bind=web_host,
        web_host=web_host,
        web_port=web_port,
        web_transport="tcp://",
    )
    app.adpulse_fetch_wait_ms = fetch_wait_ms
    return app
