"""A worker refuses to start on topics that do not fit ``ADPULSE_PARTITIONS`` (``check_partition_counts``):
run anyway, the fold stage would send partials to partitions the table does not have, and every write of the
bucket table would fail Faust's partition check, each key quarantined."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from adpulse.settings import Settings
from adpulse.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def _worker(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adpulse", "worker"],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=120,  # a worker that started runs until stopped: the timeout fails the test
        check=False,
    )


async def _create(settings: Settings, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()


def test_a_partials_topic_with_another_count_stops_the_worker_before_it_starts(
    make_settings: Callable[..., Settings],
) -> None:
    made = make_settings(partitions=4)  # the topics exist with 4 partitions
    settings = made.model_copy(update={"partitions": 2, "web_port": free_port()})
    done = _worker(settings)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"topic {settings.topic('partials')} has 4 partitions, ADPULSE_PARTITIONS is 2" in done.stderr


def test_a_changelog_with_another_count_stops_the_worker_before_it_starts(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(partitions=4, web_port=free_port())
    changelog = f"{settings.app_id}-buckets-changelog"
    asyncio.run(_create(settings, changelog, 2))
    done = _worker(settings)
    assert done.returncode == 1, done.stderr[-2000:]
    assert (
        f"topic {settings.topic('partials')} has 4 partitions but the bucket table's changelog {changelog} "
        "has 2" in " ".join(done.stderr.split())
    ), done.stderr[-2000:]


def test_a_missing_partials_topic_stops_the_worker_before_it_starts(
    make_settings: Callable[..., Settings],
) -> None:
    made = make_settings()
    settings = made.model_copy(
        update={"topic_prefix": "nothing-here-" + made.topic_prefix, "web_port": free_port()}
    )
    done = _worker(settings)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"topic {settings.topic('partials')} does not exist" in done.stderr
