"""The Faust app factory, tuned for both the embedded broker and real Kafka."""

from __future__ import annotations

from typing import Any

import faust


def make_app(
    app_id: str,
    bootstrap: str,
    *,
    partitions: int,
    web_host: str,
    web_port: int,
    datadir: str,
    credentials: Any = None,
) -> faust.App:
    """A Faust app whose agents own adpulse's changelog-backed tables.

    - group timings: the embedded broker joins groups slowly unless sessions are short;
    - ``producer_max_batch_size=1`` puts every changelog record in its own record batch: the embedded
      broker reports a partition's end offset as "last batch start + 1", and table recovery reads up to
      that end, so multi-record batches would make recovery stop short of the newest records;
    - no standby replicas: the in-memory store recovers from the changelog on assignment.
    """
    return faust.App(
        app_id,
        broker=[f"kafka://{server.strip()}" for server in bootstrap.split(",")],
        broker_credentials=credentials,
        store="memory://",
        datadir=datadir,
        autodiscover=False,
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        table_standby_replicas=0,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=10.0,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_max_batch_size=1,
        producer_linger=0.0,
        stream_wait_empty=False,
        web_enabled=True,
        web_bind=web_host,
        web_host=web_host,
        web_port=web_port,
        web_transport="tcp://",
    )
