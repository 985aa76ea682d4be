"""The ``adpulse`` command line (CONTRACT.md §5)."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta

import click
import orjson

from adpulse import __version__
from adpulse.cli_context import CONTEXT, read_settings
from adpulse.settings import Settings, redacted_url
from streams.keys import Keys


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="adpulse")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default: ADPULSE_LOG_LEVEL or INFO).")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """adpulse: real-time CTR, CVR and ROI per channel and campaign, from Kafka, with alerts.

    Configuration comes from ADPULSE_* environment variables (and an optional .env file):
    ADPULSE_KAFKA_BOOTSTRAP (127.0.0.1:9092), ADPULSE_REDIS_URL (redis://127.0.0.1:6379/0),
    ADPULSE_WEB_PORT (6066), ADPULSE_TZ (Asia/Shanghai), ADPULSE_CURRENCY (CNY),
    ADPULSE_HOME (.adpulse), ADPULSE_GRACE_S (60), ADPULSE_PARTITIONS (4).

    \b
    Quick start:
      adpulse demo                 # everything on the embedded stack, with a live view
      adpulse stack up             # just the embedded broker and Redis
      adpulse worker               # a stream worker (start several to scale out)
      adpulse simulate --rate 500  # traffic
      adpulse kpis                 # current KPIs
    """
    settings = read_settings(log_level=log_level.upper() if log_level else None)
    ctx.obj = settings
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command(context_settings=CONTEXT)
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run a stream worker: fold events into windowed KPIs, write snapshots to Redis, serve /metrics.

    Start several (with different ADPULSE_WEB_PORT) to share the partitions. Stops cleanly on
    Ctrl-C / SIGTERM; after a crash, a restart resumes exactly (nothing lost, nothing counted twice).
    """
    from adpulse.worker import PartitionCountError, run_worker

    try:
        run_worker(settings, loglevel=settings.log_level.lower())
    except PartitionCountError as exc:
        raise click.ClickException(str(exc)) from None


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value.startswith("-") and value[-1] in units and value[1:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[1:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r}: use RFC 3339 (2026-11-24T10:00:00+08:00) or -30m / -2h"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def _read_kpis(settings: Settings, since: datetime | None) -> list[dict[str, object]]:
    """The latest snapshot; with ``since``, also every closed window recorded since then."""
    import redis.asyncio as aioredis

    from agents.buckets import closed_key

    client = aioredis.from_url(settings.redis_url)
    try:
        rows = [orjson.loads(v) for v in (await client.hgetall(Keys(settings.redis_prefix).kpis)).values()]
        if since is None:
            return rows
        today = datetime.now(settings.zone).date()
        day = since.astimezone(settings.zone).date()
        closed: list[dict[str, object]] = []
        while day <= today:
            for window in ("1m", "1h", "1d"):
                raw = await client.hgetall(closed_key(settings.redis_prefix, window, day.isoformat()))
                closed.extend(orjson.loads(v) for v in raw.values())
            day += timedelta(days=1)
    finally:
        await client.aclose()
    seen = {(r["channel"], r["campaign"], r["window"], r["window_start"]) for r in closed}
    # A "last" row is the newest closed window: keep one copy of it.
    return closed + [
        r for r in rows if (r["channel"], r["campaign"], r["window"], r["window_start"]) not in seen
    ]


def select_kpis(
    rows: list[dict[str, object]],
    window: str | None,
    channel: str | None,
    campaign: str | None,
    since: datetime | None,
) -> list[dict[str, object]]:
    """Filter and order KPI rows as ``adpulse kpis`` prints them."""
    picked = [
        row
        for row in rows
        if row["window"] != "total"
        and (window is None or row["window"] == window)
        and (channel is None or row["channel"] == channel)
        and (campaign is None or row["campaign"] == campaign)
        and (since is None or datetime.fromisoformat(str(row["window_start"])) >= since)
    ]
    order = {"1m": 0, "1h": 1, "1d": 2}
    return sorted(
        picked,
        key=lambda r: (
            r["channel"],
            r["campaign"] != "-",
            r["campaign"],
            order[str(r["window"])],
            str(r["window_start"]),
        ),
    )


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array (CONTRACT.md §5).")
@click.option("--window", type=click.Choice(["1m", "1h", "1d"]), help="Only this window size.")
@click.option("--channel", help="Only this channel.")
@click.option("--campaign", help="Only this campaign ('-' = channel level).")
@click.option("--since", help="Only windows starting at or after this time (RFC 3339, or -30m / -2h).")
@click.pass_obj
def kpis(
    settings: Settings,
    as_json: bool,
    window: str | None,
    channel: str | None,
    campaign: str | None,
    since: str | None,
) -> None:
    """Current and last complete KPI windows per channel (and campaign), from the workers' snapshot.

    With --since, every window closed since then too (kept for ADPULSE_RETENTION_1M_S and friends).
    Ratios with a zero denominator are shown as — (null in JSON): no data, not zero.

    \b
    Examples:
      adpulse kpis --window 1m
      adpulse kpis --json --channel douyin --since -2h
    """
    from redis.exceptions import RedisError

    since_at = _parse_since(since)
    try:
        rows = asyncio.run(_read_kpis(settings, since_at))
    except (OSError, RedisError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {redacted_url(settings.redis_url)}: {exc}; is the stack up?"
        ) from exc
    rows = select_kpis(rows, window, channel, campaign, since_at)
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    if not rows:
        click.echo("no KPIs yet: is a worker running (adpulse worker) and are events arriving?", err=True)
        return
    from adpulse.render import kpi_table

    kpi_table(rows, settings.currency)


def _register_optional() -> None:
    from adpulse.alerts_cli import alerts_cli
    from adpulse.backtest_cli import backtest_cli
    from adpulse.budget_cli import budget_cli
    from adpulse.demo import demo_cli
    from adpulse.dlq_cli import dlq_cli
    from adpulse.report_cli import report_cli
    from adpulse.router_cli import router_cli
    from adpulse.schema_cli import schema_cli
    from adpulse.simulate import simulate_cli
    from adpulse.stack_cli import stack_cli
    from adpulse.validate import validate_cli

    for command in (
        stack_cli,
        simulate_cli,
        demo_cli,
        alerts_cli,
        budget_cli,
        backtest_cli,
        router_cli,
        report_cli,
    ):
        cli.add_command(command)
    # Tools for the trackers' side (docs/events.md).
    for command in (schema_cli, validate_cli, dlq_cli):
        cli.add_command(command)


_register_optional()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="adpulse")
