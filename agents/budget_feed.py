"""Every worker keeps every budget: a reader of the compacted budgets topic, from its start, forever.

Budgets are few and change rarely, so each worker reads the whole topic (no consumer group) into a
``BudgetBook``: each key's last record counts (as after compaction), ``amount: null`` deletes a budget and
a tombstone withdraws its key's record. A record
that is not a valid budget is logged and counted, and skipped: it never stops the feed.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

from alerts.budgets import BudgetBook
from streams.metadata import topic_partitions

log = logging.getLogger(__name__)


class BudgetFeed:
    """Applies the budgets topic to a ``BudgetBook`` as records arrive."""

    def __init__(self, kafka: dict[str, Any], topic: str, book: BudgetBook) -> None:
        self.kafka = kafka
        self.topic = topic
        self.book = book
        self.invalid = 0

    async def run(self) -> None:
        """Read from the beginning until cancelled."""
        consumer = AIOKafkaConsumer(**self.kafka, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = await topic_partitions(self.kafka, self.topic)
            if not tps:
                log.warning("budgets: topic %s does not exist; no budgets will be judged", self.topic)
                return
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        self.apply(record.key, record.value)
        finally:
            await consumer.stop()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the budgets topic."""
        problem = self.book.apply_record(key, value)
        if problem is not None:
            self.invalid += 1
            log.warning("budgets: skipping an invalid budget record %r: %s", (value or b"")[:200], problem)
