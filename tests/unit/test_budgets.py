"""alerts.budgets: spendable amounts, periods in the zone, the 80 % / 100 % / pacing findings, the book."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.budgets import (
    PERIODS,
    Approval,
    Budget,
    BudgetBook,
    Period,
    approval_field,
    budget_judged,
    evaluate_budget,
    period_bounds,
    record_key,
    topic_key,
    used_ratio,
)
from alerts.lifecycle import AlertBook, Policy
from alerts.model import Finding
from streams.events import BudgetSetting
from streams.keys import Keys
from streams.windows import Calendar

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    zone: ZoneInfo = SHANGHAI,
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=zone).timestamp()


NOW = at(2026, 11, 24, 14, 0)
APPROVED = Approval(by="@zhang.wei", at="2026-11-24T13:05:00+08:00", note="11.11 push")
DAY = Budget("douyin", None, "day", 10_000, owner="@owner")
RESERVED = Budget("douyin", None, "day", 12_500, owner="@owner", reserve_pct=20)  # 10,000 spendable
CAMPAIGN = Budget("douyin", "spring-sale", "month", 10_000, owner="@li.na")


def evaluate(
    budget: Budget, spent: float, rate_per_h: float = 0.0, approval: Approval | None = None, now: float = NOW
) -> list[Finding]:
    return evaluate_budget(budget, spent, now, rate_per_h / 3600, approval, zone=SHANGHAI)


def lines(findings: list[Finding]) -> set[tuple[str, str, str]]:
    return {(f.metric, f.severity, f.extra_key[-1]) for f in findings}


@dataclass(frozen=True)
class Case:
    name: str
    budget: Budget
    spent: float
    firing: set[tuple[str, str, str]]
    approval: Approval | None = None


CASES = [
    Case("nothing spent", DAY, 0, set()),
    Case("below 80 %", DAY, 7_999.99, set()),
    Case("at 80 %: warning", DAY, 8_000, {("spend", "warning", "80")}),
    Case("approved: the 80 % line is acknowledged", DAY, 8_500, set(), APPROVED),
    Case(
        "at 100 %: critical, and the 80 % line still holds",
        DAY,
        10_000,
        {("spend", "warning", "80"), ("spend", "critical", "100")},
    ),
    Case(
        "approved past 100 %: critical still fires",
        DAY,
        12_000,
        {("spend", "critical", "100")},
        APPROVED,
    ),
    Case("reserve: 80 % of the spendable part", RESERVED, 8_000, {("spend", "warning", "80")}),
    Case("reserve: not yet 80 % of spendable", RESERVED, 7_999, set()),
    Case(
        "reserve: 100 % of spendable while the reserve is left",
        RESERVED,
        10_000,
        {("spend", "warning", "80"), ("spend", "critical", "100")},
    ),
    Case("campaign budget", CAMPAIGN, 9_000, {("spend", "warning", "80")}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_budget_lines(case: Case) -> None:
    findings = evaluate(case.budget, case.spent, approval=case.approval)
    assert lines(findings) == case.firing
    for finding in findings:
        assert finding.kind == "budget" and finding.channel == case.budget.channel
        assert finding.campaign == case.budget.campaign and finding.value == case.spent
        assert finding.summary and finding.description and finding.window == case.budget.period
        assert finding.extra_key[:2] == (
            case.budget.period,
            "2026-11-24" if case.budget.period == "day" else "2026-11-01",
        )
    assert len({f.fingerprint for f in findings}) == len(findings)


def test_warning_says_who_approves_and_how() -> None:
    (warning,) = evaluate(DAY, 8_100)
    assert warning.summary == (
        "douyin has spent 81 % of its daily budget (8,100 / 10,000 CNY); "
        "continuing needs approval from @owner: `adpulse budget approve douyin --period day`"
    )
    assert warning.threshold == 8_000 and warning.fingerprint == "budget:spend:douyin:-:day:2026-11-24:80"
    assert (
        warning.window_start == "2026-11-24T00:00:00+08:00"
        and warning.window_end == "2026-11-25T00:00:00+08:00"
    )
    assert warning.evidence["owner"] == "@owner" and warning.evidence["used_ratio"] == pytest.approx(0.81)


def test_campaign_warning_names_the_campaign_in_the_command() -> None:
    (warning,) = evaluate(Budget("douyin", "spring sale", "total", 1_000), 900)
    assert "douyin/spring sale has spent 90 % of its total budget" in warning.summary
    assert "`adpulse budget approve douyin --campaign 'spring sale' --period total`" in warning.summary
    assert "no owner" in warning.description
    assert warning.fingerprint == "budget:spend:douyin:spring sale:total:1970-01-01:80"


def test_approval_silences_the_80_line_and_the_critical_names_it() -> None:
    assert evaluate(DAY, 8_500, approval=APPROVED) == []
    (critical,) = evaluate(DAY, 10_500, approval=APPROVED)
    assert critical.severity == "critical"
    assert "Approved by @zhang.wei at 2026-11-24T13:05:00+08:00 (11.11 push)." in critical.description
    assert critical.evidence["approved_by"] == "@zhang.wei"


def test_percentages_never_round_up_to_a_line() -> None:
    (critical_free,) = evaluate(DAY, 9_999.9)
    assert "99 %" in critical_free.summary
    # Float arithmetic on the spendable part still meets the line exactly.
    # 2.4 / 3.0 is 0.7999999999999999 in floating point.
    (warning,) = evaluate(Budget("douyin", None, "day", 3.0), 2.4)
    assert warning.severity == "warning" and "80 %" in warning.summary


def test_critical_says_what_is_left_of_the_reserve() -> None:
    critical = next(f for f in evaluate(RESERVED, 11_000) if f.severity == "critical")
    assert "1,500 of its 2,500 CNY are left" in critical.description
    critical = next(f for f in evaluate(RESERVED, 13_000) if f.severity == "critical")
    assert "reserve is used up too" in critical.description


# ------------------------------------------------------------------------------------------------ pacing


def pacing(findings: list[Finding]) -> Finding | None:
    return next((f for f in findings if f.metric == "spend_pacing"), None)


def test_pacing_projects_the_run_out_time_in_the_zone() -> None:
    # 14:00, 5,000 of 10,000 spent, 2,000 CNY/h: gone at 16:30, 7.5 h before midnight.
    finding = pacing(evaluate(DAY, 5_000, rate_per_h=2_000))
    assert finding is not None and finding.severity == "warning"
    assert finding.evidence["projected_run_out_at"] == "2026-11-24T16:30:00+08:00"
    assert (
        "2026-11-24T16:30:00+08:00" in finding.summary and "7 h 30 min before the day ends" in finding.summary
    )
    # By midnight, at that rate: 5,000 + 10 h × 2,000 = 25,000, 250 % of spendable.
    assert finding.value == pytest.approx(2.5) and finding.threshold == 1.0
    assert finding.fingerprint == "budget:spend_pacing:douyin:-:day:2026-11-24"


@pytest.mark.parametrize(
    ("name", "budget", "spent", "rate_per_h"),
    [
        ("lasts exactly to midnight", DAY, 5_000, 500),
        ("lasts beyond the period", DAY, 5_000, 100),
        ("no spend now", DAY, 5_000, 0),
        ("already spent: the critical says it", DAY, 10_000, 5_000),
        ("total budgets never end", Budget("douyin", None, "total", 10_000), 5_000, 10_000),
    ],
)
def test_no_pacing_warning(name: str, budget: Budget, spent: float, rate_per_h: float) -> None:
    assert pacing(evaluate(budget, spent, rate_per_h=rate_per_h)) is None


def test_pacing_uses_the_spendable_part() -> None:
    # 4,000 spendable left at 14:00: at 400 CNY/h that lasts to midnight exactly; the reserve does not count.
    assert pacing(evaluate(RESERVED, 6_000, rate_per_h=400)) is None
    assert pacing(evaluate(RESERVED, 6_000, rate_per_h=401)) is not None


def test_pacing_on_a_monthly_budget() -> None:
    # 24 Nov 14:00: 6 days 10 h left of November; 1,000 left at 10 CNY/h lasts 100 h.
    finding = pacing(evaluate(CAMPAIGN, 9_000, rate_per_h=10))
    assert finding is not None and finding.evidence["projected_run_out_at"] == "2026-11-28T18:00:00+08:00"
    assert "before the month ends" in finding.summary


# ----------------------------------------------------------------------------------- periods and resolving


def test_a_new_period_starts_clean() -> None:
    yesterday = evaluate(DAY, 9_000, now=at(2026, 11, 24, 23, 59))
    assert lines(yesterday) == {("spend", "warning", "80")}
    assert evaluate(DAY, 0, now=at(2026, 11, 25, 0, 0)) == []
    # Even when the new day's spend crosses again, it is a new condition (a new fingerprint).
    today = evaluate(DAY, 9_000, now=at(2026, 11, 25, 20, 0))
    assert {f.fingerprint for f in today}.isdisjoint({f.fingerprint for f in yesterday})


def test_a_raised_budget_resolves_the_lines() -> None:
    assert lines(evaluate(DAY, 10_500)) == {("spend", "warning", "80"), ("spend", "critical", "100")}
    raised = Budget("douyin", None, "day", 12_000, owner="@owner")
    assert lines(evaluate(raised, 10_500)) == {("spend", "warning", "80")}
    assert evaluate(Budget("douyin", None, "day", 20_000), 10_500) == []


def test_channel_and_campaign_budgets_are_separate_conditions() -> None:
    channel = evaluate(Budget("douyin", None, "month", 10_000), 9_000)
    campaign = evaluate(CAMPAIGN, 9_000)
    assert channel[0].campaign is None and campaign[0].campaign == "spring-sale"
    assert channel[0].fingerprint != campaign[0].fingerprint
    assert "--campaign spring-sale" in campaign[0].summary and "@li.na" in campaign[0].summary


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        # Shanghai is UTC+8: 31 Jan 16:30 UTC is already 1 Feb.
        (datetime(2026, 1, 31, 16, 30, tzinfo=UTC).timestamp(), at(2026, 2, 1), at(2026, 3, 1)),
        (datetime(2026, 1, 31, 15, 59, tzinfo=UTC).timestamp(), at(2026, 1, 1), at(2026, 2, 1)),
        (at(2026, 2, 28, 23, 59, 59), at(2026, 2, 1), at(2026, 3, 1)),
        (at(2028, 2, 29, 12), at(2028, 2, 1), at(2028, 3, 1)),
        (at(2026, 12, 31, 23, 59, 59), at(2026, 12, 1), at(2027, 1, 1)),
        (at(2027, 1, 1), at(2027, 1, 1), at(2027, 2, 1)),
    ],
)
def test_month_boundaries_in_shanghai(now: float, start: float, end: float) -> None:
    assert period_bounds("month", now, SHANGHAI) == (start, end)


def test_day_and_total_bounds() -> None:
    assert period_bounds("day", at(2026, 11, 24, 0, 0), SHANGHAI) == (at(2026, 11, 24), at(2026, 11, 25))
    assert period_bounds("day", at(2026, 11, 23, 23, 59, 59), SHANGHAI) == (
        at(2026, 11, 23),
        at(2026, 11, 24),
    )
    assert period_bounds("total", NOW, SHANGHAI) == (0, None)


def test_month_boundary_resets_a_monthly_budget() -> None:
    end_of_november = at(2026, 11, 30, 23, 0)
    assert lines(evaluate(CAMPAIGN, 9_500, now=end_of_november)) == {("spend", "warning", "80")}
    december = evaluate(CAMPAIGN, 9_500, now=at(2026, 12, 1, 0, 0))
    assert december[0].extra_key[:2] == ("month", "2026-12-01")
    assert december[0].window_start == "2026-12-01T00:00:00+08:00"


ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "America/Santiago", "Asia/Kathmandu"]


@given(st.sampled_from(ZONES), st.integers(min_value=946_684_800, max_value=4_102_444_800))
def test_days_are_the_1d_windows_and_months_hold_now(zone_name: str, now_s: int) -> None:
    zone = ZoneInfo(zone_name)
    calendar = Calendar(zone)
    day_start = calendar.start("1d", now_s)
    assert period_bounds("day", now_s, zone) == (day_start, calendar.end("1d", day_start))
    start, end = period_bounds("month", now_s, zone)
    assert end is not None and start <= now_s < end
    first = datetime.fromtimestamp(start, zone)
    assert first.day == 1 and first.month == datetime.fromtimestamp(now_s, zone).month
    assert period_bounds("month", end, zone)[0] == end


# ------------------------------------------------------------------------------------------ small pieces


def test_spendable_and_used_ratio() -> None:
    assert RESERVED.spendable == 10_000 and RESERVED.reserve == 2_500
    assert used_ratio(8_000, RESERVED) == pytest.approx(0.8)
    assert used_ratio(0, DAY) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"amount": 0}, {"amount": -1}, {"amount": float("nan")}, {"reserve_pct": 51}, {"period": "week"}],
)
def test_invalid_budgets_are_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "channel": "douyin",
        "campaign": None,
        "period": "day",
        "amount": 100.0,
        **kwargs,
    }
    with pytest.raises(ValueError):
        Budget(**fields)  # type: ignore[arg-type]


def test_approval_field_and_json() -> None:
    assert Keys("adpulse").approvals == "adpulse:budgets:approvals"
    assert approval_field("douyin", None, "day", int(at(2026, 11, 24)), SHANGHAI) == "douyin|-|day|2026-11-24"
    assert (
        approval_field("douyin", "s1", "month", int(at(2026, 11, 1)), SHANGHAI)
        == "douyin|s1|month|2026-11-01"
    )
    assert Approval.from_json(APPROVED.to_json()) == APPROVED
    assert Approval.from_json(b'{"by": "a", "at": "t", "extra": 1}') == Approval("a", "t", None)
    for bad in (b"nope", b"[]", b'{"by": "a"}'):
        with pytest.raises(ValueError):
            Approval.from_json(bad)


def test_topic_key() -> None:
    assert topic_key("douyin", None) == "douyin" and topic_key("douyin", "s1") == "douyin/s1"
    assert record_key("douyin", None, "day") == "douyin#day"
    assert record_key("douyin", "s1", "total") == "douyin/s1#total"


# ------------------------------------------------------------------------------------------------ the book


def setting(**kw: object) -> BudgetSetting:
    return BudgetSetting.model_validate({"channel": "douyin", "period": "day", "amount": 100, **kw})


def test_book_last_value_wins_and_null_deletes() -> None:
    book = BudgetBook()
    book.apply(setting(amount=100))
    book.apply(setting(amount=250, owner="@owner"))
    book.apply(setting(campaign="s1", period="total", amount=50))
    book.apply(setting(channel="taobao", period="month", amount=900))
    budget = book.get("douyin", None, "day")
    assert budget is not None and budget.amount == 250 and budget.owner == "@owner"
    assert [b.key for b in book] == [
        ("douyin", None, "day"),
        ("douyin", "s1", "total"),
        ("taobao", None, "month"),
    ]

    assert book.apply(setting(amount=None)) is None
    assert book.get("douyin", None, "day") is None and len(book) == 2
    # Deleting what is not there is harmless; the campaign budget is untouched.
    book.apply(setting(amount=None))
    assert ("douyin", "s1", "total") in book


def test_book_tombstone_removes_the_key() -> None:
    book = BudgetBook()
    book.apply(setting(campaign="s1", period="total"))
    book.apply(setting())
    book.apply(setting(period="month", amount=3000))
    removed = book.remove_key("douyin/s1#total")
    assert [b.key for b in removed] == [("douyin", "s1", "total")]
    assert [b.key for b in book] == [("douyin", None, "day"), ("douyin", None, "month")]
    assert book.under_key("douyin", None) == [
        book.get("douyin", None, "day"),
        book.get("douyin", None, "month"),
    ]
    assert book.remove_key("douyin/s1#total") == [] and book.remove_key("nobody#day") == []


def test_book_reads_keys_without_the_period() -> None:
    """Records keyed ``channel`` (before periods had keys) still count; the newer record of a budget wins."""
    book = BudgetBook()
    book.apply(setting(amount=100), key="douyin")
    assert book.get("douyin", None, "day") == Budget("douyin", None, "day", 100.0)
    book.apply(setting(amount=200))  # douyin#day
    assert book.get("douyin", None, "day").amount == 200  # type: ignore[union-attr]
    # A key's newer record replaces what its older one said, as compaction will: one budget per old key.
    book.apply(setting(period="month", amount=900), key="douyin")
    assert book.get("douyin", None, "month").amount == 900  # type: ignore[union-attr]
    assert book.get("douyin", None, "day").amount == 200  # type: ignore[union-attr]
    book.remove_key("douyin#day")
    assert book.get("douyin", None, "day") is None and len(book) == 1
    # Deleting under the new key hides the same budget's record under the old one.
    book.apply(setting(period="month", amount=None))
    assert len(book) == 0


_CHANNELS = st.sampled_from(["douyin", "taobao"])
_RECORDS = st.lists(
    st.tuples(
        _CHANNELS,
        st.sampled_from([None, "s1"]),
        st.sampled_from(PERIODS),
        st.one_of(st.none(), st.integers(1, 5).map(float)),
        st.sampled_from(["period", "old", "tombstone"]),
    ),
    max_size=40,
)


@given(_RECORDS, st.booleans())
def test_book_is_the_same_after_compaction(
    records: list[tuple[str, str | None, Period, float | None, str]], tombstones_gone: bool
) -> None:
    """Compaction keeps each key's last record (and, for a while, its tombstone): the book must not change."""
    log: list[tuple[str, BudgetSetting | None]] = []
    for channel, campaign, period, amount, keyed in records:
        value = setting(channel=channel, campaign=campaign, period=period, amount=amount)
        if keyed == "tombstone":
            log.append((record_key(channel, campaign, period), None))
        else:
            key = record_key(channel, campaign, period) if keyed == "period" else topic_key(channel, campaign)
            log.append((key, value))
    last = {key: i for i, (key, _) in enumerate(log)}
    compacted = [
        entry
        for i, entry in enumerate(log)
        if last[entry[0]] == i and not (tombstones_gone and entry[1] is None)
    ]

    def read(entries: list[tuple[str, BudgetSetting | None]]) -> list[Budget]:
        book = BudgetBook()
        for key, value in entries:
            if value is None:
                book.remove_key(key)
            else:
                book.apply(value, key)
        return list(book)

    assert read(compacted) == read(log)


