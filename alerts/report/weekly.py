"""The Friday review: each channel against the targets and the week before, budgets, alerts, and what to do.
Pure.

A week is an ISO week (Monday to Sunday, local days). While it runs, it covers its days that are over, and
the week before is compared on the same weekdays (Monday to Thursday against Monday to Thursday), so a
change is a change and not a shorter week. Recommendations are rules stated with their numbers:

- pause a channel whose ROI is below the target (1: it loses money on every yuan);
- shift budget toward the channel with the best ROI, saying what the money would have returned there;
- name the funnel stage that lost the most, week on week (or, without a week before, against all channels).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from alerts.budgets import Approval, Budget
from alerts.report.daily import DayData, day_bounds
from alerts.report.episodes import Episode, duration_text, note
from alerts.report.model import FUNNEL_STAGES, MICROS, Counts, Targets, money_text, signed, total

TOTAL = "total"
#: Below this many users entering a stage (this week), its rate is too noisy to call a loss.
MIN_STAGE_VOLUME = 100
#: A stage whose conversion fell less than this, relatively, is stable (noise, not a loss).
MIN_STAGE_DROP = 0.05
#: Pacing within ±10 % of the calendar is "on pace".
PACE_BAND = 0.1
_STAGE_ADVICE = {
    "impression → click": "check creatives, placements and targeting",
    "click → visit": "check the landing page (load time, broken or mistracked links)",
    "visit → cart": "check the offer on the landing page: prices, stock, reviews",
    "cart → order": "check checkout, payment and shipping costs",
}


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """How much of one budget the channel used, and whether spending keeps pace with the calendar.

    ``used`` is spend over what the covered days allow (daily: the daily amount per day covered; monthly:
    the month's amount; total: the whole amount). ``pace`` is ``used`` over the share of the period gone
    (None for an all-time budget): 1.0 is on pace, above spends too fast.
    """

    budget: Budget
    spent_micros: int
    allowance_micros: int
    used: float
    pace: float | None

    @property
    def pace_text(self) -> str:
        if self.pace is None:
            return "—"
        if self.pace > 1 + PACE_BAND:
            return f"ahead of pace ({self.pace:.2f}×): spending too fast"
        if self.pace < 1 - PACE_BAND:
            return f"behind pace ({self.pace:.2f}×)"
        return f"on pace ({self.pace:.2f}×)"

    @property
    def text(self) -> str:
        what = {"day": "daily", "month": "monthly", "total": "all-time"}[self.budget.period]
        return (
            f"{what} {money_text(round(self.budget.spendable * MICROS))}: "
            f"{money_text(self.spent_micros)} of {money_text(self.allowance_micros)} "
            f"({self.used * 100:.0f} %)"
        )


@dataclass(frozen=True, slots=True)
class ChannelWeek:
    """One channel's week (``previous``: the same weekdays of the week before; None if nothing stored)."""

    channel: str
    counts: Counts
    previous: Counts | None
    budgets: tuple[BudgetUse, ...] = ()


@dataclass(frozen=True, slots=True)
class WeeklyReview:
    """The review of one ISO week, as far as its days are over."""

    year: int
    week: int
    days: tuple[date, ...]
    previous_days: tuple[date, ...]
    zone: ZoneInfo
    currency: str
    targets: Targets
    channels: tuple[ChannelWeek, ...]
    total: ChannelWeek
    episodes: tuple[Episode, ...]
    alert_notes: tuple[str, ...]
    recommendations: tuple[str, ...]
    footnotes: tuple[str, ...]
    daily: Mapping[date, DayData]

    @property
    def label(self) -> str:
        """``2026-W47 (Mon 11-16 – Thu 11-19)``."""
        if not self.days:
            return f"{self.year}-W{self.week:02d}"
        first, last = self.days[0], self.days[-1]
        return f"{self.year}-W{self.week:02d} ({first:%a %m-%d} – {last:%a %m-%d})"

    @property
    def empty(self) -> bool:
        return not self.channels


def monday_of(day: date) -> date:
    """The Monday starting ``day``'s ISO week."""
    return day - timedelta(days=day.weekday())


def covered_days(monday: date, today: date) -> tuple[date, ...]:
    """The week's days that are over by ``today`` (local); the running day only when none is over yet."""
    week = [monday + timedelta(days=i) for i in range(7)]
    over = tuple(d for d in week if d < today)
    if over:
        return over
    return (today,) if monday <= today <= week[-1] else ()


def month_elapsed(last_day: date) -> float:
    """The share of ``last_day``'s month gone by the end of ``last_day``."""
    return last_day.day / calendar.monthrange(last_day.year, last_day.month)[1]


def budget_use(
    budget: Budget, week_spend: int, days: int, month_spend: int, all_time_spend: int, last_day: date
) -> BudgetUse:
    """How ``budget`` stands: see :class:`BudgetUse`."""
    spendable = round(budget.spendable * MICROS)
    if budget.period == "day":
        allowance = spendable * days
        used = week_spend / allowance
        return BudgetUse(budget, week_spend, allowance, used, used)
    if budget.period == "month":
        used = month_spend / spendable
        return BudgetUse(budget, month_spend, spendable, used, used / month_elapsed(last_day))
    return BudgetUse(budget, all_time_spend, spendable, all_time_spend / spendable, None)


def build_weekly(
    monday: date,
    days: Mapping[date, DayData],
    previous: Mapping[date, DayData],
    alerts: Sequence[Episode],
    zone: ZoneInfo,
    currency: str,
    *,
    targets: Targets | None = None,
    budgets: Sequence[Budget] = (),
    month_spend: Mapping[str, int] | None = None,
    all_time_spend: Mapping[str, int] | None = None,
    approvals: Mapping[str, Approval] | None = None,
) -> WeeklyReview:
    """The review of the ISO week starting ``monday``: ``days`` are its covered days' data, ``previous`` the
    same weekdays a week earlier; ``month_spend`` each channel's spend from the first of the month to the
    last covered day (for monthly budgets), ``all_time_spend`` since the start (for all-time budgets)."""
    targets = targets or Targets()
    covered = tuple(sorted(days))
    before = tuple(sorted(previous))
    this = _sum_days(days.values())
    last = _sum_days(previous.values())
    channels = []
    for channel in sorted(this, key=lambda c: (-this[c].gmv_micros, c)):
        uses = tuple(
            budget_use(
                b,
                this[channel].spend_micros,
                len(covered),
                (month_spend or {}).get(channel, 0),
                (all_time_spend or {}).get(channel, 0),
                covered[-1],
            )
            for b in sorted(budgets, key=lambda b: ("day", "month", "total").index(b.period))
            if b.channel == channel and b.campaign is None and covered
        )
        channels.append(ChannelWeek(channel, this[channel], last.get(channel), uses))
    total_week = ChannelWeek(TOTAL, total(this.values()), total(last.values()) if last else None, ())
    if covered:
        lo, _ = day_bounds(covered[0], zone)
        _, hi = day_bounds(covered[-1], zone)
        week_alerts = tuple(e for e in alerts if e.overlaps(lo, hi))
    else:
        week_alerts = ()
    iso = monday.isocalendar()
    return WeeklyReview(
        year=iso.year,
        week=iso.week,
        days=covered,
        previous_days=before,
        zone=zone,
        currency=currency,
        targets=targets,
        channels=tuple(channels),
        total=total_week,
        episodes=week_alerts,
        alert_notes=_alert_lines(week_alerts, zone, approvals),
        recommendations=tuple(recommendations(channels, total_week, targets, currency)),
        footnotes=_footnotes(covered, before, currency, zone),
        daily=dict(days),
    )


def _sum_days(days: Iterable[DayData]) -> dict[str, Counts]:
    summed: dict[str, Counts] = {}
    for data in days:
        for channel, counts in data.channels.items():
            summed[channel] = summed.get(channel, Counts()) + counts
    return summed


def _alert_lines(
    week_alerts: Sequence[Episode], zone: ZoneInfo, approvals: Mapping[str, Approval] | None
) -> tuple[str, ...]:
    """A line per channel-level episode; the campaigns' episodes counted in one line, with their median time
    to resolve (a busy week has dozens)."""
    lines = [_alert_line(e, zone, approvals) for e in week_alerts if e.campaign is None]
    campaign = [e for e in week_alerts if e.campaign is not None]
    if campaign:
        times = sorted(s for e in campaign if (s := e.resolve_s) is not None)
        median = f", median time to resolve {duration_text(times[len(times) // 2])}" if times else ""
        lines.append(
            f"{len(campaign)} campaign-level alert(s), {len(campaign) - len(times)} still firing{median} "
            "(`adpulse alerts --all` lists them)"
        )
    return tuple(lines)


def _alert_line(episode: Episode, zone: ZoneInfo, approvals: Mapping[str, Approval] | None) -> str:
    when = (episode.start or episode.fired_at).astimezone(zone)
    took = "still firing" if episode.resolve_s is None else f"resolved in {duration_text(episode.resolve_s)}"
    what = note(episode, zone, when.date(), approvals)
    return f"{when:%a %m-%d} {episode.channel} ({episode.severity}): {what} — {took}"


def recommendations(
    channels: Sequence[ChannelWeek], overall: ChannelWeek, targets: Targets, currency: str
) -> list[str]:
    """The rule-based recommendations, each with the numbers behind it (see the module docstring)."""
    out: list[str] = []
    spenders = [c for c in channels if c.counts.roi is not None]
    losing = sorted(
        (c for c in spenders if (c.counts.roi or 0) < targets.roi), key=lambda c: c.counts.roi or 0
    )
    for c in losing:
        roi = c.counts.roi or 0.0
        before = c.previous.roi if c.previous is not None else None
        history = ""
        if before is not None:
            history = (
                f"; below {targets.roi:g} for two weeks running (the week before: {before:.2f})"
                if before < targets.roi
                else f"; the week before it was {before:.2f}"
            )
        out.append(
            f"Pause {c.channel}: ROI {roi:.2f} < {targets.roi:g}, {money_text(c.counts.gmv_micros)} GMV on "
            f"{money_text(c.counts.spend_micros)} {currency} of cost{history}."
        )
    best = max(
        (c for c in spenders if (c.counts.roi or 0) >= targets.roi),
        key=lambda c: c.counts.roi or 0,
        default=None,
    )
    if best is not None:
        weaker = [c for c in spenders if c is not best and (c.counts.roi or 0) < (best.counts.roi or 0)]
        donors = losing or sorted(weaker, key=lambda c: c.counts.roi or 0)[:1]
        if donors:
            moved = sum(d.counts.spend_micros for d in donors)
            returned = sum(d.counts.gmv_micros for d in donors)
            best_roi = best.counts.roi or 0.0
            names = ", ".join(d.channel for d in donors)
            out.append(
                f"Shift budget toward {best.channel} (ROI {best_roi:.2f}, the best this week): the "
                f"{money_text(moved)} {currency} spent on {names} returned {money_text(returned)} GMV; at "
                f"{best.channel}'s average ROI it would have returned about "
                f"{money_text(round(moved * best_roi))} "
                "(a channel's next yuan usually returns less than its average: move it in steps)."
            )
    funnel = _funnel_loss(channels, overall)
    if funnel:
        out.append(funnel)
    if not out:
        out.append("No change needed by these rules: every channel with cost meets the ROI target.")
    return out


def _funnel_loss(channels: Sequence[ChannelWeek], overall: ChannelWeek) -> str | None:
    """The (channel, stage) whose conversion fell the most week on week (relative), with enough volume."""
    worst: tuple[float, str, str, float, float] | None = None
    for c in channels:
        if c.previous is None:
            continue
        now, before = c.counts.funnel(), c.previous.funnel()
        volumes = _stage_volumes(c.counts)
        for stage in FUNNEL_STAGES:
            rate, old = now[stage], before[stage]
            if rate is None or not old or volumes[stage] < MIN_STAGE_VOLUME:
                continue
            change = rate / old - 1
            if change < 0 and (worst is None or change < worst[0]):
                worst = (change, c.channel, stage, old, rate)
    if worst is not None:
        change, channel, stage, old, rate = worst
        fall = signed(change * 100, 1, " %")
        moved = f"{channel}'s {stage} stage, {old * 100:.2f} % → {rate * 100:.2f} % ({fall})"
        if change > -MIN_STAGE_DROP:
            return f"Funnel: stable week on week; the largest fall is {moved}."
        return f"Funnel: the largest loss is {moved} week on week: {_STAGE_ADVICE[stage]}."
    everyone = overall.counts.funnel()
    gap: tuple[float, str, str, float, float] | None = None
    for c in channels:
        now = c.counts.funnel()
        volumes = _stage_volumes(c.counts)
        for stage in FUNNEL_STAGES:
            rate, norm = now[stage], everyone[stage]
            if rate is None or not norm or volumes[stage] < MIN_STAGE_VOLUME:
                continue
            shortfall = rate / norm - 1
            if shortfall < 0 and (gap is None or shortfall < gap[0]):
                gap = (shortfall, c.channel, stage, norm, rate)
    if gap is None:
        return None
    shortfall, channel, stage, norm, rate = gap
    return (
        f"Funnel: {channel} loses the most at {stage}, {rate * 100:.2f} % against {norm * 100:.2f} % across "
        f"all channels ({signed(shortfall * 100, 1, ' %')}; no week before to compare): "
        f"{_STAGE_ADVICE[stage]}."
    )


def _stage_volumes(counts: Counts) -> dict[str, int]:
    return dict(
        zip(FUNNEL_STAGES, (counts.impressions, counts.clicks, counts.visits, counts.carts), strict=True)
    )


def _footnotes(
    covered: Sequence[date], before: Sequence[date], currency: str, zone: ZoneInfo
) -> tuple[str, ...]:
    notes = []
    if not covered:
        notes.append("No day of this week is over yet.")
    elif len(covered) < 7:
        notes.append(
            f"The week is not over: it covers {covered[0]:%a} to {covered[-1]:%a}, compared with the same "
            "weekdays of the week before."
        )
    if covered and not before:
        notes.append("Nothing is stored for the week before: no Δ.")
    notes.append(
        f"Money in {currency}, rounded half up to the cent from exact sums; Δ of CTR and CVR in percentage "
        f"points, of ROI in its units, of money and AOV in %. Days are local days in {zone.key}."
    )
    return tuple(notes)


def week_start(text: str | None, today: date) -> date:
    """The Monday of ``--week``: ``2026-W47``, any date in the week, or (None) the week holding yesterday."""
    if text is None:
        return monday_of(today - timedelta(days=1))
    try:
        if "W" in text.upper():
            year, _, week = text.upper().partition("-W")
            return date.fromisocalendar(int(year), int(week), 1)
        return monday_of(date.fromisoformat(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a week: use 2026-W47 or a date in the week (2026-11-20)") from None
