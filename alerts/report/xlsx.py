"""The reports as Excel workbooks (XlsxWriter, from the ``report`` extra). No I/O: bytes out.

Cells hold numbers, not text: money with a ``#,##0.00`` format, ratios unrounded with a two-decimal format,
so a spreadsheet sums and charts them; "no data" is text where a ratio's divisor is 0.
"""

from __future__ import annotations

import io
from typing import Any

from alerts.report.daily import COLUMNS, DailySheet, SheetRow
from alerts.report.model import NO_DATA, to_money
from alerts.report.render import weekly_cells, weekly_header
from alerts.report.weekly import ChannelWeek, WeeklyReview

INSTALL_HINT = "pip install 'adpulse[report]'"


def require_xlsxwriter() -> Any:
    """The xlsxwriter module, or a RuntimeError saying how to install it."""
    try:
        import xlsxwriter
    except ImportError as exc:
        raise RuntimeError(f"the xlsx format needs the xlsxwriter package: {INSTALL_HINT}") from exc
    return xlsxwriter


class _Book:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.book: Any = require_xlsxwriter().Workbook(self.buffer, {"in_memory": True})
        add = self.book.add_format
        self.bold = add({"bold": True})
        self.head = add({"bold": True, "bg_color": "#EEF2F6", "bottom": 1, "text_wrap": True})
        self.money = add({"num_format": "#,##0.00"})
        self.ratio = add({"num_format": "0.00"})
        self.percent = add({"num_format": "0.00%"})
        self.count = add({"num_format": "#,##0"})
        self.money_bold = add({"num_format": "#,##0.00", "bold": True})
        self.ratio_bold = add({"num_format": "0.00", "bold": True})
        self.count_bold = add({"num_format": "#,##0", "bold": True})

    def done(self) -> bytes:
        self.book.close()
        return self.buffer.getvalue()


def daily_xlsx(sheet: DailySheet) -> bytes:
    """The sheet as a workbook: one worksheet with the columns, the total in bold, footnotes below."""
    b = _Book()
    ws = b.book.add_worksheet(f"daily {sheet.day.isoformat()}")
    header = [f"{n} ({sheet.currency})" if n in ("GMV", "AOV", "channel cost") else n for n in COLUMNS]
    ws.write_row(0, 0, header, b.head)
    ws.freeze_panes(1, 2)
    rows = [*sheet.rows, sheet.total] if sheet.rows else []
    for i, row in enumerate(rows, 1):
        _daily_row(b, ws, i, row, bold=row is sheet.total)
    ws.set_column(0, 1, 12)
    ws.set_column(2, 8, 13)
    ws.set_column(9, 9, 60)
    for j, footnote in enumerate(sheet.footnotes, len(rows) + 2):
        ws.write_string(j, 0, footnote)
    return b.done()


def _daily_row(b: _Book, ws: Any, i: int, row: SheetRow, *, bold: bool) -> None:
    c = row.counts
    count, money, ratio = (b.count_bold, b.money_bold, b.ratio_bold) if bold else (b.count, b.money, b.ratio)
    ws.write_string(i, 0, row.day.isoformat(), b.bold if bold else None)
    ws.write_string(i, 1, row.channel, b.bold if bold else None)
    ws.write_number(i, 2, row.visits, count)
    ws.write_number(i, 3, c.new_customers, count)
    ws.write_number(i, 4, c.orders, count)
    ws.write_number(i, 5, float(to_money(c.gmv_micros)), money)
    _maybe(ws, i, 6, c.aov, money)
    ws.write_number(i, 7, float(to_money(c.spend_micros)), money)
    _maybe(ws, i, 8, c.roi, ratio)
    ws.write_string(i, 9, row.note)


def _maybe(ws: Any, i: int, j: int, value: float | None, fmt: Any) -> None:
    if value is None:
        ws.write_string(i, j, NO_DATA)
    else:
        ws.write_number(i, j, value, fmt)


def weekly_xlsx(review: WeeklyReview) -> bytes:
    """The review as a workbook: channels as numbers and as reported, recommendations, alerts, notes."""
    b = _Book()
    ws = b.book.add_worksheet("channels")
    names = [
        "channel",
        f"GMV ({review.currency})",
        f"GMV week before ({review.currency})",
        f"cost ({review.currency})",
        f"cost week before ({review.currency})",
        "orders",
        "new users",
        "CTR",
        "CVR",
        f"AOV ({review.currency})",
        "ROI",
        "ROI week before",
    ]
    ws.write_row(0, 0, names, b.head)
    ws.freeze_panes(1, 1)
    weeks = [*review.channels, review.total] if review.channels else []
    for i, week in enumerate(weeks, 1):
        _weekly_row(b, ws, i, week)
    ws.set_column(0, 0, 14)
    ws.set_column(1, len(names) - 1, 14)
    shown = b.book.add_worksheet("as reported")
    shown.write_row(0, 0, weekly_header(review), b.head)
    for i, week in enumerate(weeks, 1):
        shown.write_row(i, 0, weekly_cells(review, week))
    shown.set_column(0, 8, 24)
    for title, lines in (("recommendations", review.recommendations), ("alerts", review.alert_notes)):
        sheet = b.book.add_worksheet(title)
        sheet.set_column(0, 0, 140)
        for i, line in enumerate(lines or ("none",)):
            sheet.write_string(i, 0, line)
    notes = b.book.add_worksheet("notes")
    for i, line in enumerate(review.footnotes):
        notes.write_string(i, 0, line)
    return b.done()


def _weekly_row(b: _Book, ws: Any, i: int, week: ChannelWeek) -> None:
    c, p = week.counts, week.previous
    ws.write_string(i, 0, week.channel)
    ws.write_number(i, 1, float(to_money(c.gmv_micros)), b.money)
    _maybe(ws, i, 2, float(to_money(p.gmv_micros)) if p else None, b.money)
    ws.write_number(i, 3, float(to_money(c.spend_micros)), b.money)
    _maybe(ws, i, 4, float(to_money(p.spend_micros)) if p else None, b.money)
    ws.write_number(i, 5, c.orders, b.count)
    ws.write_number(i, 6, c.new_customers, b.count)
    _maybe(ws, i, 7, c.ctr, b.percent)
    _maybe(ws, i, 8, c.cvr, b.percent)
    _maybe(ws, i, 9, c.aov, b.money)
    _maybe(ws, i, 10, c.roi, b.ratio)
    _maybe(ws, i, 11, p.roi if p else None, b.ratio)