def test_book_applies_topic_records_and_says_why_it_skips_one() -> None:
    """The one reader of budgets-topic records, shared by the workers' feed and ``adpulse budget``."""
    book = BudgetBook()
    assert book.apply_record(b"douyin", b'{"channel": "douyin", "period": "day", "amount": 10}') is None
    assert (
        book.apply_record(
            b"douyin/s1", b'{"channel": "douyin", "campaign": "s1", "period": "total", "amount": 5}'
        )
        is None
    )
    assert [b.key for b in book] == [("douyin", None, "day"), ("douyin", "s1", "total")]
    assert (book.apply_record(b"douyin", b"not json") or "").startswith("record: Invalid JSON")
    assert book.apply_record(b"douyin", b'{"channel": "douyin", "period": "week", "amount": 1}') == (
        "period: Input should be 'day', 'month' or 'total'"
    )
    assert book.apply_record(None, None) == "a tombstone without a key"
    assert book.apply_record(b"douyin/s1", None) is None  # a tombstone: every budget under the key goes
    assert [b.key for b in book] == [("douyin", None, "day")]


def test_the_workers_feed_counts_and_skips_what_the_book_refuses() -> None:
    from agents.budget_feed import BudgetFeed

    feed = BudgetFeed({}, "adpulse.budgets", BudgetBook())
    feed.apply(b"douyin", b'{"channel": "douyin", "period": "day", "amount": 10}')
    feed.apply(b"douyin", b"not json")
    feed.apply(None, None)
    assert feed.invalid == 2 and [b.key for b in feed.book] == [("douyin", None, "day")]


