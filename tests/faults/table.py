"""The fault table: one row per scenario, printed at the end of the session (``conftest.py``)."""

from __future__ import annotations

from dataclasses import astuple, dataclass

HEADER = (
    "fault",
    "events sent",
    "counted",
    "lost",
    "double-counted",
    "alerts expected",
    "delivered",
    "duplicated",
    "crashes",
)


@dataclass(frozen=True, slots=True)
class FaultRow:
    """What one scenario sent and what came out; ``None`` where the scenario has no such part."""

    fault: str
    sent: int | None = None
    counted: int | None = None
    lost: int | None = None
    doubled: int | None = None
    alerts_expected: int | None = None
    delivered: int | None = None
    duplicated: int | None = None
    crashes: int = 0


#: Rows of this session, in the order the scenarios ran.
ROWS: list[FaultRow] = []


def render(rows: list[FaultRow]) -> list[str]:
    """The rows as an aligned text table (``-`` where a scenario has no such part)."""
    cells = [HEADER] + [
        tuple("-" if v is None else f"{v:,}" if isinstance(v, int) else v for v in astuple(r)) for r in rows
    ]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(HEADER))]

    def line(row: tuple[object, ...]) -> str:
        first = str(row[0]).ljust(widths[0])
        return " | ".join([first, *(str(v).rjust(w) for v, w in zip(row[1:], widths[1:], strict=True))])

    rule = "-+-".join("-" * w for w in widths)
    return [line(cells[0]), rule, *(line(row) for row in cells[1:])]
