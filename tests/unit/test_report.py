"""The reports' pure core: money to the cent, "no data" ratios, the daily sheet, alert notes, the weekly
review, its recommendations, and the formats (CSV, JSON, HTML, xlsx, PNG)."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.budgets import Approval, Budget
from alerts.report import render
from alerts.report.charts import daily_charts, weekly_charts
from alerts.report.daily import COLUMNS, DayData, build_daily, day_bounds
from alerts.report.episodes import episodes, note
from alerts.report.model import Counts, Targets, money_text, signed, to_money
from alerts.report.weekly import budget_use, build_weekly, covered_days, week_start
from alerts.report.xlsx import daily_xlsx, weekly_xlsx

SH = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 24)


def counts(
    impressions: int = 10_000,
    clicks: int = 250,
    visits: int = 200,
    carts: int = 50,
    orders: int = 12,
    new: int = 4,
    gmv: str = "3600.10",
    spend: str = "1200.05",
) -> Counts:
    return Counts(
        impressions,
        clicks,
        visits,
        carts,
        orders,
        new,
        int(Decimal(gmv) * 1_000_000),
        int(Decimal(spend) * 1_000_000),
    )


def alert(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "x",
        "fingerprint": "anomaly:ctr:douyin:-",
        "status": "firing",
        "change": "fired",
        "kind": "anomaly",
        "severity": "warning",
        "metric": "ctr",
        "channel": "douyin",
        "campaign": None,
        "window": "10m",
        "window_start": "2026-11-24T14:10:00+08:00",
        "window_end": "2026-11-24T14:20:00+08:00",
        "value": 0.013,
        "baseline": 0.028,
        "threshold": None,
        "change_pct": -52.4,
        "fired_at": "2026-11-24T06:21:00+00:00",
        "resolved_at": None,
        "evidence": {},
        "summary": "CTR fell",
    }
    return {**base, **fields}


CTR_DROP = [
    alert(),
    alert(change="repeat", window_start="2026-11-24T14:40:00+08:00", window_end="2026-11-24T14:50:00+08:00"),
    alert(
        status="resolved",
        change="resolved",
        window_start="2026-11-24T14:50:00+08:00",
        window_end="2026-11-24T15:00:00+08:00",
        resolved_at="2026-11-24T07:20:00+00:00",
    ),
]
BUDGET_WARNING = alert(
    fingerprint="budget:spend:wechat:-:day:2026-11-24:80",
    kind="budget",
    metric="spend",
    channel="wechat",
    window="day",
    window_start="2026-11-24T00:00:00+08:00",
    window_end="2026-11-25T00:00:00+08:00",
    value=820.0,
    threshold=800.0,
    change_pct=None,
    fired_at="2026-11-24T08:42:10+00:00",
    evidence={"spendable": 1000.0, "period": "day", "owner": "@li.na"},
)


# -- money and ratios ----------------------------------------------------------------------------------------


# Up to a billion currency units per channel and window: the KPI rows carry money as JSON floats.
@given(st.integers(min_value=0, max_value=10**15))
def test_a_kpi_rows_money_comes_back_to_the_exact_micro_unit(micros: int) -> None:
    row = {"gmv": micros / 1_000_000, "spend": micros / 1_000_000, "orders": 3}
    back = Counts.from_row(row)
    assert back.gmv_micros == back.spend_micros == micros


def test_money_is_rounded_half_up_to_the_cent() -> None:
    assert to_money(1_005_000) == Decimal("1.01")  # a float would round 1.005 down
    assert to_money(2_004_999) == Decimal("2.00")
    assert money_text(1_234_567_890_000) == "1,234,567.89"
    assert signed(-52.4, 0, " %") == "\u221252 %" and signed(0.001, 2) == "±0.00" and signed(1.5, 1) == "+1.5"


def test_ratios_without_a_divisor_are_no_data() -> None:
    idle = Counts()
    assert idle.roi is None and idle.aov is None and idle.ctr is None and idle.cvr is None
    organic = counts(spend="0")
    assert organic.roi is None and organic.aov == pytest.approx(300.00833333)
    assert (
        render.sheet_cells(build_daily(DayData(DAY, {"seo": organic}), [], SH, "CNY").rows[0])[8] == "no data"
    )


# -- the daily sheet -----------------------------------------------------------------------------------------


def test_the_total_is_the_exact_sum_and_its_roi_is_blended() -> None:
    data = DayData(
        DAY,
        {
            "douyin": counts(gmv="0.10", spend="0.20", orders=1),
            "taobao": counts(gmv="0.20", spend="0.10", orders=2),
            "seo": counts(gmv="100.00", spend="0", orders=1),
        },
    )
    sheet = build_daily(data, [], SH, "CNY")
    assert [r.channel for r in sheet.rows] == ["seo", "taobao", "douyin"]  # by GMV
    total = sheet.total.counts
    assert total.gmv_micros == 100_300_000 and total.spend == Decimal("0.30")  # 0.1 + 0.2, exactly
    assert total.roi == 100.3 / 0.3 and total.orders == 4
    assert render.daily_json(sheet)["total"]["gmv"] == 100.3


def test_a_channel_without_visit_events_shows_its_clicks_with_a_footnote() -> None:
    sheet = build_daily(DayData(DAY, {"baidu": counts(visits=0, clicks=321), "jd": counts()}), [], SH, "CNY")
    baidu = next(r for r in sheet.rows if r.channel == "baidu")
    assert baidu.visits == 321 and baidu.visits_are_clicks
    assert render.sheet_cells(baidu)[2] == "321¹"
    assert sheet.total.visits == 321 + 200 and sheet.total.visits_are_clicks
    assert (
        "¹ Visits: no landing-page visit events came from baidu, so its clicks are shown"
        in sheet.footnotes[0]
    )
    assert render.daily_json(sheet)["rows"][0]["visits_from"] in ("clicks", "visits")


def test_an_empty_day_says_so_and_is_no_error() -> None:
    sheet = build_daily(DayData(DAY, {}), [], SH, "CNY")
    assert sheet.empty and sheet.footnotes[0].startswith("No data is stored for 2026-11-24")
    assert render.daily_json(sheet)["rows"] == [] and render.daily_json(sheet)["total"] is None
    assert render.daily_csv(sheet).splitlines()[0].split(",")[0] == "date"
    assert daily_charts(sheet) == {}


def test_a_day_not_over_is_marked_with_the_time_its_figures_run_to() -> None:
    as_of = datetime(2026, 11, 24, 7, 5, tzinfo=UTC)
    sheet = build_daily(DayData(DAY, {"jd": counts()}, complete=False, as_of=as_of), [], SH, "CNY")
    assert any("not over" in n and "as of 15:05" in n for n in sheet.footnotes)
    assert render.daily_json(sheet)["complete"] is False


def test_every_format_has_exactly_the_sheets_columns() -> None:
    sheet = build_daily(DayData(DAY, {"jd": counts()}), episodes(CTR_DROP), SH, "CNY")
    assert len(render.sheet_cells(sheet.rows[0])) == len(COLUMNS) == 10
    header = render.daily_csv(sheet).splitlines()[0]
    assert (
        header
        == "date,channel,visits,new users,orders,GMV (CNY),AOV (CNY),channel cost (CNY),ROI,anomaly note"
    )
    assert set(render.daily_json(sheet)["rows"][0]) >= {
        "date",
        "channel",
        "visits",
        "new_users",
        "orders",
        "gmv",
        "aov",
        "channel_cost",
        "roi",
        "anomaly_note",
    }


def test_a_channel_with_alerts_but_no_counts_still_gets_its_row() -> None:
    sheet = build_daily(DayData(DAY, {"jd": counts()}), episodes(CTR_DROP), SH, "CNY")
    douyin = next(r for r in sheet.rows if r.channel == "douyin")
    assert douyin.counts.empty and douyin.note == "CTR \u221252 % 14:10–15:00, resolved 15:20"
    assert sheet.total.note == "1 alert(s)"


# -- alert episodes and notes --------------------------------------------------------------------------------


def test_the_entries_of_one_episode_make_one_note() -> None:
    [episode] = episodes(CTR_DROP)
    assert episode.start == datetime(2026, 11, 24, 14, 10, tzinfo=SH)
    assert episode.end == datetime(2026, 11, 24, 15, 0, tzinfo=SH)
    assert episode.resolve_s == 59 * 60
    assert note(episode, SH, DAY) == "CTR \u221252 % 14:10–15:00, resolved 15:20"


def test_a_new_episode_of_the_same_fingerprint_is_a_second_note() -> None:
    again = alert(
        fired_at="2026-11-24T10:00:00+00:00",
        window_start="2026-11-24T17:50:00+08:00",
        window_end="2026-11-24T18:00:00+08:00",
        change_pct=-61.0,
    )
    sheet = build_daily(DayData(DAY, {}), episodes([*CTR_DROP, again]), SH, "CNY")
    assert sheet.rows[0].notes == (
        "CTR \u221252 % 14:10–15:00, resolved 15:20",
        "CTR \u221261 % 17:50–18:00, still firing",
    )


def test_alerts_belong_to_the_day_of_their_windows_not_of_the_judging() -> None:
    # A backfill of Tuesday judged on Thursday: the note goes to Tuesday's sheet only.
    late = [alert(fired_at="2026-11-26T02:00:00+00:00")]
    tuesday = build_daily(DayData(DAY, {}), episodes(late), SH, "CNY")
    thursday = build_daily(DayData(date(2026, 11, 26), {}), episodes(late), SH, "CNY")
    assert len(tuesday.episodes) == 1 and thursday.episodes == ()
    assert tuesday.rows[0].note == "CTR \u221252 % 14:10–14:20, still firing"
    # An episode running over midnight is on both days; the other day's times carry their date.
    overnight = episodes(
        [
            alert(window_start="2026-11-24T23:50:00+08:00", window_end="2026-11-25T00:00:00+08:00"),
            alert(
                status="resolved",
                window_start="2026-11-25T00:10:00+08:00",
                window_end="2026-11-25T00:20:00+08:00",
                resolved_at="2026-11-24T16:25:00+00:00",
            ),
        ]
    )
    assert build_daily(DayData(DAY, {}), overnight, SH, "CNY").rows[0].note == (
        "CTR \u221252 % 23:50–11-25 00:20, resolved 11-25 00:25"
    )
    assert len(build_daily(DayData(date(2026, 11, 25), {}), overnight, SH, "CNY").episodes) == 1
    assert build_daily(DayData(date(2026, 11, 23), {}), overnight, SH, "CNY").episodes == ()


def test_a_budget_note_names_the_approval_of_its_period() -> None:
    [warning] = episodes([BUDGET_WARNING])
    approvals = {"wechat|-|day|2026-11-24": Approval(by="@li.na", at="2026-11-24T16:50:00+08:00")}
    assert note(warning, SH, DAY, approvals) == "budget 80 % at 16:42, approved by @li.na at 16:50"
    assert note(warning, SH, DAY, {}) == "budget 80 % at 16:42, not approved, still firing"
    other_day = {"wechat|-|day|2026-11-23": Approval(by="@li.na", at="2026-11-23T16:50:00+08:00")}
    assert "approved by" not in note(warning, SH, DAY, other_day)
    critical = alert(
        **{
            **BUDGET_WARNING,
            "fingerprint": "budget:spend:wechat:-:day:2026-11-24:100",
            "severity": "critical",
            "threshold": 1000.0,
            "fired_at": "2026-11-24T10:05:00+00:00",
            "evidence": {
                **BUDGET_WARNING["evidence"],
                "approved_by": "@li.na",
                "approved_at": "2026-11-24T16:50:00+08:00",
            },
        }
    )
    assert note(episodes([critical])[0], SH, DAY) == "budget 100 % at 18:05, approved by @li.na at 16:50"


def test_budget_alerts_belong_to_their_period_day() -> None:
    sheet = build_daily(DayData(date(2026, 11, 25), {}), episodes([BUDGET_WARNING]), SH, "CNY")
    assert sheet.episodes == ()
    monthly = alert(
        **{
            **BUDGET_WARNING,
            "fingerprint": "budget:spend:wechat:-:month:2026-11-01:80",
            "window": "month",
            "window_start": "2026-11-01T00:00:00+08:00",
            "window_end": "2026-12-01T00:00:00+08:00",
        }
    )
    assert len(build_daily(DayData(DAY, {}), episodes([monthly]), SH, "CNY").episodes) == 1  # fired that day
    assert build_daily(DayData(date(2026, 11, 1), {}), episodes([monthly]), SH, "CNY").episodes == ()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {
                "kind": "threshold",
                "metric": "roi",
                "value": 0.84,
                "threshold": 1.0,
                "change_pct": None,
                "window": "1h",
                "window_start": "2026-11-24T13:00:00+08:00",
                "window_end": "2026-11-24T14:00:00+08:00",
            },
            "ROI 0.84 below 1.00 13:00–14:00, still firing",
        ),
        (
            {
                "kind": "threshold",
                "metric": "ctr",
                "value": 0.0161,
                "threshold": 0.02,
                "change_pct": None,
                "campaign": "spring-sale",
            },
            "spring-sale: CTR 1.61 % below 2.00 % 14:10–14:20, still firing",
        ),
        ({"kind": "data_health", "metric": "events"}, "no tracker events 14:10–14:20, still firing"),
        (
            {
                "kind": "budget",
                "metric": "spend_pacing",
                "value": 1.3,
                "window": "day",
                "window_start": "2026-11-24T00:00:00+08:00",
                "window_end": "2026-11-25T00:00:00+08:00",
            },
            "budget pacing: projected 130 % by period end, at 14:21, still firing",
        ),
    ],
)
def test_notes_by_kind(fields: dict[str, Any], expected: str) -> None:
    [episode] = episodes([alert(**fields)])
    assert note(episode, SH, DAY) == expected


def test_malformed_stream_entries_are_skipped() -> None:
    junk: list[object] = [None, 3, {"fingerprint": 1}, {"fingerprint": "x", "fired_at": "yesterday"}, alert()]
    assert len(episodes(junk)) == 1


# -- time zones ----------------------------------------------------------------------------------------------


def test_days_follow_the_zone_including_the_days_clocks_change() -> None:
    ny = ZoneInfo("America/New_York")
    lo, hi = day_bounds(date(2026, 3, 8), ny)
    assert hi.timestamp() - lo.timestamp() == 23 * 3600
    lo, hi = day_bounds(date(2026, 11, 1), ny)
    assert hi.timestamp() - lo.timestamp() == 25 * 3600
    kolkata = ZoneInfo("Asia/Kolkata")
    lo, _ = day_bounds(DAY, kolkata)
    assert lo.astimezone(UTC) == datetime(2026, 11, 23, 18, 30, tzinfo=UTC)
    # The same alert is on Nov 24 in Shanghai and on Nov 24 in Kolkata at 11:40-11:50 local.
    [episode] = episodes([alert()])
    assert note(episode, kolkata, DAY) == "CTR \u221252 % 11:40–11:50, still firing"


# -- the weekly review ---------------------------------------------------------------------------------------


def _week(days: int, **channels: Counts) -> dict[date, DayData]:
    monday = date(2026, 11, 23)
    return {monday + timedelta(days=i): DayData(monday + timedelta(days=i), channels) for i in range(days)}


def test_weeks_cover_their_days_that_are_over_and_compare_like_for_like() -> None:
    friday = date(2026, 11, 27)
    assert week_start(None, friday) == date(2026, 11, 23)
    assert week_start(None, date(2026, 11, 23)) == date(2026, 11, 16)  # Monday: last week
    assert week_start("2026-W48", friday) == week_start("2026-11-26", friday) == date(2026, 11, 23)
    with pytest.raises(ValueError, match="2026-W47"):
        week_start("week 47", friday)
    assert covered_days(date(2026, 11, 23), friday) == tuple(date(2026, 11, d) for d in (23, 24, 25, 26))
    assert covered_days(date(2026, 11, 23), date(2026, 11, 23)) == (date(2026, 11, 23),)
    assert len(covered_days(date(2026, 11, 16), friday)) == 7


def test_budget_use_and_pacing() -> None:
    daily = budget_use(Budget("a", None, "day", 1000.0), 3_200 * 10**6, 4, 0, 0, date(2026, 11, 26))
    assert daily.allowance_micros == 4000 * 10**6 and daily.used == 0.8 and daily.pace == 0.8
    assert daily.pace_text.startswith("behind pace")
    monthly = budget_use(
        Budget("a", None, "month", 30_000.0, reserve_pct=10), 0, 4, 18_000 * 10**6, 0, date(2026, 11, 15)
    )
    assert monthly.used == pytest.approx(18_000 / 27_000) and monthly.pace == pytest.approx((2 / 3) / 0.5)
    assert monthly.pace_text.startswith("ahead of pace")
    total = budget_use(Budget("a", None, "total", 100.0), 0, 4, 0, 50 * 10**6, date(2026, 11, 15))
    assert total.used == 0.5 and total.pace is None and total.pace_text == "—"


def test_recommendations_state_their_numbers() -> None:
    this = _week(
        4,
        baidu=counts(gmv="900.00", spend="1000.00"),
        taobao=counts(gmv="2400.00", spend="1000.00"),
        douyin=counts(gmv="1600.00", spend="1000.00", visits=100),
    )
    before = {
        d - timedelta(days=7): data
        for d, data in _week(
            4,
            baidu=counts(gmv="950.00", spend="1000.00"),
            douyin=counts(gmv="1600.00", spend="1000.00"),
            taobao=counts(gmv="2400.00", spend="1000.00"),
        ).items()
    }
    review = build_weekly(date(2026, 11, 23), this, before, [], SH, "CNY")
    pause, shift, funnel = review.recommendations
    assert pause == (
        "Pause baidu: ROI 0.90 < 1, 3,600.00 GMV on 4,000.00 CNY of cost; below 1 for two weeks running "
        "(the week before: 0.95)."
    )
    assert shift.startswith(
        "Shift budget toward taobao (ROI 2.40, the best this week): the 4,000.00 CNY spent on baidu returned "
        "3,600.00 GMV; at taobao's average ROI it would have returned about 9,600.00"
    )
    # douyin's visits per click fell from 200/250 to 100/250 in the same volume.
    assert funnel == (
        "Funnel: the largest loss is douyin's click → visit stage, 80.00 % → 40.00 % (\u221250.0 %) week on "
        "week: check the landing page (load time, broken or mistracked links)."
    )
    ch = {c.channel: c for c in review.channels}
    assert render.delta_text("roi", ch["baidu"].counts, ch["baidu"].previous) == "\u22120.05"
    assert render.delta_text("ctr", ch["baidu"].counts, ch["baidu"].previous) == "±0.00 pp"
    assert render.money_delta(ch["baidu"].counts.gmv_micros, ch["baidu"].previous.gmv_micros) == "\u22125.3 %"  # type: ignore[union-attr]


def test_without_a_week_before_the_funnel_compares_with_all_channels() -> None:
    review = build_weekly(
        date(2026, 11, 23),
        _week(2, a=counts(carts=50, orders=2), b=counts(carts=50, orders=20)),
        {},
        [],
        SH,
        "CNY",
    )
    assert review.recommendations[-1].startswith(
        "Funnel: a loses the most at cart → order, 4.00 % against 22.00 %"
    )
    assert "Nothing is stored for the week before: no Δ." in review.footnotes
    assert render.delta_text("roi", review.channels[0].counts, None) == "—"


def test_targets_are_marked_met_or_missed() -> None:
    review = build_weekly(date(2026, 11, 23), _week(1, a=counts()), {}, [], SH, "CNY", targets=Targets())
    cells = render.weekly_cells(review, review.channels[0])
    assert cells[4].startswith("2.50 % ✓") and cells[5].startswith("4.80 % ✗")  # CTR 250/10000, CVR 12/250
    assert cells[6].startswith("300.01 ✓") and cells[7].startswith("3.00 ✓")


def test_the_weeks_alerts_with_time_to_resolve() -> None:
    review = build_weekly(date(2026, 11, 23), _week(3, douyin=counts()), {}, episodes(CTR_DROP), SH, "CNY")
    assert review.alert_notes == (
        "Tue 11-24 douyin (warning): CTR \u221252 % 14:10–15:00, resolved 15:20 — resolved in 59 min",
    )


# -- formats -------------------------------------------------------------------------------------------------


def test_tracker_text_is_escaped_in_html() -> None:
    sheet = build_daily(DayData(DAY, {"<script>alert(1)</script>": counts()}), [], SH, "CNY")
    page = render.daily_html(sheet)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<link rel='icon' href='data:,'>" in page and "width=device-width" in page


def _xlsx_cells(data: bytes, sheet: int = 1) -> list[list[str]]:
    """The worksheet's cells as text (numbers as written), read back from the package's XML."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        shared = [
            "".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t"))
            for si in ElementTree.fromstring(book.read("xl/sharedStrings.xml")).findall("m:si", ns)
        ]
        root = ElementTree.fromstring(book.read(f"xl/worksheets/sheet{sheet}.xml"))
    rows = []
    for row in root.iter(f"{{{ns['m']}}}row"):
        cells = []
        for c in row.findall("m:c", ns):
            value = c.findtext("m:v", default="", namespaces=ns)
            cells.append(shared[int(value)] if c.get("t") == "s" else value)
        rows.append(cells)
    return rows


