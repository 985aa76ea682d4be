"""``adpulse budget set / list / approve``: budgets on the compacted budgets topic, approvals in Redis.

Budgets travel as :class:`streams.events.BudgetSetting` JSON on ``adpulse.budgets``, keyed
``channel#period`` or ``channel/campaign#period`` (:func:`alerts.budgets.record_key`; keys without the
period, CONTRACT.md §1, are still read); the workers and these commands read the topic into the same
:class:`alerts.budgets.BudgetBook`. Approvals are per period, in the Redis hash
``<prefix>:budgets:approvals``, written and read by :mod:`alerts.acks` as the router's chat links do.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from adpulse.cli_context import CONTEXT, settings_of
from adpulse.settings import Settings, redacted_url
from alerts.acks import approve as approve_budget
from alerts.acks import read_approvals
from alerts.budgets import (
    PERIODS,
    Approval,
    Budget,
    BudgetBook,
    Period,
    approval_field,
    period_bounds,
    period_start_label,
    record_key,
    topic_key,
)
from alerts.wording import money_text, rfc3339
from streams.events import BudgetSetting, validation_problems
from streams.metadata import topic_partitions
from streams.redis_client import AsyncRedis

#: The wall clock; a module attribute so that tests can fix "now".
clock: Callable[[], float] = time.time
T = TypeVar("T")

_KAFKA_HINT = "is the broker up (`adpulse stack up`), and ADPULSE_KAFKA_BOOTSTRAP right?"
_REDIS_HINT = "is the stack up (`adpulse stack up`), and ADPULSE_REDIS_URL right?"


class BudgetError(RuntimeError):
    """A budget command cannot do its job; the message says what was wrong and how to fix it."""


# ------------------------------------------------------------------------------------------------ Kafka


async def produce_setting(
    settings: Settings, setting: BudgetSetting, timeout_s: float = 15.0
) -> tuple[int, int]:
    """Write one setting to the budgets topic (acks=all), alone in its batch; returns (partition, offset).

    One record per batch because the embedded broker's end offset can stop short of a batch's later
    records, and readers use the end offset to know when they have everything.
    """
    topic = settings.topic("budgets")
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(),
        acks="all",
        enable_idempotence=False,  # the embedded broker has no InitProducerId
        linger_ms=0,
        request_timeout_ms=int(timeout_s * 1000),
    )
    await producer.start()
    try:
        metadata = await producer.client.fetch_all_metadata()
        if topic not in metadata.topics():
            raise BudgetError(_missing_topic(settings))
        value = {"channel": setting.channel, "period": setting.period, "amount": setting.amount}
        if setting.campaign is not None:
            value["campaign"] = setting.campaign
        if setting.owner is not None:
            value["owner"] = setting.owner
        if setting.amount is not None:
            value["reserve_pct"] = setting.reserve_pct
        sent = await producer.send_and_wait(
            topic,
            orjson.dumps(value),
            key=record_key(setting.channel, setting.campaign, setting.period).encode(),
        )
        return sent.partition, sent.offset
    finally:
        await producer.stop()


async def read_budgets(
    settings: Settings, quiet_s: float = 1.0, timeout_s: float = 30.0
) -> tuple[BudgetBook, list[str]]:
    """Read the budgets topic from the beginning to its end: the budgets in force and the records skipped.

    The end is where the reported end offset has been reached and a further ``quiet_s`` of fetches has
    brought nothing: the embedded broker's end offset can stop short of the last batch's later records.
    """
    topic = settings.topic("budgets")
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(min(timeout_s, 30.0) * 1000),
    )
    await consumer.start()
    try:
        partitions = await topic_partitions(settings.kafka_client_options(), topic)
        if not partitions:
            raise BudgetError(_missing_topic(settings))
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        book = BudgetBook()
        skipped: list[str] = []
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while True:
            fetched = await consumer.getmany(*partitions, timeout_ms=200, max_records=1000)
            for records in fetched.values():
                for record in records:
                    problem = book.apply_record(record.key, record.value)
                    if problem:
                        skipped.append(f"partition {record.partition} offset {record.offset}: {problem}")
            now = time.monotonic()
            if any(fetched.values()):
                quiet_since = None
            elif all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                quiet_since = quiet_since if quiet_since is not None else now
                if now - quiet_since >= quiet_s:
                    return book, skipped
            if now > deadline:
                raise BudgetError(
                    f"could not read {topic} to its end within {timeout_s:.0f} s; is the broker overloaded?"
                )
    finally:
        await consumer.stop()


def _missing_topic(settings: Settings) -> str:
    return (
        f"topic {settings.topic('budgets')} does not exist on {redacted_url(settings.kafka_bootstrap)}; "
        "`adpulse stack up` creates the topics (on your own cluster: a compacted topic with 1 partition)"
    )


def _run_kafka(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except BudgetError as exc:
        raise click.ClickException(str(exc)) from None
    except KafkaError as exc:
        raise click.ClickException(
            f"cannot reach Kafka at {redacted_url(settings.kafka_bootstrap)} ({exc}); {_KAFKA_HINT}"
        ) from None


# ------------------------------------------------------------------------------------------------ Redis


def _run_redis(settings: Settings, work: Callable[[AsyncRedis], Coroutine[Any, Any, T]]) -> T:
    """``work(client)`` on a Redis client of its own; an unreachable Redis is a CLI error with a hint."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    async def run() -> T:
        client = aioredis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
        try:
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (OSError, RedisError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {redacted_url(settings.redis_url)} ({exc}); {_REDIS_HINT}"
        ) from None


