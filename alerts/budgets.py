"""Budgets: what may be spent, per period in the configured time zone, and when to say so. Pure.

A budget belongs to a channel, or to one campaign of a channel, for a period: a day (from local midnight),
a month (from the local first of the month) or all time, in ``ADPULSE_TZ``. An optional emergency reserve
(``reserve_pct``) is a margin not to be planned against: the 80 % and 100 % lines are lines of the
*spendable* part, ``amount × (1 − reserve_pct / 100)``.

What :func:`evaluate_budget` reports for one budget, each at most once per period (the period and its
start are part of the fingerprint, so a new period starts clean and the old period's alerts resolve):

- ``spend`` *warning* at 80 % of spendable: continuing needs approval, from whom, and the command.
  An approval for the period acknowledges the line: the warning resolves and does not come back this
  period. (It is not kept as an *info* finding: the lifecycle keeps an episode's highest severity and
  repeats it every few hours, so an acknowledged warning would page again.) Approving before the line
  is reached keeps it quiet.
- ``spend`` *critical* at 100 % of spendable, approved or not; it names the approval, if any.
- ``spend_pacing`` *warning* while the budget is not yet spent, when at the current spend rate it runs out
  before the period ends, with the projected time. Once spent, the critical supersedes it.

A raised budget resolves the lines the spend is now below; a deleted budget is no longer evaluated.
"""

from __future__ import annotations

import itertools
import math
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal, TypedDict, get_args
from zoneinfo import ZoneInfo

import orjson
from pydantic import ValidationError

from alerts.model import Finding, Fingerprint, Severity, fingerprint
from alerts.wording import money_text, rfc3339, time_left_text
from streams.events import NO_CAMPAIGN, BudgetSetting, validation_problems
from streams.windows import Calendar

Period = Literal["day", "month", "total"]
PERIODS: Final[tuple[Period, ...]] = get_args(Period)
#: (channel, campaign or None, period): one budget.
BudgetKey = tuple[str, str | None, Period]

WARN_RATIO: Final = 0.8
CRITICAL_RATIO: Final = 1.0
#: Floating-point slack for "at or above a line": 8,000 of 10,000 is 80 %, whatever the rounding.
_EPS: Final = 1e-9
_ADJECTIVE: Final = {"day": "daily", "month": "monthly", "total": "total"}
_PERIOD_END: Final = {"day": "the day ends", "month": "the month ends"}


def topic_key(channel: str, campaign: str | None) -> str:
    """What a budget covers, ``channel`` or ``channel/campaign``: the budgets topic's key before periods had
    keys of their own (still read), and how messages name a budget."""
    return channel if campaign is None else f"{channel}/{campaign}"


