"""Counts, money and targets of the reports. Pure.

Money is kept in integer micro-units, as the pipeline counts it, and summed as integers: a total is the exact
sum of its rows, whatever the number of channels. It is shown rounded half up to the cent (``Decimal``), the
way an accountant rounds, never through a binary float. A ratio whose denominator is zero is "no data"
(``None``), never 0 and never an error: a channel without spend has no ROI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

MICROS: Final = 1_000_000
CENT: Final = Decimal("0.01")
NO_DATA: Final = "no data"
#: Money fields of a KPI row (currency units there, micro-units here).
_MONEY: Final = {"gmv": "gmv_micros", "spend": "spend_micros"}


@dataclass(frozen=True, slots=True)
class Counts:
    """What one channel did in one window: the funnel, new customers, and money in micro-units."""

    impressions: int = 0
    clicks: int = 0
    visits: int = 0
    carts: int = 0
    orders: int = 0
    new_customers: int = 0
    gmv_micros: int = 0
    spend_micros: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Counts:
        """The counts of a KPI row as ``adpulse kpis --json`` prints it (money in currency units).

        The row's money is the pipeline's micro-units divided by a million (a JSON float); multiplying back
        and rounding recovers the integer exactly up to a billion currency units per window. A count a row
        lacks (an older worker's) is 0.
        """
        values: dict[str, int] = {}
        for f in fields(cls):
            source = next((k for k, v in _MONEY.items() if v == f.name), f.name)
            raw = row.get(source, 0)
            number = float(raw) if isinstance(raw, int | float) else 0.0
            values[f.name] = round(number * MICROS) if f.name in _MONEY.values() else round(number)
        return cls(**values)

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def empty(self) -> bool:
        """Nothing at all happened."""
        return not any(getattr(self, f.name) for f in fields(self))

    @property
    def gmv(self) -> Decimal:
        return to_money(self.gmv_micros)

    @property
    def spend(self) -> Decimal:
        return to_money(self.spend_micros)

    @property
    def roi(self) -> float | None:
        """GMV / spend (ROAS); None without spend."""
        return self.gmv_micros / self.spend_micros if self.spend_micros else None

    @property
    def aov(self) -> float | None:
        """GMV per order in currency units; None without orders."""
        return self.gmv_micros / self.orders / MICROS if self.orders else None

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None

    @property
    def cvr(self) -> float | None:
        return self.orders / self.clicks if self.clicks else None

    def funnel(self) -> dict[str, float | None]:
        """Each stage's conversion: impression → click → visit → cart → order (None: no data)."""
        pairs = (
            (self.clicks, self.impressions),
            (self.visits, self.clicks),
            (self.carts, self.visits),
            (self.orders, self.carts),
        )
        return {
            stage: num / den if den else None for stage, (num, den) in zip(FUNNEL_STAGES, pairs, strict=True)
        }


#: The funnel's stages, named by where users go from and to.
FUNNEL_STAGES: Final = ("impression → click", "click → visit", "visit → cart", "cart → order")


def total(counts: Iterable[Counts]) -> Counts:
    """The sum of ``counts`` (exact: integers)."""
    result = Counts()
    for item in counts:
        result = result + item
    return result


def to_money(micros: int) -> Decimal:
    """Micro-units as currency units, rounded half up to the cent."""
    return (Decimal(micros) / MICROS).quantize(CENT, rounding=ROUND_HALF_UP)


def money_text(micros: int) -> str:
    """``12,345.67``: thousands separated, two decimals, rounded half up."""
    return f"{to_money(micros):,.2f}"


def ratio_text(value: float | None, digits: int = 2) -> str:
    """A plain ratio (ROI) with ``digits`` decimals, or "no data"."""
    return NO_DATA if value is None else f"{value:,.{digits}f}"


def percent_text(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage (CTR 2.31 %), or "no data"."""
    return NO_DATA if value is None else f"{value * 100:.{digits}f} %"


def signed(value: float, digits: int, unit: str = "") -> str:
    """``+1.20`` / ``−0.35`` with a true minus sign (U+2212), as finance tables print a change."""
    text = f"{abs(value):,.{digits}f}{unit}"
    if round(value, digits) == 0:
        return f"±{text}"
    return f"+{text}" if value > 0 else f"\u2212{text}"


@dataclass(frozen=True, slots=True)
class Targets:
    """The marketing team's targets (CONTRACT.md §2 seed values): each channel should meet all four."""

    ctr: float = 0.02
    cvr: float = 0.05
    aov: float = 300.0
    roi: float = 1.0

    def met(self, metric: str, value: float | None) -> bool | None:
        """Whether ``value`` meets the target of ``metric`` (None: no data to judge)."""
        return None if value is None else value >= getattr(self, metric)

    def text(self, metric: str) -> str:
        """``≥ 2 %``, ``≥ 300``: the target as people say it."""
        target: float = getattr(self, metric)
        if metric in ("ctr", "cvr"):
            return f"≥ {target * 100:g} %"
        return f"≥ {target:g}"