# ---------------------------------------------------------------------------------------------- commands


def _parse_amount(text: str, currency: str) -> float:
    try:
        amount = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a number; give the budget in {currency}, e.g. 10000 or 2500.50",
            param_hint="AMOUNT",
        ) from None
    if not (amount > 0 and amount != float("inf")):
        raise click.BadParameter(
            f"{text} is not a positive amount; to remove a budget use --delete", param_hint="AMOUNT"
        )
    return amount


def _describe(budget: Budget, currency: str) -> str:
    what = f"{budget.period} budget of {budget.label}: {money_text(budget.amount)} {currency}"
    if budget.reserve_pct:
        what += f" ({money_text(budget.spendable)} spendable, {budget.reserve_pct:g} % reserve)"
    return what + (f", owner {budget.owner}" if budget.owner else "")


@click.group("budget", context_settings=CONTEXT)
def budget_cli() -> None:
    """Budgets per channel or campaign, per day, month or in total, and approvals past the 80 % line.

    The worker warns at 80 % of the spendable budget (amount minus the emergency reserve), saying whose
    approval continuing needs; alerts critical at 100 %; and warns early when, at the current spend rate,
    the budget runs out before the period ends. Days and months start at midnight in ADPULSE_TZ.

    \b
    Examples:
      adpulse budget set douyin 10000 --owner @zhang.wei            # daily budget of 10,000
      adpulse budget set taobao 300000 --period month --reserve-pct 10
      adpulse budget set douyin 2000 --campaign spring-sale --period total
      adpulse budget list
      adpulse budget approve douyin --by @zhang.wei --note "11.11 push"
      adpulse budget set douyin --delete
    """


