"""Terminal rendering of KPI rows (``adpulse kpis`` and the demo's live view)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rich.console import Console
from rich.table import Table


def _pct(value: object) -> str:
    return "—" if value is None else f"{float(value) * 100:.2f} %"  # type: ignore[arg-type]


def _num(value: object, digits: int = 2) -> str:
    return "—" if value is None else f"{float(value):,.{digits}f}"  # type: ignore[arg-type]


def kpi_rich_table(rows: Iterable[Mapping[str, object]], currency: str, title: str | None = None) -> Table:
    """A rich table of KPI rows: one line per channel/campaign window."""
    table = Table(title=title, header_style="bold", expand=False)
    for name in ("channel", "campaign", "window", "start", "done"):
        table.add_column(name)
    for name in (
        "impr",
        "clicks",
        "orders",
        f"GMV {currency}",
        f"spend {currency}",
        "CTR",
        "CVR",
        "ROI",
        "AOV",
    ):
        table.add_column(name, justify="right")
    for row in rows:
        roi = row.get("roi")
        table.add_row(
            str(row["channel"]),
            str(row["campaign"]),
            str(row["window"]),
            str(row["window_start"])[11:16] if row["window"] != "1d" else str(row["window_start"])[:10],
            "✓" if row["complete"] else "…",
            _num(row["impressions"], 0),
            _num(row["clicks"], 0),
            _num(row["orders"], 0),
            _num(row["gmv"]),
            _num(row["spend"]),
            _pct(row.get("ctr")),
            _pct(row.get("cvr")),
            ("[red]" if roi is not None and float(roi) < 1 else "") + _num(roi),  # type: ignore[arg-type]
            _num(row.get("aov")),
        )
    return table


def kpi_table(rows: Iterable[Mapping[str, object]], currency: str) -> None:
    """Print KPI rows as a table on stdout (full width when piped, so columns are never squeezed)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(kpi_rich_table(rows, currency))