def record_key(channel: str, campaign: str | None, period: Period) -> str:
    """The record key of one budget on the budgets topic: ``douyin#day``, ``douyin/spring-sale#month``.

    The period is part of the key because the topic is compacted: under a key of its own, each of a
    channel's day, month and total budgets keeps its latest record through compaction.
    """
    return f"{topic_key(channel, campaign)}#{period}"


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget in force: ``amount`` in currency units for ``period``, ``reserve_pct`` of it held back."""

    channel: str
    campaign: str | None
    period: Period
    amount: float
    owner: str | None = None
    reserve_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {self.period!r}")
        if not (math.isfinite(self.amount) and self.amount > 0):
            raise ValueError(f"amount must be a positive number, not {self.amount!r}")
        if not 0 <= self.reserve_pct <= 50:
            raise ValueError(f"reserve_pct must be between 0 and 50, not {self.reserve_pct!r}")

    @classmethod
    def from_setting(cls, setting: BudgetSetting) -> Budget:
        """The budget a setting establishes (a setting with ``amount=None`` is a deletion: ValueError)."""
        if setting.amount is None:
            raise ValueError(f"the setting deletes the {setting.period} budget of {setting.channel}")
        return cls(
            channel=setting.channel,
            campaign=setting.campaign,
            period=setting.period,
            amount=setting.amount,
            owner=setting.owner,
            reserve_pct=setting.reserve_pct,
        )

    @property
    def key(self) -> BudgetKey:
        return (self.channel, self.campaign, self.period)

    @property
    def spendable(self) -> float:
        """The part of the amount that may be planned against (the reserve is an emergency margin)."""
        return self.amount * (100 - self.reserve_pct) / 100

    @property
    def reserve(self) -> float:
        return self.amount - self.spendable

    @property
    def label(self) -> str:
        """``douyin`` or ``douyin/spring-sale``: how messages name what the budget covers."""
        return topic_key(self.channel, self.campaign)


@lru_cache(maxsize=16)
def _calendar(zone: ZoneInfo) -> Calendar:
    return Calendar(zone)


def period_bounds(period: Period, now_s: float, zone: ZoneInfo) -> tuple[int, int | None]:
    """Start and end (exclusive, epoch seconds) of the ``period`` holding ``now_s``; ``total`` never ends.

    Days start at local midnight exactly as the 1-day KPI windows do (:class:`streams.windows.Calendar`), so
    the spend of the current 1-day window is the spend of the current daily budget period.
    """
    if period == "total":
        return 0, None
    calendar = _calendar(zone)
    if period == "day":
        start = calendar.start("1d", int(now_s))
        return start, calendar.end("1d", start)
    if period == "month":
        local = datetime.fromtimestamp(int(now_s), zone)
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0, fold=0)
        following = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
        return int(first.timestamp()), int(following.timestamp())
    raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")


def period_start_label(start_s: int, zone: ZoneInfo) -> str:
    """The local date a period starts on (``2026-11-24``; ``2026-11-01`` for November): its identity."""
    return datetime.fromtimestamp(start_s, zone).date().isoformat()


def approval_field(
    channel: str, campaign: str | None, period: Period, period_start_s: int, zone: ZoneInfo
) -> str:
    """Field of the approvals hash for one budget and one period: ``douyin|-|day|2026-11-24``.

    Approvals are per period: the next period's field is a different one, so it needs a new approval.
    """
    label = period_start_label(period_start_s, zone)
    return f"{channel}|{campaign or NO_CAMPAIGN}|{period}|{label}"


@dataclass(frozen=True, slots=True)
class Approval:
    """Someone allowed a budget to go on past its 80 % line for one period."""

    by: str
    at: str
    note: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({"by": self.by, "at": self.at, "note": self.note})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Approval:
        """Parse an approval record; ValueError if it is not one."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"approval is not JSON: {exc}") from exc
        fields = data if isinstance(data, dict) else {}
        if not isinstance(fields.get("by"), str) or not isinstance(fields.get("at"), str):
            # ValueError, not TypeError: this is a malformed record, and callers skip it like bad JSON.
            raise ValueError("approval needs string fields 'by' and 'at'")  # noqa: TRY004
        note = fields.get("note")
        return cls(by=fields["by"], at=fields["at"], note=note if isinstance(note, str) else None)


def used_ratio(spent: float, budget: Budget) -> float:
    """Spend as a fraction of the spendable budget (``adpulse_budget_used_ratio``; 1.0 = all spent)."""
    return spent / budget.spendable


def approve_command(budget: Budget) -> str:
    """The command that approves going on past the 80 % line, shell-quoted."""
    words = ["adpulse", "budget", "approve", budget.channel]
    if budget.campaign is not None:
        words += ["--campaign", budget.campaign]
    words += ["--period", budget.period]
    return shlex.join(words)


def _percent(ratio: float) -> int:
    # Floor: "100 %" must never appear on a budget that is not yet spent.
    return math.floor(ratio * 100 + 1e-6)


def _extra_keys(
    budget: Budget, start_s: int, zone: ZoneInfo, warn_ratio: float
) -> dict[str, tuple[str, ...]]:
    label = period_start_label(start_s, zone)
    return {
        "warning": (budget.period, label, str(round(warn_ratio * 100))),
        "critical": (budget.period, label, "100"),
        "pacing": (budget.period, label),
    }


def budget_judged(
    budget: Budget,
    spent_in_period: float,
    now_s: float,
    spend_rate_per_s: float,
    *,
    zone: ZoneInfo,
    warn_ratio: float = WARN_RATIO,
) -> dict[Fingerprint, float | None]:
    """Every fingerprint :func:`evaluate_budget` judges for this budget now, with its current value.

    For :meth:`alerts.lifecycle.AlertBook.evaluate`'s ``judged``: the 80 % and 100 % lines report the
    spend, pacing the projected spend at the period's end as a fraction of spendable (None: no end).
    Fingerprints of earlier periods (and of deleted budgets) are not among them: judge those OK yourself.
    """
    start_s, end_s = period_bounds(budget.period, now_s, zone)
    keys = _extra_keys(budget, start_s, zone, warn_ratio)
    projected = (
        None
        if end_s is None
        else (spent_in_period + max(spend_rate_per_s, 0.0) * (end_s - now_s)) / budget.spendable
    )
    line = (budget.channel, budget.campaign)
    return {
        fingerprint("budget", "spend", *line, *keys["warning"]): spent_in_period,
        fingerprint("budget", "spend", *line, *keys["critical"]): spent_in_period,
        fingerprint("budget", "spend_pacing", *line, *keys["pacing"]): projected,
    }


