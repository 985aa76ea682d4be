"""``adpulse alerts``: the alerts firing now, from Redis (CONTRACT.md §3, §5)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import orjson

from adpulse.cli_context import CONTEXT, settings_of
from adpulse.settings import Settings, redacted_url
from alerts.model import most_severe_first
from alerts.wording import ago_text

if TYPE_CHECKING:
    from alerts.acks import Ack
    from alerts.payload import AlertJson

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


async def read_alerts(settings: Settings, history: int) -> tuple[list[AlertJson], list[AlertJson]]:
    """The active alerts (most severe, then oldest, first) and the last ``history`` stream entries."""
    import redis.asyncio as aioredis

    from alerts.sinks.redis_sink import RedisAlertSink

    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
    try:
        sink = RedisAlertSink(client, settings.redis_prefix)
        active = list((await sink.load_active()).values())
        past = await sink.history(history) if history else []
    finally:
        await client.aclose()
    active.sort(
        key=lambda a: (most_severe_first(a.get("severity")), a.get("fired_at") or "", a["fingerprint"])
    )
    return active, past


def _since(fired_at: str | None, now: datetime) -> str:
    if not fired_at:
        return "—"
    return ago_text((now - datetime.fromisoformat(fired_at)).total_seconds())


def _where(alert: Mapping[str, Any]) -> str:
    return alert["channel"] if alert.get("campaign") is None else f"{alert['channel']}/{alert['campaign']}"


def _table(rows: Sequence[Mapping[str, Any]], title: str, now: datetime, history: bool) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, header_style="bold", title_justify="left")
    if history:
        table.add_column("status")
    for name in ("severity", "kind", "channel/campaign", "summary", "since"):
        table.add_column(name, overflow="fold")
    for alert in rows:
        severity = str(alert.get("severity"))
        style = _SEVERITY_STYLE.get(severity)
        cells = [
            f"[{style}]{severity}" if style else escape(severity),
            escape(str(alert.get("kind"))),
            escape(_where(alert)),
            escape(str(alert.get("summary"))),
            _since(alert.get("resolved_at") or alert.get("fired_at"), now)
            if history
            else _since(alert.get("fired_at"), now),
        ]
        if history:
            cells.insert(0, "[green]resolved" if alert.get("status") == "resolved" else "[red]firing")
        table.add_row(*cells)
    return table


@click.group(
    "alerts",
    invoke_without_command=True,
    context_settings=CONTEXT,
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON array of the alert objects (CONTRACT.md §3)."
)
@click.option("--all", "show_all", is_flag=True, help="Also show the last state changes (the alert stream).")
@click.option(
    "--last",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many stream entries --all shows.",
)
@click.pass_context
def alerts_cli(ctx: click.Context, as_json: bool, show_all: bool, last: int) -> None:
    """Alerts firing now (from ADPULSE_REDIS_URL), most severe first.

    With --all, also the last state changes (fired, escalated, repeated, resolved), newest first; with
    --json --all the output is one object {"active": [...], "history": [...]}.

    \b
    Examples:
      adpulse alerts
      adpulse alerts --json | jq '.[] | select(.severity == "critical")'
      adpulse alerts --all --last 50
      adpulse alerts ack anomaly/ctr/douyin/- --by @zhang.wei
      adpulse alerts snooze anomaly/ctr/douyin/- --for 2h --by @zhang.wei
    """
    if ctx.invoked_subcommand is not None:
        return
    from redis.exceptions import RedisError

    settings = settings_of(ctx)
    try:
        active, past = asyncio.run(read_alerts(settings, last if show_all else 0))
    except (OSError, RedisError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {redacted_url(settings.redis_url)}: {exc}. "
            "Is it running (adpulse stack up) and does ADPULSE_REDIS_URL point at it?"
        ) from exc
    if as_json:
        out: object = {"active": active, "history": past} if show_all else active
        click.echo(orjson.dumps(out).decode())
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    now = datetime.now(UTC)
    if active:
        console.print(_table(active, f"{len(active)} alert(s) firing", now, history=False))
    else:
        console.print("no alerts firing")
    if show_all:
        if past:
            console.print(_table(past, f"last {len(past)} state change(s), newest first", now, history=True))
        else:
            console.print("no alert history yet")


def _duration_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise click.BadParameter(f"{text!r}: use a duration such as 30m, 2h or 1d")
    return int(text[:-1]) * units[text[-1]]


async def _ack(settings: Settings, ref: str, by: str, snooze_s: float | None) -> tuple[AlertJson, Ack]:
    import time

    import redis.asyncio as aioredis

    from alerts.acks import acknowledge, find_active

    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
    try:
        alert = await find_active(client, settings.redis_prefix, ref)
        if alert is None:
            raise click.ClickException(
                f"no alert firing with fingerprint or id {ref!r}; `adpulse alerts` lists them"
            )
        ack = await acknowledge(
            client,
            settings.redis_prefix,
            alert["fingerprint"],
            alert.get("fired_at"),
            by,
            time.time(),
            snooze_s=snooze_s,
        )
        return alert, ack
    finally:
        await client.aclose()


def _run_ack(ctx: click.Context, ref: str, by: str | None, snooze_s: float | None) -> None:
    import getpass

    from redis.exceptions import RedisError

    settings = settings_of(ctx)
    try:
        alert, ack = asyncio.run(_ack(settings, ref, by or getpass.getuser(), snooze_s))
    except (OSError, RedisError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {redacted_url(settings.redis_url)}: {exc}"
        ) from exc
    if snooze_s is None:
        what = "acknowledged"
    else:
        assert ack.until is not None  # a snooze has an end
        what = f"snoozed until {datetime.fromtimestamp(ack.until, UTC).isoformat(timespec='minutes')}"
    click.echo(
        f"{alert['fingerprint']} {what} by {ack.by}: no more repeats"
        + (" or escalation" if snooze_s is None else "")
        + f" ({alert.get('summary')})"
    )


@alerts_cli.command("ack", context_settings=CONTEXT)
@click.argument("ref")
@click.option("--by", help="Who acknowledges (default: your user name).")
@click.pass_context
def ack_cli(ctx: click.Context, ref: str, by: str | None) -> None:
    """Acknowledge the firing alert REF (fingerprint or id): the routers stop repeats and escalation."""
    _run_ack(ctx, ref, by, None)


@alerts_cli.command("snooze", context_settings=CONTEXT)
@click.argument("ref")
@click.option("--for", "duration", default="1h", show_default=True, help="How long: 30m, 2h, 1d.")
@click.option("--by", help="Who snoozes (default: your user name).")
@click.pass_context
def snooze_cli(ctx: click.Context, ref: str, duration: str, by: str | None) -> None:
    """Snooze the firing alert REF (fingerprint or id): no repeats until the time is up.

    The snooze holds for this episode of the alert: if it resolves and fires again, it pages again.
    """
    _run_ack(ctx, ref, by, _duration_s(duration))
