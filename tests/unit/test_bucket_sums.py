"""agents.evaluate: the judges' bucket sums, kept while a bucket value is unchanged, and bounded."""

from __future__ import annotations

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