def test_xlsx_holds_numbers_a_spreadsheet_can_sum() -> None:
    sheet = build_daily(
        DayData(DAY, {"jd": counts(gmv="1234.56", spend="0"), "tb": counts(gmv="0.10", spend="0.05")}),
        [],
        SH,
        "CNY",
    )
    rows = _xlsx_cells(daily_xlsx(sheet))
    assert rows[0][:3] == ["date", "channel", "visits"] and rows[0][5] == "GMV (CNY)"
    assert rows[1][1] == "jd" and rows[1][5] == "1234.56" and rows[1][8] == "no data"
    assert rows[3][1] == "total" and rows[3][5] == "1234.66" and rows[3][7] == "0.05"
    review = build_weekly(date(2026, 11, 23), _week(2, jd=counts()), {}, [], SH, "CNY")
    assert _xlsx_cells(weekly_xlsx(review))[1][:2] == ["jd", str(float(to_money(2 * counts().gmv_micros)))]


def test_charts_are_pngs_and_the_html_embeds_them() -> None:
    hours = {"jd": [(datetime(2026, 11, 24, h, tzinfo=SH), counts()) for h in range(24)]}
    sheet = build_daily(
        DayData(DAY, {"jd": counts()}, hours=hours),
        episodes(CTR_DROP),
        SH,
        "CNY",
        budgets=[Budget("jd", None, "day", 20_000.0)],
    )
    charts = daily_charts(sheet)
    assert set(charts) == {"kpis", "spend"}
    for png, _caption in charts.values():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    page = render.daily_html(sheet, charts)
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 2
    review = build_weekly(
        date(2026, 11, 23),
        _week(3, jd=counts()),
        {},
        episodes(CTR_DROP),
        SH,
        "CNY",
        budgets=[Budget("jd", None, "day", 2000.0)],
    )
    assert set(weekly_charts(review)) == {"kpis", "spend"}
    assert orjson.loads(orjson.dumps(render.weekly_json(review)))["channels"][0]["budgets"][0][
        "used"
    ] == pytest.approx(3 * 1200.05 / 6000)


