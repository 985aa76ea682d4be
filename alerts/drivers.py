"""Which campaigns drove a channel-level KPI drop. Pure.

For a ratio KPI (numerator / denominator), a campaign's contribution to the drop is how much of the
numerator it lost against what its baseline ratio predicts for its current denominator:
``expected = denominator_now × ratio_before``, ``shortfall = expected − numerator_now``. The campaigns
with the largest shortfall are the ones to look at first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from alerts.kpi import RATIOS


class Driver(TypedDict):
    """One campaign's share of a drop, as it appears in the alert's ``evidence["campaigns"]``."""

    campaign: str
    shortfall: float
    before: float
    now: float | None


def drivers(
    metric: str,
    now: Mapping[str, Mapping[str, float]],
    before: Mapping[str, Mapping[str, float]],
    top: int = 3,
) -> list[Driver]:
    """Up to ``top`` campaigns with the largest shortfall of ``metric``'s numerator, largest first."""
    numerator, denominator = RATIOS[metric]
    rows: list[Driver] = []
    for campaign, counts in now.items():
        base = before.get(campaign, {})
        if not base.get(denominator):
            continue
        ratio_before = base.get(numerator, 0.0) / base[denominator]
        expected = counts.get(denominator, 0.0) * ratio_before
        shortfall = expected - counts.get(numerator, 0.0)
        if shortfall <= 0:
            continue
        ratio_now = counts[numerator] / counts[denominator] if counts.get(denominator) else None
        rows.append(
            {"campaign": campaign, "shortfall": round(shortfall, 2), "before": ratio_before, "now": ratio_now}
        )
    rows.sort(key=lambda row: (-row["shortfall"], row["campaign"]))
    return rows[:top]