class _Window(TypedDict):
    """The period a budget finding is about, as :class:`Finding` fields."""

    window: str
    window_start: str
    window_end: str | None


def evaluate_budget(
    budget: Budget,
    spent_in_period: float,
    now_s: float,
    spend_rate_per_s: float,
    approval: Approval | None = None,
    *,
    zone: ZoneInfo,
    currency: str = "CNY",
    warn_ratio: float = WARN_RATIO,
) -> list[Finding]:
    """The findings for one budget now: the 80 % and 100 % lines and pacing (see the module docstring).

    ``spent_in_period``: spend of the budget's channel (campaign) since the start of the period holding
    ``now_s`` (:func:`period_bounds`). ``spend_rate_per_s``: the current spend rate, for the projection.
    ``approval``: the approval recorded for this budget and this period (:func:`approval_field`), if any.
    Every call is a complete judgement of the budget's current period (:func:`budget_judged` lists what it
    judged): a fingerprint it no longer returns is OK now.
    """
    start_s, end_s = period_bounds(budget.period, now_s, zone)
    period = _Period(
        budget,
        spent_in_period,
        start_s,
        end_s,
        approval,
        zone,
        currency,
        _extra_keys(budget, start_s, zone, warn_ratio),
        spend_rate_per_s,
    )
    findings: list[Finding] = []
    if period.ratio >= warn_ratio - _EPS and approval is None:
        findings.append(_warning(period, warn_ratio))
    if period.ratio >= CRITICAL_RATIO - _EPS:
        findings.append(_critical(period))
    elif end_s is not None and spend_rate_per_s > 0:
        pacing = _pacing(period, now_s, end_s)
        if pacing is not None:
            findings.append(pacing)
    return findings


@dataclass(frozen=True, slots=True)
class _Period:
    """One budget in the period being judged: what its findings share, numbers and sentences."""

    budget: Budget
    spent: float
    start_s: int
    end_s: int | None
    approval: Approval | None
    zone: ZoneInfo
    currency: str
    keys: dict[str, tuple[str, ...]]
    rate_per_s: float

    @property
    def ratio(self) -> float:
        return used_ratio(self.spent, self.budget)

    @property
    def window(self) -> _Window:
        return {
            "window": self.budget.period,
            "window_start": rfc3339(self.start_s, self.zone),
            "window_end": rfc3339(self.end_s, self.zone) if self.end_s is not None else None,
        }

    @property
    def evidence(self) -> dict[str, Any]:
        budget, approval = self.budget, self.approval
        evidence: dict[str, Any] = {
            "spent": self.spent,
            "amount": budget.amount,
            "spendable": budget.spendable,
            "reserve_pct": budget.reserve_pct,
            "used_ratio": self.ratio,
            "spend_rate_per_h": self.rate_per_s * 3600,
            "currency": self.currency,
            "period": budget.period,
            "owner": budget.owner,
        }
        if approval is not None:
            evidence.update(approved_by=approval.by, approved_at=approval.at, approval_note=approval.note)
        return evidence

    def money(self, amount: float) -> str:
        return f"{money_text(amount)} {self.currency}"

    @property
    def what(self) -> str:
        return f"its {_ADJECTIVE[self.budget.period]} budget"

    @property
    def amounts(self) -> str:
        return f"({money_text(self.spent)} / {self.money(self.budget.spendable)})"

    @property
    def spent_line(self) -> str:
        budget = self.budget
        name = (
            f"{self.money(budget.spendable)} spendable {_ADJECTIVE[budget.period]} budget of {budget.label}"
        )
        if self.end_s is None:
            return f"Spent {self.money(self.spent)} of the {name}."
        window = self.window
        return (
            f"Spent {self.money(self.spent)} of the {name} since {window['window_start']} "
            f"({_PERIOD_END[budget.period]} {window['window_end']})."
        )

    @property
    def reserve_line(self) -> str:
        budget = self.budget
        if not budget.reserve_pct:
            return ""
        return (
            f"The budget is {self.money(budget.amount)}; {budget.reserve_pct:g} % of it "
            f"({self.money(budget.reserve)}) is an emergency reserve, not planned against."
        )

    @property
    def approved_line(self) -> str:
        approval = self.approval
        if approval is None:
            return ""
        return f"Approved by {approval.by} at {approval.at}" + (
            f" ({approval.note})." if approval.note else "."
        )

    def finding(
        self,
        metric: str,
        severity: Severity,
        value: float,
        threshold: float,
        summary: str,
        lines: Iterable[str],
        key: str,
        evidence: dict[str, Any] | None = None,
    ) -> Finding:
        """A finding about this budget; ``lines`` make the description (empty ones left out)."""
        return Finding(
            kind="budget",
            metric=metric,
            severity=severity,
            channel=self.budget.channel,
            campaign=self.budget.campaign,
            value=value,
            threshold=threshold,
            summary=summary,
            description="\n".join(filter(None, lines)),
            evidence=self.evidence if evidence is None else evidence,
            extra_key=self.keys[key],
            **self.window,
        )