def test_a_small_fall_of_a_funnel_stage_is_called_stable() -> None:
    this = _week(2, a=counts(visits=196))
    before = {d - timedelta(days=7): data for d, data in _week(2, a=counts(visits=200)).items()}
    review = build_weekly(date(2026, 11, 23), this, before, [], SH, "CNY")
    assert review.recommendations[-1] == (
        "Funnel: stable week on week; the largest fall is a's click → visit stage, 80.00 % → 78.40 % "
        "(\u22122.0 %)."
    )


def test_campaign_alerts_are_counted_in_the_cell_and_listed_in_the_notes() -> None:
    spring = alert(fingerprint="anomaly:ctr:douyin:spring-sale", campaign="spring-sale")
    summer = alert(
        fingerprint="anomaly:ctr:douyin:summer", campaign="summer", fired_at="2026-11-24T06:30:00+00:00"
    )
    sheet = build_daily(DayData(DAY, {}), episodes([*CTR_DROP, spring, summer]), SH, "CNY")
    [row] = sheet.rows
    assert row.note == "CTR \u221252 % 14:10–15:00, resolved 15:20; +2 campaign alert(s)"
    assert row.notes[1:] == (
        "spring-sale: CTR \u221252 % 14:10–14:20, still firing",
        "summer: CTR \u221252 % 14:10–14:20, still firing",
    )
    review = build_weekly(date(2026, 11, 23), _week(2), {}, episodes([*CTR_DROP, spring, summer]), SH, "CNY")
    assert review.alert_notes[-1] == (
        "2 campaign-level alert(s), 2 still firing (`adpulse alerts --all` lists them)"
    )