@budget_cli.command("set", context_settings=CONTEXT)
@click.argument("channel")
@click.argument("amount", required=False)
@click.option("--campaign", help="A campaign of the channel (default: the whole channel).")
@click.option(
    "--period",
    type=click.Choice(PERIODS),
    default="day",
    show_default=True,
    help="Budget period; day and month start at local midnight in ADPULSE_TZ.",
)
@click.option("--owner", help="Chat handle who approves spending past 80 %, e.g. @zhang.wei.")
@click.option(
    "--reserve-pct",
    type=float,
    default=0.0,
    show_default=True,
    help="Emergency reserve, 0-50 % of AMOUNT, not planned against: alerts use the rest.",
)
@click.option("--delete", is_flag=True, help="Remove the budget of CHANNEL (and --campaign, --period).")
@click.pass_context
def set_budget(
    ctx: click.Context,
    channel: str,
    amount: str | None,
    campaign: str | None,
    period: Period,
    owner: str | None,
    reserve_pct: float,
    delete: bool,
) -> None:
    """Set (or with --delete remove) the budget of CHANNEL, in the configured currency.

    Setting a budget again replaces it. A channel (or campaign) may have a day, a month and a total
    budget side by side: each is a key of its own on the compacted budgets topic.

    \b
    Examples:
      adpulse budget set douyin 10000 --owner @zhang.wei
      adpulse budget set douyin 12500 --reserve-pct 20           # 10,000 spendable, 2,500 held back
      adpulse budget set taobao 300000 --period month
      adpulse budget set douyin 2000 --campaign spring-sale --period total
      adpulse budget set douyin --delete
    """
    settings = settings_of(ctx)
    if delete and amount is not None:
        raise click.UsageError("give either AMOUNT or --delete, not both")
    if not delete and amount is None:
        raise click.UsageError("missing AMOUNT (the budget in the configured currency), or use --delete")
    try:
        setting = BudgetSetting(
            channel=channel,
            campaign=campaign,
            period=period,
            amount=None if delete else _parse_amount(amount or "", settings.currency),
            owner=owner,
            reserve_pct=reserve_pct,
        )
    except ValidationError as exc:
        raise click.UsageError(f"invalid budget: {validation_problems(exc, whole='budget')}") from None

    book, _ = _run_kafka(settings, read_budgets(settings))
    current = book.get(channel, campaign, period)
    if delete and current is None:
        click.echo(f"no {period} budget for {topic_key(channel, campaign)}: nothing to delete")
        return
    partition, offset = _run_kafka(settings, produce_setting(settings, setting))
    where = f"{settings.topic('budgets')} (partition {partition}, offset {offset})"
    if delete:
        click.echo(f"deleted the {_describe(current, settings.currency)} -> {where}")  # type: ignore[arg-type]
    else:
        budget = Budget.from_setting(setting)
        verb = "replaced" if current is not None else "set"
        click.echo(f"{verb} the {_describe(budget, settings.currency)} -> {where}")


@budget_cli.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_context
def list_budgets(ctx: click.Context, as_json: bool) -> None:
    """The budgets in force, with this period's approvals.

    JSON fields: channel, campaign (null for the channel), period, amount, reserve_pct, spendable, owner,
    currency, period_start, period_end (RFC 3339; null for total), approval ({by, at, note} or null).

    \b
    Examples:
      adpulse budget list
      adpulse budget list --json | jq '.[] | select(.approval == null)'
    """
    settings = settings_of(ctx)
    book, skipped = _run_kafka(settings, read_budgets(settings))
    for problem in skipped:
        click.echo(f"skipped a malformed record on {settings.topic('budgets')}, {problem}", err=True)
    approvals: dict[str, Approval] = {}
    if len(book):
        approvals = _run_redis(settings, lambda client: read_approvals(client, settings.redis_prefix))
    rows = [_row(budget, approvals, settings, clock()) for budget in book]
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    if not rows:
        click.echo("no budgets; set one with `adpulse budget set CHANNEL AMOUNT`", err=True)
        return
    _print_table(rows, settings.currency)


def _row(budget: Budget, approvals: dict[str, Approval], settings: Settings, now_s: float) -> dict[str, Any]:
    start_s, end_s = period_bounds(budget.period, now_s, settings.zone)
    approval = approvals.get(
        approval_field(budget.channel, budget.campaign, budget.period, start_s, settings.zone)
    )
    return {
        "channel": budget.channel,
        "campaign": budget.campaign,
        "period": budget.period,
        "amount": budget.amount,
        "reserve_pct": budget.reserve_pct,
        "spendable": budget.spendable,
        "owner": budget.owner,
        "currency": settings.currency,
        "period_start": rfc3339(start_s, settings.zone),
        "period_end": rfc3339(end_s, settings.zone) if end_s is not None else None,
        "approval": None
        if approval is None
        else {"by": approval.by, "at": approval.at, "note": approval.note},
    }