# --------------------------------------------------------------------------------- with the alert lifecycle


def test_judged_covers_every_finding_of_the_period() -> None:
    judged = budget_judged(DAY, 10_500, NOW, 2_000 / 3600, zone=SHANGHAI)
    findings = evaluate(DAY, 10_500, rate_per_h=2_000) + evaluate(DAY, 5_000, rate_per_h=2_000)
    assert {f.fingerprint for f in findings} <= set(judged)
    assert len(judged) == 3 and judged[findings[0].fingerprint] == 10_500
    tomorrow = budget_judged(DAY, 0, NOW + 86_400, 0, zone=SHANGHAI)
    assert set(tomorrow).isdisjoint(judged)
    assert None in budget_judged(Budget("douyin", None, "total", 1_000), 0, NOW, 0, zone=SHANGHAI).values()


def run_round(
    book: AlertBook, budget: Budget, spent: float, now: float, approval: Approval | None = None
) -> list[str]:
    """One worker round as the worker should run it: judge the current period, and OK stale budget alerts."""
    findings = evaluate(budget, spent, approval=approval, now=now)
    judged = budget_judged(budget, spent, now, 0.0, zone=SHANGHAI)
    stale = {f.fingerprint: None for f in book.firing() if f.kind == "budget" and f.fingerprint not in judged}
    alerts = book.evaluate(findings, {**judged, **stale}, datetime.fromtimestamp(now, UTC))
    return [f"{a.change} {a.severity} {a.finding.extra_key[-1]}" for a in alerts]


