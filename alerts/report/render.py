"""The reports as text: a terminal table, CSV, JSON and an HTML page that reads well on a phone. Pure.

Every format of the daily sheet has exactly its columns (``alerts.report.daily.COLUMNS``). Money is shown to
the cent (JSON: a number with two decimals), ROI and AOV from the exact sums; "no data" (JSON: null) where a
ratio's divisor is 0. Charts come in as PNG bytes and are embedded in the page, so it is one file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from alerts.report.daily import COLUMNS, DailySheet, SheetRow
from alerts.report.model import NO_DATA, Counts, money_text, percent_text, ratio_text, signed, to_money
from alerts.report.weekly import ChannelWeek, WeeklyReview

#: Chart PNGs by name, with a caption: what the page embeds.
Charts = Mapping[str, tuple[bytes, str]]
_METRICS = ("ctr", "cvr", "aov", "roi")
_METRIC_LABEL = {"ctr": "CTR", "cvr": "CVR", "aov": "AOV", "roi": "ROI"}


# -- the daily sheet -----------------------------------------------------------------------------------------


def _visits(row: SheetRow) -> str:
    return f"{row.visits:,}¹" if row.visits_are_clicks else f"{row.visits:,}"


def sheet_cells(row: SheetRow) -> list[str]:
    """One row as the table and CSV show it, column by column."""
    c = row.counts
    return [
        row.day.isoformat(),
        row.channel,
        _visits(row),
        f"{c.new_customers:,}",
        f"{c.orders:,}",
        money_text(c.gmv_micros),
        NO_DATA if c.aov is None else f"{c.aov:,.2f}",
        money_text(c.spend_micros),
        ratio_text(c.roi),
        row.note,
    ]


def daily_table(sheet: DailySheet) -> Table:
    """The sheet as a rich table (channels, then the total in bold), footnotes as its caption."""
    state = "" if sheet.complete else " (day not over)"
    table = Table(
        title=f"Daily sheet {sheet.day.isoformat()}{state} · {sheet.currency}",
        caption="\n".join(f"{i}. {n}" for i, n in enumerate(sheet.footnotes, 1)),
        caption_justify="left",
        header_style="bold",
    )
    for name in COLUMNS:
        money = name in ("GMV", "AOV", "channel cost")
        table.add_column(
            f"{name} ({sheet.currency})" if money else name, justify=_justify(name), overflow="fold"
        )
    for row in sheet.rows:
        table.add_row(*sheet_cells(row))
    if sheet.rows:
        table.add_row(*sheet_cells(sheet.total), style="bold", end_section=True)
    return table


def _justify(column: str) -> Any:
    return "left" if column in ("date", "channel", "anomaly note") else "right"


def daily_csv(sheet: DailySheet) -> str:
    """The sheet as CSV for a spreadsheet: plain numbers (no thousands separators), money to the cent."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [f"{n} ({sheet.currency})" if n in ("GMV", "AOV", "channel cost") else n for n in COLUMNS]
    )
    for row in (*sheet.rows, sheet.total) if sheet.rows else ():
        c = row.counts
        writer.writerow(
            [
                row.day.isoformat(),
                row.channel,
                row.visits,
                c.new_customers,
                c.orders,
                f"{to_money(c.gmv_micros):.2f}",
                NO_DATA if c.aov is None else f"{c.aov:.2f}",
                f"{to_money(c.spend_micros):.2f}",
                NO_DATA if c.roi is None else f"{c.roi:.4f}",
                row.note,
            ]
        )
    # Below the table, as on a printed sheet: what a reader must know (e.g. which visits are clicks).
    writer.writerow([])
    for footnote in sheet.footnotes:
        writer.writerow([footnote])
    return out.getvalue()


def _row_json(row: SheetRow) -> dict[str, Any]:
    c = row.counts
    return {
        "date": row.day.isoformat(),
        "channel": row.channel,
        "visits": row.visits,
        "visits_from": "clicks" if row.visits_are_clicks else "visits",
        "new_users": c.new_customers,
        "orders": c.orders,
        "gmv": float(to_money(c.gmv_micros)),
        "aov": c.aov,
        "channel_cost": float(to_money(c.spend_micros)),
        "roi": c.roi,
        "anomaly_note": row.note,
        "notes": list(row.notes),
    }


