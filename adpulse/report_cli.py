"""``adpulse report daily | weekly``: the daily cross-channel sheet and the weekly review, in five formats.

The figures come from the closed windows the workers keep in Redis and the alerts stream
(:mod:`alerts.report`); budgets from the budgets topic (skipped, with a note, when the broker cannot be
reached).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import orjson

from adpulse.cli_context import CONTEXT
from adpulse.settings import Settings, redacted_url
from alerts.budgets import Budget

FORMATS = ("table", "csv", "json", "html", "xlsx")
#: The wall clock; a module attribute so that tests can fix "now".
clock: Callable[[], float] = time.time


def parse_day(text: str | None, today: date) -> date:
    """``--date``: ``YYYY-MM-DD``, ``today``, ``yesterday`` or ``-Nd``; default yesterday (the last whole
    day)."""
    if text is None or text == "yesterday":
        return today - timedelta(days=1)
    if text == "today":
        return today
    try:
        if text.startswith("-") and text.endswith("d"):
            day = today - timedelta(days=int(text[1:-1]))
        else:
            day = date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use YYYY-MM-DD, today, yesterday or -3d", param_hint="--date"
        ) from None
    if day > today:
        raise click.BadParameter(
            f"{day} is in the future (today is {today} in ADPULSE_TZ)", param_hint="--date"
        )
    return day


def _budgets(settings: Settings) -> tuple[list[Budget], str | None]:
    """The budgets in force, or none and why (the report goes on without them)."""
    from aiokafka.errors import KafkaError

    from adpulse.budget_cli import BudgetError, read_budgets

    try:
        book, _skipped = asyncio.run(read_budgets(settings, quiet_s=0.5, timeout_s=10.0))
    except (BudgetError, KafkaError, OSError, TimeoutError) as exc:
        return (
            [],
            f"budgets not shown: cannot read them from {redacted_url(settings.kafka_bootstrap)} ({exc})",
        )
    return list(book), None


def _redis(settings: Settings) -> Any:
    import redis.asyncio as aioredis

    return aioredis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)


async def _with_redis(settings: Settings, work: Callable[[Any], Any]) -> Any:
    client = _redis(settings)
    try:
        return await work(client)
    finally:
        await client.aclose()


def _run(settings: Settings, work: Callable[[Any], Any]) -> Any:
    from redis.exceptions import RedisError

    try:
        return asyncio.run(_with_redis(settings, work))
    except (OSError, RedisError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {redacted_url(settings.redis_url)}: {exc}; is the stack up?"
        ) from exc


def _charts(build: Callable[[], dict[str, tuple[bytes, str]]]) -> dict[str, tuple[bytes, str]]:
    try:
        return build()
    except RuntimeError as exc:  # matplotlib missing: the page without charts, and how to get them
        click.echo(f"adpulse report: no charts: {exc}", err=True)
        return {}


def _emit(text: str | bytes, output: Path | None, binary: bool = False) -> None:
    if output is not None:
        output.write_bytes(text if isinstance(text, bytes) else text.encode())
        click.echo(f"wrote {output}", err=True)
        return
    if binary and sys.stdout.isatty():
        raise click.UsageError("xlsx is a binary format: use --output FILE (or redirect stdout to a file)")
    if isinstance(text, bytes):
        click.get_binary_stream("stdout").write(text)
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _table(renderable: Any, output: Path | None, after: str = "") -> None:
    from rich.console import Console

    with open(output, "w", encoding="utf-8") if output else contextlib.nullcontext(None) as file:
        console = Console(file=file, width=220) if file else Console()
        if not console.is_terminal:
            console = Console(file=file, width=220)
        console.print(renderable)
        if after:
            console.print(after, highlight=False)


def _xlsx(make: Callable[[], bytes]) -> bytes:
    try:
        return make()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("report", context_settings=CONTEXT)
def report_cli() -> None:
    """Reports people read: the daily cross-channel sheet and the weekly review against targets.

    Days are local days in ADPULSE_TZ; figures come from the closed windows stored in Redis (1-day windows
    are kept ADPULSE_RETENTION_1D_S, 62 days by default), so any recent day can be reported after restarts.
    Money is in ADPULSE_CURRENCY, exact to the cent; ROI and AOV say "no data" where the divisor is 0.
    """


_format = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
_output = click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file (xlsx needs it).",
)


@report_cli.command("daily", context_settings=CONTEXT)
@click.option(
    "--date", "day_text", metavar="DAY", help="YYYY-MM-DD, today, yesterday or -3d (default: yesterday)."
)
@_format
@_output
@click.pass_obj
def daily(settings: Settings, day_text: str | None, fmt: str, output: Path | None) -> None:
    """The daily sheet: one row per channel and a total.

    Columns: date, channel, visits, new users, orders, GMV, AOV, channel cost, ROI, anomaly note (that day's
    alerts, e.g. "CTR −52 % 14:10–15:00, resolved 15:20"). Visits are landing-page visit events; a channel
    that sends none shows its clicks, with a footnote. Today's sheet is marked as not over.

    \b
    Examples:
      adpulse report daily                         # yesterday, as a table
      adpulse report daily --date 2026-11-24 --format csv > 2026-11-24.csv
      adpulse report daily --format html -o daily.html
      adpulse report daily --format xlsx -o daily.xlsx
    """
    from alerts.report import render
    from alerts.report.store import load_daily

    today = datetime.fromtimestamp(clock(), settings.zone).date()
    day = parse_day(day_text, today)
    budgets: list[Budget] = []
    if fmt == "html":
        budgets, problem = _budgets(settings)
        if problem:
            click.echo(f"adpulse report: {problem}", err=True)
    sheet = _run(
        settings,
        lambda r: load_daily(r, settings.redis_prefix, day, settings.zone, settings.currency, budgets),
    )
    if sheet.empty:
        click.echo(f"adpulse report: no data stored for {day}", err=True)
    if fmt == "table":
        _table(render.daily_table(sheet), output)
    elif fmt == "csv":
        _emit(render.daily_csv(sheet), output)
    elif fmt == "json":
        _emit(orjson.dumps(render.daily_json(sheet), option=orjson.OPT_INDENT_2).decode(), output)
    elif fmt == "html":
        from alerts.report.charts import daily_charts

        _emit(render.daily_html(sheet, _charts(lambda: daily_charts(sheet))), output)
    else:
        from alerts.report.xlsx import daily_xlsx

        _emit(_xlsx(lambda: daily_xlsx(sheet)), output, binary=True)


@report_cli.command("weekly", context_settings=CONTEXT)
@click.option(
    "--week", "week_text", metavar="WEEK", help="2026-W47 or a date in the week (default: yesterday's)."
)
@_format
@_output
@click.option("--no-budgets", is_flag=True, help="Do not read budgets from the broker.")
@click.pass_obj
def weekly(
    settings: Settings, week_text: str | None, fmt: str, output: Path | None, no_budgets: bool
) -> None:
    """The weekly review: each channel against the targets and the week before.

    Targets: CTR ≥ 2 %, CVR ≥ 5 %, AOV ≥ 300, ROI ≥ 1. Shows Δ against the same weekdays of the week before,
    budget used and pacing, the week's alerts with their time to resolve, and rule-based recommendations
    with their numbers (pause below ROI 1, shift budget toward the best ROI, the funnel stage that lost most).
    A running week covers its days that are over.

    \b
    Examples:
      adpulse report weekly                        # the week holding yesterday
      adpulse report weekly --week 2026-W47 --format html -o week47.html
    """
    from alerts.report import render
    from alerts.report.store import load_weekly
    from alerts.report.weekly import week_start

    today = datetime.fromtimestamp(clock(), settings.zone).date()
    try:
        monday = week_start(week_text, today)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--week") from None
    if monday > today:
        raise click.BadParameter(f"week of {monday} is in the future", param_hint="--week")
    budgets: list[Budget] = []
    if not no_budgets:
        budgets, problem = _budgets(settings)
        if problem:
            click.echo(f"adpulse report: {problem}", err=True)
    review = _run(
        settings,
        lambda r: load_weekly(
            r, settings.redis_prefix, monday, today, settings.zone, settings.currency, budgets
        ),
    )
    if review.empty:
        click.echo(f"adpulse report: no data stored for {review.label}", err=True)
    if fmt == "table":
        _table(render.weekly_table(review), output, render.weekly_text(review))
    elif fmt == "csv":
        _emit(render.weekly_csv(review), output)
    elif fmt == "json":
        _emit(orjson.dumps(render.weekly_json(review), option=orjson.OPT_INDENT_2).decode(), output)
    elif fmt == "html":
        from alerts.report.charts import weekly_charts

        _emit(render.weekly_html(review, _charts(lambda: weekly_charts(review))), output)
    else:
        from alerts.report.xlsx import weekly_xlsx

        _emit(_xlsx(lambda: weekly_xlsx(review)), output, binary=True)