def _warning(period: _Period, warn_ratio: float) -> Finding:
    """The 80 % line: continuing needs approval, from whom, and the command that gives it."""
    budget = period.budget
    who = f" from {budget.owner}" if budget.owner else ""
    command = approve_command(budget)
    no_owner = " The budget names no owner to ask: set one with `adpulse budget set ... --owner @handle`."
    return period.finding(
        "spend",
        "warning",
        period.spent,
        budget.spendable * warn_ratio,
        (
            f"{budget.label} has spent {_percent(period.ratio)} % of {period.what} {period.amounts}; "
            f"continuing needs approval{who}: `{command}`"
        ),
        [
            period.spent_line,
            period.reserve_line,
            f"Spending past {round(warn_ratio * 100)} % needs approval{who}: `{command}`."
            + ("" if budget.owner else no_owner),
        ],
        "warning",
    )


def _critical(period: _Period) -> Finding:
    """The 100 % line, approved or not: what is left of the reserve, and how to pause or raise."""
    budget = period.budget
    left = budget.amount - period.spent
    if not budget.reserve_pct:
        reserve_advice = "There is no emergency reserve."
    elif left > 0:
        reserve_advice = (
            f"Spending now eats into the {budget.reserve_pct:g} % emergency reserve: "
            f"{money_text(left)} of its {period.money(budget.reserve)} are left."
        )
    else:
        reserve_advice = f"The {budget.reserve_pct:g} % emergency reserve is used up too."
    raise_command = shlex.join(
        ["adpulse", "budget", "set", budget.channel, "NEW_AMOUNT"]
        + (["--campaign", budget.campaign] if budget.campaign else [])
        + ["--period", budget.period]
    )
    pause = (
        f"Pause the {'campaign' if budget.campaign else 'channel'} or raise the budget "
        f"(e.g. `{raise_command}`)."
    )
    return period.finding(
        "spend",
        "critical",
        period.spent,
        budget.spendable,
        f"{budget.label} has spent {_percent(period.ratio)} % of {period.what} {period.amounts}: "
        "the budget is used up",
        [period.spent_line, reserve_advice, pause, period.approved_line],
        "critical",
    )


def _pacing(period: _Period, now_s: float, end_s: int) -> Finding | None:
    """The budget runs out before its period ends at the current spend rate; None if it does not."""
    budget, rate_per_s = period.budget, period.rate_per_s
    remaining = budget.spendable - period.spent
    runs_out_s = now_s + remaining / rate_per_s
    if runs_out_s >= end_s:
        return None
    runs_out = rfc3339(runs_out_s, period.zone)
    projected = (period.spent + rate_per_s * (end_s - now_s)) / budget.spendable
    per_hour = f"{period.money(rate_per_s * 3600)}/h"
    return period.finding(
        "spend_pacing",
        "warning",
        projected,
        CRITICAL_RATIO,
        (
            f"{budget.label} will run out of {period.what} at {runs_out}, "
            f"{time_left_text(end_s - runs_out_s)} before {_PERIOD_END[budget.period]}, at {per_hour}"
        ),
        [
            period.spent_line,
            (
                f"{period.money(remaining)} is left; at the current {per_hour} it is gone at {runs_out}, and "
                f"by the end of the period spend would reach {_percent(projected)} % of the spendable budget."
            ),
            period.reserve_line,
            "Lower bids or pace delivery, or raise the budget if the traffic pays off.",
            period.approved_line,
        ],
        "pacing",
        evidence={**period.evidence, "projected_run_out_at": runs_out, "projected_ratio": projected},
    )