def daily_json(sheet: DailySheet) -> dict[str, Any]:
    """The sheet as one JSON object: rows, total, and how to read them (AOV and ROI unrounded)."""
    return {
        "report": "daily",
        "date": sheet.day.isoformat(),
        "time_zone": sheet.zone.key,
        "currency": sheet.currency,
        "complete": sheet.complete,
        "as_of": sheet.as_of.isoformat() if sheet.as_of else None,
        "rows": [_row_json(r) for r in sheet.rows],
        "total": _row_json(sheet.total) if sheet.rows else None,
        "footnotes": list(sheet.footnotes),
    }


# -- the weekly review ---------------------------------------------------------------------------------------


def metric_text(metric: str, value: float | None) -> str:
    """CTR/CVR as percentages, AOV as money, ROI with two decimals; "no data" for None."""
    if metric in ("ctr", "cvr"):
        return percent_text(value)
    return ratio_text(value)


def delta_text(metric: str, now: Counts, before: Counts | None) -> str:
    """The change from the week before: percentage points for CTR/CVR, ROI in its units, AOV in %."""
    if before is None:
        return "—"
    new, old = getattr(now, metric), getattr(before, metric)
    if new is None or old is None:
        return "—"
    if metric in ("ctr", "cvr"):
        return signed((new - old) * 100, 2, " pp")
    if metric == "roi":
        return signed(new - old, 2)
    return "—" if not old else signed((new / old - 1) * 100, 1, " %")


def money_delta(now: int, before: int | None) -> str:
    """A money or volume change in %, "—" where there is nothing to compare with."""
    return "—" if not before else signed((now / before - 1) * 100, 1, " %")


def target_mark(review: WeeklyReview, metric: str, value: float | None) -> str:
    met = review.targets.met(metric, value)
    return "" if met is None else (" ✓" if met else " ✗")


def weekly_cells(review: WeeklyReview, week: ChannelWeek) -> list[str]:
    """A channel's line: GMV and cost with Δ, then each KPI with its target mark and Δ."""
    c, p = week.counts, week.previous
    cells = [
        week.channel,
        f"{money_text(c.gmv_micros)} ({money_delta(c.gmv_micros, p.gmv_micros if p else None)})",
        f"{money_text(c.spend_micros)} ({money_delta(c.spend_micros, p.spend_micros if p else None)})",
        f"{c.orders:,}",
    ]
    for metric in _METRICS:
        value = getattr(c, metric)
        cells.append(
            f"{metric_text(metric, value)}{target_mark(review, metric, value)} ({delta_text(metric, c, p)})"
        )
    cells.append("; ".join(f"{u.text}, {u.pace_text}" for u in week.budgets) or "—")
    return cells


def weekly_header(review: WeeklyReview) -> list[str]:
    t = review.targets
    return [
        "channel",
        f"GMV {review.currency} (Δ)",
        f"cost {review.currency} (Δ)",
        "orders",
        *(f"{_METRIC_LABEL[m]} {t.text(m)} (Δ)" for m in _METRICS),
        "budget used, pacing",
    ]


def weekly_table(review: WeeklyReview) -> Table:
    """The channels against the targets and the week before, as a rich table."""
    table = Table(title=f"Weekly review {review.label} · {review.currency}", header_style="bold")
    for i, name in enumerate(weekly_header(review)):
        table.add_column(name, justify="left" if i in (0, 8) else "right", overflow="fold")
    for week in review.channels:
        table.add_row(*weekly_cells(review, week))
    if review.channels:
        table.add_row(*weekly_cells(review, review.total), style="bold")
    return table


def weekly_text(review: WeeklyReview) -> str:
    """What follows the table in the terminal: recommendations, alerts, footnotes."""
    parts = ["Recommendations:", *(f"  - {r}" for r in review.recommendations)]
    parts += ["", f"Alerts this week ({len(review.alert_notes)}):"]
    parts += [f"  - {line}" for line in review.alert_notes] or ["  none"]
    parts += ["", *(f"{i}. {n}" for i, n in enumerate(review.footnotes, 1))]
    return "\n".join(parts)


def _week_json(review: WeeklyReview, week: ChannelWeek) -> dict[str, Any]:
    c, p = week.counts, week.previous
    kpis = {
        m: {
            "value": getattr(c, m),
            "target": getattr(review.targets, m),
            "met": review.targets.met(m, getattr(c, m)),
            "previous": getattr(p, m) if p else None,
        }
        for m in _METRICS
    }
    return {
        "channel": week.channel,
        "impressions": c.impressions,
        "clicks": c.clicks,
        "visits": c.visits,
        "carts": c.carts,
        "orders": c.orders,
        "new_users": c.new_customers,
        "gmv": float(to_money(c.gmv_micros)),
        "cost": float(to_money(c.spend_micros)),
        "previous_gmv": float(to_money(p.gmv_micros)) if p else None,
        "previous_cost": float(to_money(p.spend_micros)) if p else None,
        "kpis": kpis,
        "budgets": [
            {
                "period": u.budget.period,
                "spendable": u.budget.spendable,
                "spent": float(to_money(u.spent_micros)),
                "allowance": float(to_money(u.allowance_micros)),
                "used": u.used,
                "pace": u.pace,
            }
            for u in week.budgets
        ],
    }


