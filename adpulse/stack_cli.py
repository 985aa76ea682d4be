"""``adpulse stack up / down / status``: the embedded broker and Redis (:mod:`adpulse.stack`) from the
command line."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from adpulse.cli_context import settings_of
from adpulse.stack import BROKERS, KAFKA, TANSU, ComponentStatus, EmbeddedStack, StackError, StackStatus


def _state(component: ComponentStatus) -> Text:
    if component.healthy and component.running:
        return Text("healthy", style="green")
    if component.healthy:
        return Text("answering, not started by adpulse", style="yellow")
    if component.running:
        return Text("running, not answering", style="red")
    return Text("stopped", style="red")


def _render(status: StackStatus, console: Console) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("", "address", "state", "pid", "log"):
        table.add_column(column)
    for component in (status.broker, status.redis):
        table.add_row(
            component.name,
            component.address,
            _state(component),
            str(component.pid or "-"),
            str(component.log_path),
        )
    console.print(table)
    for component in (status.broker, status.redis):
        if component.detail:
            console.print(Text(f"{component.name}: {component.detail}", style="dim"))
    present = ", ".join(f"{name} ({count})" for name, count in status.topics.items())
    console.print(Text(f"topics (partitions): {present or 'none'}"))
    if status.missing_topics:
        console.print(
            Text(
                f"missing topics: {', '.join(status.missing_topics)} (`adpulse stack up` creates them)",
                style="red",
            )
        )
    for note in status.notes:
        console.print(Text(f"note: {note}", style="dim"))


@click.group("stack")
def stack_cli() -> None:
    """Run the embedded broker (Tansu, Kafka-compatible) and Redis-compatible server (Valkey) on loopback.

    They serve on the ports named by ADPULSE_KAFKA_BOOTSTRAP and ADPULSE_REDIS_URL, and keep pid files and
    logs under ADPULSE_HOME/stack, so stacks with different homes and ports run side by side. The embedded
    broker keeps everything in memory: stopping it loses all topics and events. Redis keeps an append-only
    file and survives restarts. With `up --broker kafka` (Java 17 and Maven needed) the broker is Apache
    Kafka instead, one node or a cluster, keeping its data under ADPULSE_HOME/stack/kafka.
    """


@stack_cli.command("up")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=20.0,
    show_default=True,
    help="Seconds to wait for both servers to answer (a Kafka gets a minute at least).",
)
@click.option(
    "--broker",
    type=click.Choice(BROKERS),
    default=None,
    help=f"{TANSU}: the embedded broker (the default); {KAFKA}: Apache Kafka from Maven Central's jars.",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Kafka nodes (with --broker kafka); from 3 on, topics have 3 replicas and min.insync.replicas 2.",
)
def up_command(timeout_s: float, broker: str | None, nodes: int) -> None:
    """Start the broker and Redis, create the topics.

    Starts only what is not running yet, waits until both answer, then creates the missing adpulse topics.
    Safe to repeat: what already runs is left as it is. Exits non-zero when something is unhealthy.

    \b
    Examples:
      adpulse stack up                              # the embedded broker, no Java needed
      adpulse stack up --broker kafka               # one Kafka node (the jars are fetched once, by Maven)
      adpulse stack up --broker kafka --nodes 3     # a 3-broker cluster on loopback
    """
    if nodes > 1 and broker != KAFKA:
        raise click.UsageError("--nodes is for --broker kafka (the embedded broker runs as one node)")
    try:
        stack = EmbeddedStack(settings_of(click.get_current_context()), broker=broker, nodes=nodes)
        status = stack.up(timeout_s=timeout_s)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console(highlight=False)
    console.print(f"started: {', '.join(status.started)}" if status.started else "already running")
    _render(status, console)
    if not status.healthy:
        click.get_current_context().exit(1)


@stack_cli.command("down")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
def down_command(timeout_s: float) -> None:
    """Stop what `adpulse stack up` started.

    Only the broker and Redis processes recorded under ADPULSE_HOME/stack, and only while they are still
    ours; other programs on the same ports are left alone. The broker's topics and events are lost; Redis
    data stays in ADPULSE_HOME/stack/redis.
    """
    stopped = EmbeddedStack(settings_of(click.get_current_context())).down(timeout_s=timeout_s)
    for name, pid in stopped.items():
        click.echo(f"stopped {name} (pid {pid})")
    if not stopped:
        click.echo("nothing to stop")


@stack_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def status_command(as_json: bool) -> None:
    """Show health, pids, logs and topics.

    Whether the broker and Redis run and answer, where they log, and which adpulse topics exist.
    Exits 0 when both answer and every topic exists, 1 otherwise.
    """
    status = EmbeddedStack(settings_of(click.get_current_context())).status()
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2))
    else:
        _render(status, Console(highlight=False))
    if not status.healthy:
        click.get_current_context().exit(1)
