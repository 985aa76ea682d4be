"""KPI math (CONTRACT.md §2). Pure. A ratio with a zero denominator is "no data" (``None``), never 0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

#: KPI name -> (numerator, denominator) count names.
RATIOS: Final[dict[str, tuple[str, str]]] = {
    "ctr": ("clicks", "impressions"),
    "cvr": ("orders", "clicks"),
    "roi": ("gmv", "spend"),
    "aov": ("gmv", "orders"),
    "cpc": ("spend", "clicks"),
    "cpa": ("spend", "orders"),
    # The funnel: where users are lost, stage by stage.
    "funnel_visit": ("visits", "clicks"),
    "funnel_cart": ("carts", "visits"),
    "funnel_order": ("orders", "carts"),
}


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero."""
    return numerator / denominator if denominator else None


def kpis(counts: Mapping[str, float]) -> dict[str, float | None]:
    """Every KPI of one window's counts."""
    return {name: ratio(counts[num], counts[den]) for name, (num, den) in RATIOS.items()}