def test_one_warning_per_period_through_the_lifecycle() -> None:
    book = AlertBook(Policy(resolve_after=2, repeat_interval_s=4 * 3600))
    minute = 60.0
    assert run_round(book, DAY, 7_000, NOW) == []
    assert run_round(book, DAY, 8_100, NOW + minute) == ["fired warning 80"]
    assert run_round(book, DAY, 8_200, NOW + 2 * minute) == []
    # Approved: the warning resolves (after the lifecycle's hysteresis) and stays quiet all day.
    assert run_round(book, DAY, 8_300, NOW + 3 * minute, APPROVED) == []
    assert run_round(book, DAY, 8_400, NOW + 4 * minute, APPROVED) == ["resolved warning 80"]
    assert run_round(book, DAY, 9_000, NOW + 5 * 3600, APPROVED) == []
    # 100 % still fires, once.
    assert run_round(book, DAY, 10_000, NOW + 6 * 3600, APPROVED) == ["fired critical 100"]
    assert run_round(book, DAY, 10_100, NOW + 6 * 3600 + minute, APPROVED) == []
    # A new day: yesterday's critical resolves; the new day has no approval and no spend yet.
    midnight = at(2026, 11, 25, 0, 0)
    assert run_round(book, DAY, 0, midnight) == []
    assert run_round(book, DAY, 0, midnight + minute) == ["resolved critical 100"]
    assert book.firing() == []
