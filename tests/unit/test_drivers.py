"""The campaigns that drove a channel-level drop."""

from __future__ import annotations

from alerts.drivers import drivers


def test_the_campaign_that_lost_clicks_comes_first() -> None:
    before = {
        "a": {"clicks": 200, "impressions": 10_000},
        "b": {"clicks": 100, "impressions": 5_000},
        "c": {"clicks": 50, "impressions": 2_000},
    }
    now = {
        "a": {"clicks": 60, "impressions": 10_000},
        "b": {"clicks": 95, "impressions": 5_000},
        "c": {"clicks": 60, "impressions": 2_000},
    }
    top = drivers("ctr", now, before)
    assert [row["campaign"] for row in top] == ["a", "b"]
    assert top[0]["shortfall"] == 140 and top[0]["now"] == 0.006


def test_new_campaigns_and_zero_baselines_are_skipped_and_top_bounds_the_list() -> None:
    before = {f"c{i}": {"orders": 10, "clicks": 100} for i in range(5)} | {"zero": {"orders": 0, "clicks": 0}}
    now = {f"c{i}": {"orders": i, "clicks": 100} for i in range(5)} | {
        "new": {"orders": 0, "clicks": 50},
        "zero": {"orders": 0, "clicks": 10},
    }
    top = drivers("cvr", now, before, top=2)
    assert [row["campaign"] for row in top] == ["c0", "c1"]