def weekly_json(review: WeeklyReview) -> dict[str, Any]:
    """The review as one JSON object."""
    return {
        "report": "weekly",
        "week": f"{review.year}-W{review.week:02d}",
        "days": [d.isoformat() for d in review.days],
        "previous_days": [d.isoformat() for d in review.previous_days],
        "time_zone": review.zone.key,
        "currency": review.currency,
        "channels": [_week_json(review, w) for w in review.channels],
        "total": _week_json(review, review.total) if review.channels else None,
        "alerts": list(review.alert_notes),
        "recommendations": list(review.recommendations),
        "footnotes": list(review.footnotes),
    }


def weekly_csv(review: WeeklyReview) -> str:
    """The channel lines as CSV."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(weekly_header(review))
    for week in (*review.channels, review.total) if review.channels else ():
        writer.writerow(weekly_cells(review, week))
    return out.getvalue()


# -- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light;--ink:#1f2933;--muted:#616e7c;--line:#d9e2ec;--bad:#b42318;--good:#027a48}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","PingFang SC",sans-serif;
color:var(--ink);background:#f5f7fa}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.35rem;margin:0 0 4px}h2{font-size:1.1rem;margin:24px 0 8px}
.meta{color:var(--muted);margin:0 0 12px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:8px}
.tile{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px}
.tile b{display:block;font-size:1.2rem}.tile span{color:var(--muted);font-size:.85rem}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line)}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:right;vertical-align:top}
th{background:#eef2f6;font-weight:600}
td.l,th.l{text-align:left}tr.total td{font-weight:700;background:#f8fafc}td.d{white-space:nowrap}
.bad{color:var(--bad)}.good{color:var(--good)}
figure{margin:12px 0;background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px}
figure img{width:100%;height:auto;display:block}figcaption{color:var(--muted);font-size:.85rem}
ol,ul{padding-left:20px}li{margin:4px 0}
@media (max-width:700px){
 table,thead,tbody,tr,td{display:block;border:0}thead{display:none}
 tr{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 8px;padding:4px 8px}
 td{display:flex;justify-content:space-between;gap:12px;text-align:right;padding:4px 0;
 border-bottom:1px dashed var(--line)}td:last-child{border-bottom:0}
 td::before{content:attr(data-label);color:var(--muted);text-align:left;flex:0 0 42%}
 td.d{display:none}td.ch{font-weight:700;font-size:1.05rem;border-bottom:1px solid var(--line)}
 td.ch::before{content:none}
}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        # An inline empty icon: no request for /favicon.ico, so no 404 in the browser's console.
        "<link rel='icon' href='data:,'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _tile(value: str, label: str, tone: str = "") -> str:
    cls = f" class='{tone}'" if tone else ""
    return f"<div class='tile'><b{cls}>{html.escape(value)}</b><span>{html.escape(label)}</span></div>"


Row = tuple[Sequence[str], str, Mapping[int, str]]


def _table(header: Sequence[str], rows: Sequence[Row], left: set[int]) -> str:
    """A table whose rows become cards on a phone: each cell labelled with its column (``data-label``)."""
    head = "".join(
        f"<th{' class=l' if i in left else ''}>{html.escape(h)}</th>" for i, h in enumerate(header)
    )
    body = []
    for cells, css, cell_css in rows:
        tds = []
        for i, cell in enumerate(cells):
            classes = " ".join(c for c in ("l" if i in left else "", cell_css.get(i, "")) if c)
            attr = f" class='{classes}'" if classes else ""
            label = html.escape(header[i], quote=True)
            tds.append(f"<td data-label='{label}'{attr}>{html.escape(cell)}</td>")
        body.append(f"<tr{f' class={css}' if css else ''}>{''.join(tds)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figures(charts: Charts) -> str:
    out = []
    for name, (png, caption) in charts.items():
        data = base64.b64encode(png).decode()
        out.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption, quote=True)}' "
            f"data-chart='{html.escape(name, quote=True)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "".join(out)


def _notes(notes: Sequence[str]) -> str:
    return "<ol>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ol>"


def _daily_marks(row: SheetRow) -> dict[int, str]:
    # The date is the page's title; on a phone each card is headed by its channel.
    marks = {0: "d", 1: "ch"}
    if row.counts.roi is not None and row.counts.roi < 1:
        marks[8] = "bad"
    if row.notes and row.channel != "total":
        marks[9] = "bad"
    return marks


def _weekly_marks(review: WeeklyReview, week: ChannelWeek) -> dict[int, str]:
    marks = {0: "ch"}
    for i, metric in enumerate(_METRICS, 4):
        met = review.targets.met(metric, getattr(week.counts, metric))
        if met is not None:
            marks[i] = "good" if met else "bad"
    return marks


def daily_html(sheet: DailySheet, charts: Charts | None = None) -> str:
    """The sheet as one HTML page: key figures, the table (cards on a phone), charts, footnotes."""
    t = sheet.total.counts
    state = "complete" if sheet.complete else "day not over"
    tiles = "".join(
        [
            _tile(money_text(t.gmv_micros), f"GMV {sheet.currency}"),
            _tile(f"{t.orders:,}", "orders"),
            _tile(money_text(t.spend_micros), f"channel cost {sheet.currency}"),
            _tile(ratio_text(t.roi), "ROI", "bad" if t.roi is not None and t.roi < 1 else ""),
            _tile(f"{t.new_customers:,}", "new users"),
            _tile(str(len(sheet.episodes)), "alerts", "bad" if sheet.episodes else ""),
        ]
    )
    header = [f"{n} ({sheet.currency})" if n in ("GMV", "AOV", "channel cost") else n for n in COLUMNS]
    rows: list[Row] = [(sheet_cells(r), "", _daily_marks(r)) for r in sheet.rows]
    if sheet.rows:
        rows.append((sheet_cells(sheet.total), "total", _daily_marks(sheet.total)))
    body = (
        f"<h1>Daily sheet · {html.escape(sheet.day.isoformat())}</h1>"
        f"<p class='meta'>{html.escape(sheet.zone.key)} · {html.escape(sheet.currency)} · {state}</p>"
        f"<div class='tiles'>{tiles}</div>"
        f"<h2>Channels</h2>{_table(header, rows, {0, 1, 9})}"
        + (f"<h2>Charts</h2>{_figures(charts)}" if charts else "")
        + f"<h2>Notes</h2>{_notes(sheet.footnotes)}"
    )
    return _page(f"adpulse · daily sheet {sheet.day.isoformat()}", body)


def weekly_html(review: WeeklyReview, charts: Charts | None = None) -> str:
    """The review as one HTML page: totals, channels against targets, recommendations, alerts, charts."""
    t, p = review.total.counts, review.total.previous
    tiles = "".join(
        [
            _tile(
                money_text(t.gmv_micros),
                f"GMV {review.currency} ({money_delta(t.gmv_micros, p.gmv_micros if p else None)})",
            ),
            _tile(money_text(t.spend_micros), f"cost {review.currency}"),
            _tile(
                ratio_text(t.roi),
                f"ROI ({delta_text('roi', t, p)})",
                "bad" if t.roi is not None and t.roi < 1 else "",
            ),
            _tile(f"{t.orders:,}", "orders"),
            _tile(str(len(review.episodes)), "alerts", "bad" if review.episodes else ""),
        ]
    )
    rows: list[Row] = [(weekly_cells(review, w), "", _weekly_marks(review, w)) for w in review.channels]
    if review.channels:
        rows.append((weekly_cells(review, review.total), "total", _weekly_marks(review, review.total)))
    items = "".join(f"<li>{html.escape(r)}</li>" for r in review.recommendations)
    alerts = "".join(f"<li>{html.escape(a)}</li>" for a in review.alert_notes) or "<li>none</li>"
    body = (
        f"<h1>Weekly review · {html.escape(review.label)}</h1>"
        f"<p class='meta'>{html.escape(review.zone.key)} · {html.escape(review.currency)}</p>"
        f"<div class='tiles'>{tiles}</div>"
        f"<h2>Recommendations</h2><ul>{items}</ul>"
        f"<h2>Channels against targets</h2>{_table(weekly_header(review), rows, {0, 8})}"
        + (f"<h2>Charts</h2>{_figures(charts)}" if charts else "")
        + f"<h2>Alerts ({len(review.alert_notes)})</h2><ul>{alerts}</ul>"
        + f"<h2>Notes</h2>{_notes(review.footnotes)}"
    )
    return _page(f"adpulse · weekly review {review.year}-W{review.week:02d}", body)