def _print_table(rows: list[dict[str, Any]], currency: str) -> None:
    # Plain aligned columns: nothing is cut short, whatever the terminal width, and it pipes well.
    header = [
        "CHANNEL",
        "CAMPAIGN",
        "PERIOD",
        f"AMOUNT {currency}",
        "RESERVE",
        "SPENDABLE",
        "OWNER",
        "APPROVED THIS PERIOD",
    ]
    right = {3, 4, 5}
    table = [header]
    for row in rows:
        approval = row["approval"]
        approved = "-" if approval is None else f"{approval['by']} at {approval['at']}"
        if approval and approval["note"]:
            approved += f" ({approval['note']})"
        table.append(
            [
                row["channel"],
                row["campaign"] or "-",
                row["period"],
                money_text(row["amount"]),
                f"{row['reserve_pct']:g} %" if row["reserve_pct"] else "-",
                money_text(row["spendable"]),
                row["owner"] or "-",
                approved,
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


@budget_cli.command("approve", context_settings=CONTEXT)
@click.argument("channel")
@click.option("--campaign", help="A campaign of the channel (default: the channel's own budget).")
@click.option("--period", type=click.Choice(PERIODS), default="day", show_default=True, help="Which budget.")
@click.option(
    "--by", "by", help="Who approves (default: your login name); use your chat handle, e.g. @zhang.wei."
)
@click.option("--note", help="Why, for the record (shown with the alert and in `adpulse budget list`).")
@click.pass_context
def approve(
    ctx: click.Context, channel: str, campaign: str | None, period: Period, by: str | None, note: str | None
) -> None:
    """Approve CHANNEL's budget going on past its 80 % line, for the current period.

    The 80 % warning then resolves and stays quiet for the rest of the period (approving before the
    line is reached keeps it quiet from the start); the 100 % critical still fires, and names you.
    The approval holds for this period only (today, this month): the next one needs a new approval.
    Approving again keeps the first approval on record.

    \b
    Examples:
      adpulse budget approve douyin --by @zhang.wei --note "11.11 push, ROI 2.4"
      adpulse budget approve taobao --period month
      adpulse budget approve douyin --campaign spring-sale --period total
    """
    settings = settings_of(ctx)
    book, _ = _run_kafka(settings, read_budgets(settings))
    budget = book.get(channel, campaign, period)
    if budget is None:
        have = ", ".join(f"{b.period}" for b in book.under_key(channel, campaign))
        hint = f" (it has a {have} budget: use --period {have})" if have else ""
        raise click.ClickException(
            f"{topic_key(channel, campaign)} has no {period} budget to approve{hint}; "
            "see `adpulse budget list`"
        )
    now_s = clock()
    start_s, _ = period_bounds(period, now_s, settings.zone)
    current, created = _run_redis(
        settings,
        lambda client: approve_budget(
            client,
            settings.redis_prefix,
            channel=budget.channel,
            campaign=budget.campaign,
            period=budget.period,
            period_start_s=start_s,
            by=by or _login_name(),
            note=note,
            now_s=now_s,
            zone=settings.zone,
        ),
    )
    span = (
        "in total"
        if period == "total"
        else f"for the {period} starting {period_start_label(start_s, settings.zone)}"
    )
    if created:
        click.echo(
            f"approved: {budget.label} may go past 80 % of its {period} budget {span} (by {current.by}); "
            "the 100 % line still alerts"
        )
    else:
        click.echo(f"already approved {span} by {current.by} at {current.at}; nothing changed")


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