class BudgetBook:
    """The budgets in force, as the compacted budgets topic says: one per (channel, campaign, period).

    Apply the topic's records in offset order (:meth:`apply_record`). Only each key's newest record counts,
    which is what compaction keeps, so the book is the same whether or not the topic has been compacted yet:
    a record replaces whatever its key's previous record said, ``amount=None`` deletes the budget, and a
    Kafka tombstone (a key with no value) withdraws its key's record. When records under two keys speak of
    the same budget (a ``channel`` key written before periods had keys, and a ``channel#period`` one), the
    newer wins. The workers' feed (:mod:`agents.budget_feed`) and ``adpulse budget`` read the topic into one.
    """

    def __init__(self, budgets: Iterable[Budget] = ()) -> None:
        # Record key -> (apply order, setting) of the newest record under that key.
        self._records: dict[str, tuple[int, BudgetSetting]] = {}
        self._order = itertools.count()
        self._budgets: dict[BudgetKey, Budget] = {}
        for budget in budgets:
            setting = BudgetSetting(
                channel=budget.channel,
                campaign=budget.campaign,
                period=budget.period,
                amount=budget.amount,
                owner=budget.owner,
                reserve_pct=budget.reserve_pct,
            )
            self.apply(setting)

    def apply_record(self, key: bytes | None, value: bytes | None) -> str | None:
        """Apply one record of the budgets topic; returns why it was skipped, if it was (else None)."""
        if value is None:
            if key is None:
                return "a tombstone without a key"
            self.remove_key(key.decode("utf-8", "replace"))
            return None
        try:
            setting = BudgetSetting.model_validate_json(value)
        except ValidationError as exc:
            return validation_problems(exc)
        self.apply(setting, key.decode("utf-8", "replace") if key is not None else None)
        return None

    def apply(self, setting: BudgetSetting, key: str | None = None) -> Budget | None:
        """Apply one record (``key`` defaults to the setting's :func:`record_key`); returns the budget now in
        force for the setting's (channel, campaign, period), None when there is none."""
        if key is None:
            key = record_key(setting.channel, setting.campaign, setting.period)
        previous = self._records.get(key)
        self._records[key] = (next(self._order), setting)
        if previous is not None:
            self._settle(_identity(previous[1]))
        return self._settle(_identity(setting))

    def remove_key(self, key: str) -> list[Budget]:
        """Apply a tombstone for the record key ``key``; returns the budgets that are gone with it."""
        previous = self._records.pop(key, None)
        if previous is None:
            return []
        identity = _identity(previous[1])
        before = self._budgets.get(identity)
        after = self._settle(identity)
        return [before] if before is not None and after is None else []

    def _settle(self, identity: BudgetKey) -> Budget | None:
        """Recompute one budget from the newest record that speaks of it."""
        newest = max(
            ((order, setting) for order, setting in self._records.values() if _identity(setting) == identity),
            default=None,
            key=lambda entry: entry[0],
        )
        if newest is None or newest[1].amount is None:
            self._budgets.pop(identity, None)
            return None
        budget = Budget.from_setting(newest[1])
        self._budgets[identity] = budget
        return budget

    def get(self, channel: str, campaign: str | None, period: Period) -> Budget | None:
        return self._budgets.get((channel, campaign, period))

    def under_key(self, channel: str, campaign: str | None) -> list[Budget]:
        """The budgets that share the topic key of (channel, campaign), in period order."""
        return [b for b in self if b.channel == channel and b.campaign == campaign]

    def __iter__(self) -> Iterator[Budget]:
        order = {period: i for i, period in enumerate(PERIODS)}
        return iter(
            sorted(
                self._budgets.values(),
                key=lambda b: (b.channel, b.campaign is not None, b.campaign or "", order[b.period]),
            )
        )

    def __len__(self) -> int:
        return len(self._budgets)

    def __contains__(self, key: object) -> bool:
        return key in self._budgets


def _identity(setting: BudgetSetting) -> BudgetKey:
    return (setting.channel, setting.campaign, setting.period)
