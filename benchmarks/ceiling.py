"""The raw ceiling: a bare aiokafka ``getmany`` + ``orjson.loads`` + dict-fold loop over the source topics.

Run by ``throughput.py`` in a process of its own (so that the benchmark's preloaded records do not slow the
garbage collector here); prints one JSON object. The consumer uses the fetch settings of the worker's fold
stage, so the two differ only in what happens to each record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from procstat import cpu_seconds, machine_busy_seconds, run_delay_seconds, status_kb

from streams.metadata import topic_partitions


async def consume(
    bootstrap: str,
    topics: list[str],
    events: int,
    broker_pid: int | None,
    timeout_s: float,
    partition: int | None = None,
) -> dict:
    """Read ``events`` records from the start of ``topics`` (only their partition ``partition`` if one is
    given); the rate excludes the first fetch."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = []
        for topic in topics:
            partitions += [
                tp for tp in await _partitions(bootstrap, topic) if partition in (None, tp.partition)
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        per_channel: dict[str, int] = {}
        seen = bad = 0
        t0 = c0 = cpu0 = broker0 = busy0 = delay0 = None
        me = os.getpid()
        loads = orjson.loads
        deadline = time.monotonic() + timeout_s
        while seen < events:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the ceiling consumer read {seen} of {events} records in {timeout_s:.0f} s"
                )
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batches.values():
                for record in records:
                    try:
                        doc = loads(record.value)
                        channel = doc["channel"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        bad += 1
                        continue
                    per_channel[channel] = per_channel.get(channel, 0) + 1
                seen += len(records)
            if t0 is None and seen:
                t0, c0, cpu0 = time.perf_counter(), seen, time.process_time()
                broker0 = cpu_seconds(broker_pid) if broker_pid else None
                busy0, delay0 = machine_busy_seconds(), run_delay_seconds(me)
        t1, cpu1 = time.perf_counter(), time.process_time()
        broker1 = cpu_seconds(broker_pid) if broker_pid else None
        busy1, delay1 = machine_busy_seconds(), run_delay_seconds(me)
    finally:
        await consumer.stop()
    elapsed = t1 - t0
    broker_cpu = (broker1 - broker0) if broker0 is not None and broker1 is not None else None
    return {
        "events": seen,
        "first_fetch": c0,
        "elapsed_s": elapsed,
        "events_per_s": (seen - c0) / elapsed if elapsed > 0 else float("nan"),
        "cpu_s": cpu1 - cpu0,
        "broker_cpu_s": broker_cpu,
        # Everything else on the machine meanwhile (the benchmark's own waiting parent is ~0).
        "others_cpu_s": busy1 - busy0 - (cpu1 - cpu0) - (broker_cpu or 0.0),
        "run_delay_s": (delay1 - delay0) if delay0 is not None and delay1 is not None else None,
        # VmHWM, not ru_maxrss: the latter survives execve and would report the parent's peak.
        "peak_rss_mb": (status_kb(me, "VmHWM") or 0) / 1024,
        "unparsed": bad,
        "channels": len(per_channel),
    }


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, asked of the cluster (a new consumer knows none on Kafka), once it has any."""
    for _ in range(50):
        found = await topic_partitions({"bootstrap_servers": bootstrap}, topic)
        if found:
            return found
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions on the broker")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated full topic names")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--broker-pid", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--partition", type=int, default=None, help="read only this partition of each topic (one consumer's)"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(
        consume(
            args.bootstrap, args.topics.split(","), args.events, args.broker_pid, args.timeout, args.partition
        )
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
