"""agents.evaluate: the judges' bucket sums, kept while a bucket value is unchanged, and bounded."""

from __future__ import annotations

import pytest

from agents.evaluate import _Sums, add_bucket
from agents.partials import BucketValue, merge, totals
from streams.codec import N_SLOTS


def value(campaigns: int, seed: int) -> BucketValue:
    rows = {f"c{i}": [seed + i] * N_SLOTS for i in range(campaigns)}
    made = merge(None, "clicks/0", 0, 9, rows)
    assert made is not None
    return made


def test_sums_are_the_buckets_totals_and_a_new_value_is_summed_anew() -> None:
    sums = _Sums()
    first = value(3, 1)
    per_campaign, whole = sums.of(first)
    assert per_campaign == totals(first)
    assert whole == [sum(v[slot] for v in totals(first).values()) for slot in range(N_SLOTS)]
    assert sums.of(first)[0] is per_campaign  # the same object: read once
    second = merge(first, "clicks/0", 1, 19, {"c0": [100] * N_SLOTS})
    assert second is not None
    assert sums.of(second)[0] == totals(second) != per_campaign
    assert add_bucket([0] * N_SLOTS, second, "c0") == totals(second)["c0"]
    assert add_bucket([0] * N_SLOTS, second, "nobody") == [0] * N_SLOTS


def test_the_values_kept_are_bounded_by_their_campaign_rows() -> None:
    sums = _Sums(max_rows=100)
    values = [value(30, i) for i in range(10)]
    for made in values:
        sums.of(made)
    assert sum(len(entry[1]) for entry in sums._items.values()) <= 100  # noqa: SLF001 - the bound itself
    assert len(sums._items) == 3  # noqa: SLF001


def test_a_closed_hour_reads_each_hour_bucket_once_for_all_its_campaigns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Judging a closed hour took seconds with a thousand campaigns when every campaign summed the 25 hours
    # of its history anew (each sum costs all the campaigns of the bucket): quadratic in campaigns.
    from zoneinfo import ZoneInfo

    from prometheus_client import CollectorRegistry

    from adpulse.judging import evaluation_config
    from adpulse.settings import Settings
    from agents.evaluate import Evaluator
    from agents.snapshot import closed_rows
    from alerts.budgets import BudgetBook
    from streams.windows import Calendar

    calendar = Calendar(ZoneInfo("UTC"))
    hour0 = 1_764_000_000 - 1_764_000_000 % 86_400
    table = {
        ("ch", "1h", hour0 + h * 3600): merge(
            None,
            "clicks/0",
            0,
            9,
            {f"c{i}": [1000, 30, 20, 5, 2, 6 * 10**8, 2 * 10**7, 0] for i in range(40)},
        )
        for h in range(-30, 1)
    }
    summed: list[int] = []

    def lookup(channel: str, window: str, start: int) -> BucketValue | None:
        return table.get((channel, window, start))

    judge = Evaluator(
        evaluation_config(Settings(_env_file=None)),
        None,
        None,
        "x",
        calendar,
        BudgetBook(),
        500,
        registry=CollectorRegistry(),
    )
    import agents.evaluate as evaluate

    real = evaluate.totals  # type: ignore[attr-defined]

    def counting(value: BucketValue) -> dict[str, list[int]]:
        summed.append(1)
        return real(value)

    monkeypatch.setattr(evaluate, "totals", counting)
    judge.judge_windows(closed_rows("ch", "1h", [hour0], lookup, calendar), lookup)
    assert len(summed) <= 31  # each hour bucket of the history once, not once per campaign
