"""agents.partials: merging block partials is idempotent, ignores stale ones, and sums to the final blocks."""

from __future__ import annotations

import copy
import gc
import random
import sys
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.partials import (
    CEILING,
    BucketValue,
    campaigns_of,
    combined,
    compact,
    empty,
    encoded_over,
    merge,
    overflowing,
    own_campaigns,
    retire,
    row_totals,
    shard_of,
    split,
    totals,
)
from agents.snapshot import NamedCounts, counts_of
from streams.codec import N_SLOTS
from streams.events import OVERFLOW_CAMPAIGN


def vec(*values: int) -> list[int]:
    return [*values, *[0] * (N_SLOTS - len(values))]


A = {"-": vec(10, 1), "c1": vec(5)}
B = {"-": vec(20, 2)}


def plain(value: BucketValue | None) -> Any:
    """``value`` as its changelog record holds it (JSON: rows are lists)."""
    return orjson.loads(orjson.dumps(value))


def merged(*partials: tuple[str, int, int, dict[str, list[int]]]) -> BucketValue | None:
    value: BucketValue | None = None
    for src, block, upto, rows in partials:
        new = merge(value, src, block, upto, rows)
        if new is not None:
            value = new
    return value


def test_empty() -> None:
    assert empty() == {"b": {}, "p": {}, "f": {}}
    assert totals(empty()) == {}


def test_first_partial_is_pending() -> None:
    value = merge(None, "clicks/0", 3, 310, A)
    pending: BucketValue = {"b": {}, "p": {"clicks/0": [3, 310, A]}, "f": {}}
    assert plain(value) == pending
    assert value is not None and totals(value) == A


def test_same_partial_twice_is_the_same_as_once() -> None:
    once = merge(None, "clicks/0", 0, 9, A)
    assert merge(once, "clicks/0", 0, 9, A) is None
    assert merge(once, "clicks/0", 0, 9, {"c1": A["c1"]}) is None  # one piece of it again


def test_later_upto_in_the_same_block_replaces() -> None:
    later = {"-": vec(20, 2), "c1": vec(7)}
    value = merged(("clicks/0", 0, 4, A), ("clicks/0", 0, 9, later))
    assert value is not None
    assert totals(value) == later  # absolute totals: the newer one replaces, it does not add
    assert value["f"] == {}


def test_pieces_of_one_flush_add_their_campaigns_and_a_later_flush_overwrites_per_campaign() -> None:
    first = ("clicks/0", 0, 9, {"-": vec(1), "c1": vec(2)})
    second = ("clicks/0", 0, 9, {"c2": vec(3)})
    value = merged(first, second)
    assert value is not None
    assert totals(value) == {"-": vec(1), "c1": vec(2), "c2": vec(3)}
    for piece in (first, second):
        assert merge(value, *piece) is None  # a re-sent piece
    # The next flush of the block, in pieces: each overwrites the campaigns it carries; a campaign in a
    # piece not yet arrived keeps its last value (never lower than it was: the counts are absolute).
    value = merge(value, "clicks/0", 0, 15, {"c2": vec(5)})
    assert value is not None
    assert totals(value) == {"-": vec(1), "c1": vec(2), "c2": vec(5)}
    value = merge(value, "clicks/0", 0, 15, {"-": vec(4), "c1": vec(2)})
    assert value is not None
    assert totals(value) == {"-": vec(4), "c1": vec(2), "c2": vec(5)}
    assert merge(value, *second) is None  # a piece of an older flush


def test_stale_partials_are_ignored() -> None:
    value = merged(("clicks/0", 2, 29, A))
    assert merge(value, "clicks/0", 2, 20, B) is None  # smaller upto
    assert merge(value, "clicks/0", 2, 29, {"-": A["-"]}) is None  # equal upto: a piece of it again
    assert merge(value, "clicks/0", 1, 19, B) is None  # older block
    after = merge(value, "clicks/0", 3, 30, B)
    assert after is not None
    assert after["f"] == {"clicks/0": 2}
    assert merge(after, "clicks/0", 2, 99, B) is None  # an already folded block, whatever its upto
    assert merge(after, "clicks/0", 0, 5, B) is None


def test_newer_block_folds_the_pending_one_into_the_base() -> None:
    value = merged(("clicks/0", 0, 9, A), ("clicks/0", 1, 12, B))
    assert value is not None
    assert plain(value) == {"b": A, "p": {"clicks/0": [1, 12, B]}, "f": {"clicks/0": 0}}
    assert totals(value) == {"-": vec(30, 3), "c1": vec(5)}
    value = merge(value, "clicks/0", 5, 55, {"c1": vec(1)})
    assert value is not None
    assert plain(value)["b"] == {"-": vec(30, 3), "c1": vec(5)}
    assert value["f"] == {"clicks/0": 1}
    assert totals(value) == {"-": vec(30, 3), "c1": vec(6)}


def test_sources_are_independent() -> None:
    value = merged(
        ("clicks/0", 4, 49, A), ("clicks/1", 0, 3, B), ("spend/0", 7, 70, {"-": vec(0, 0, 0, 0, 0, 0, 9)})
    )
    assert value is not None
    assert totals(value) == {"-": vec(30, 3, 0, 0, 0, 0, 9), "c1": vec(5)}
    assert merge(value, "clicks/1", 0, 3, B) is None
    assert merge(value, "clicks/0", 0, 3, A) is None  # older than clicks/0's pending block
    assert merge(value, "clicks/2", 0, 3, A) is not None


def test_merge_does_not_mutate_its_inputs() -> None:
    rows = copy.deepcopy(A)
    value = merged(("clicks/0", 0, 9, rows))
    snapshot = copy.deepcopy(value)
    later = merge(value, "clicks/0", 1, 10, copy.deepcopy(B))
    assert value == snapshot
    assert rows == A
    assert later is not None
    totals(later)
    totals(later)
    assert totals(later) == {"-": vec(30, 3), "c1": vec(5)}
    assert plain(later)["b"] == A  # totals() must not add pending rows into the base in place


def test_the_base_keeps_at_most_the_cap_of_campaigns_and_counts_the_rest_under_other() -> None:
    rows = {"-": vec(1), "a": vec(2), "b": vec(3), "c": vec(4), "d": vec(5)}
    value = merge(None, "clicks/0", 0, 9, rows, max_campaigns=2)
    assert value is not None and not overflowing(value)
    assert totals(value) == rows  # a pending block is not capped: its fold stage capped it already
    value = merge(value, "clicks/0", 1, 10, {"e": vec(6)}, max_campaigns=2)
    assert value is not None and overflowing(value)
    assert plain(value)["b"] == {"-": vec(1), "a": vec(2), "b": vec(3), OVERFLOW_CAMPAIGN: vec(9)}
    value = merge(value, "clicks/0", 2, 20, {}, max_campaigns=2)
    assert value is not None
    assert plain(value)["b"] == {"-": vec(1), "a": vec(2), "b": vec(3), OVERFLOW_CAMPAIGN: vec(15)}
    assert sum(counts[0] for counts in totals(value).values()) == 1 + 2 + 3 + 4 + 5 + 6


def test_counts_saturate_at_the_ceiling_so_a_bucket_always_encodes() -> None:
    """Money is in micro-units: 19 orders of the largest accepted amount (10**12) outgrow 64 bits."""
    huge = {"-": vec(0, 0, 0, 0, 1, 10**18)}
    value: BucketValue | None = None
    for block in range(25):
        value = merge(value, "orders/0", block, block * 10, huge) or value
    assert value is not None
    for other in range(3):
        value = merge(value, f"orders/{other + 1}", 0, 0, {"-": vec(0, 0, 0, 0, 1, CEILING)}) or value
    assert value["b"]["-"][5] == CEILING
    orjson.dumps(value)  # the changelog record
    summed = totals(value)["-"]
    assert summed[5] == CEILING + 10**18 + 3 * CEILING  # Python integers, saturated where they leave as JSON:
    assert counts_of(summed)["gmv"] == CEILING / 1_000_000
    orjson.dumps(counts_of(summed))


def test_a_bucket_too_large_for_its_changelog_is_recognised() -> None:
    small = merge(None, "clicks/0", 0, 9, A)
    assert small is not None and encoded_over(small, 1000) is None
    rows = {f"{i:04d}-" + "x" * 120: vec(i) for i in range(2000)}
    big: BucketValue | None = None
    for src in ("clicks/0", "clicks/1", "orders/0", "spend/0"):  # one pending block each
        big = merge(big, src, 0, 9, rows)
    assert big is not None
    size = encoded_over(big, 1_000_000)
    assert size == len(orjson.dumps(big)) and size > 1_000_000
    assert encoded_over(big, size) is None


# -- the property: replays, re-sends and interleavings sum to the final blocks ----------------------


def pieces(
    partial: tuple[int, int, dict[str, list[int]]], rnd: random.Random
) -> list[tuple[int, int, dict[str, list[int]]]]:
    """A partial as the fold stage may send it: in pieces of whole campaigns, same block and ``upto``."""
    block, upto, rows = partial
    items = list(rows.items())
    cuts = sorted(rnd.sample(range(1, len(items)), rnd.randint(0, len(items) - 1))) if len(items) > 1 else []
    bounds = [0, *cuts, len(items)]
    return [(block, upto, dict(items[a:b])) for a, b in zip(bounds, bounds[1:], strict=False)] or [partial]


@st.composite
def source_histories(
    draw: st.DrawFn,
) -> tuple[list[list[tuple[int, int, dict[str, list[int]]]]], dict[str, list[int]]]:
    """One source partition's partials to one bucket, across crashes and replays.

    Each block has fixed flush points with fixed absolute totals (replays decide the same). A run
    starts at a block start no later than where the previous run stopped, publishes some of each
    block's flush points in order and, unless it crashes, the block's final value.
    """
    n_blocks = draw(st.integers(1, 5))
    blocks: list[list[tuple[int, dict[str, list[int]]]]] = []
    for block in range(n_blocks):
        points = []
        running: dict[str, list[int]] = {}
        for upto in sorted(draw(st.sets(st.integers(0, 9), min_size=0, max_size=4))):
            campaign = draw(st.sampled_from(["-", "c1", "c2"]))
            cell = running.setdefault(campaign, [0] * N_SLOTS)
            cell[draw(st.integers(0, N_SLOTS - 1))] += draw(st.integers(1, 1000))
            points.append((block * 10 + upto, copy.deepcopy(running)))
        blocks.append(points)
    expected: dict[str, list[int]] = {}
    for points in blocks:
        if points:
            for campaign, counts in points[-1][1].items():
                target = expected.setdefault(campaign, [0] * N_SLOTS)
                for slot in range(N_SLOTS):
                    target[slot] += counts[slot]

    runs = []
    start, reached = 0, 0
    for _ in range(draw(st.integers(0, 3))):  # crashed runs
        start = draw(st.integers(0, reached))
        stop = draw(st.integers(start, n_blocks - 1))  # the block it dies in
        run = []
        for block in range(start, stop + 1):
            points = blocks[block]
            keep = draw(st.lists(st.booleans(), min_size=len(points), max_size=len(points)))
            chosen = [p for p, k in zip(points, keep, strict=True) if k]
            if block < stop and points and (not chosen or chosen[-1] is not points[-1]):
                chosen.append(points[-1])  # a block it moved past was closed, so its final value went out
            run += [(block, upto, rows) for upto, rows in chosen]
        runs.append(run)
        reached = max(reached, stop)
    start = draw(st.integers(0, reached))  # the last run completes
    run = []
    for block in range(start, n_blocks):
        points = blocks[block]
        keep = draw(st.lists(st.booleans(), min_size=len(points), max_size=len(points)))
        chosen = [p for p, k in zip(points, keep, strict=True) if k]
        if points and (not chosen or chosen[-1] is not points[-1]):
            chosen.append(points[-1])
        run += [(block, upto, rows) for upto, rows in chosen]
    runs.append(run)
    return runs, expected


@settings(max_examples=150, deadline=None)
@given(st.lists(source_histories(), min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_any_interleaving_of_replayed_sources_sums_the_final_blocks(
    histories: list[tuple[list[list[tuple[int, int, dict[str, list[int]]]]], dict[str, list[int]]]],
    rnd: object,
) -> None:
    queues = [
        [piece for run in runs for partial in run for piece in pieces(partial, rnd)]  # type: ignore[arg-type]
        for runs, _ in histories
    ]
    expected: dict[str, list[int]] = {}
    for _, per_source in histories:
        for campaign, counts in per_source.items():
            target = expected.setdefault(campaign, [0] * N_SLOTS)
            for slot in range(N_SLOTS):
                target[slot] += counts[slot]

    value: BucketValue | None = None
    positions = [0] * len(queues)
    while any(pos < len(queue) for pos, queue in zip(positions, queues, strict=True)):
        ready = [i for i, queue in enumerate(queues) if positions[i] < len(queue)]
        i = rnd.choice(ready)  # type: ignore[attr-defined]
        block, upto, rows = queues[i][positions[i]]
        positions[i] += 1
        new = merge(value, f"clicks/{i}", block, upto, copy.deepcopy(rows))
        if new is not None:
            value = new
        # A re-send of the same partial right away never changes anything.
        assert merge(value, f"clicks/{i}", block, upto, rows) is None or value is None

    got = totals(value) if value is not None else {}
    assert {c: v for c, v in got.items() if any(v)} == {c: v for c, v in expected.items() if any(v)}
    if value is not None:
        assert {c: list(row) for c, row in row_totals(value).items()} == got

    # The same partials merged into shards as the bucket agent does (each gets the rows of its campaigns,
    # and folds an older pending block when a newer one starts) sum to the same, read through ``combined``.
    shards: dict[int, BucketValue] = {}
    positions = [0] * len(queues)
    while any(pos < len(queue) for pos, queue in zip(positions, queues, strict=True)):
        ready = [i for i, queue in enumerate(queues) if positions[i] < len(queue)]
        i = rnd.choice(ready)  # type: ignore[attr-defined]
        block, upto, rows = queues[i][positions[i]]
        positions[i] += 1
        by_shard: dict[int, dict[str, list[int]]] = {}
        for campaign, counts in rows.items():
            by_shard.setdefault(shard_of(campaign, 2), {})[campaign] = counts
        for shard, part in shards.items():  # a shard without rows folds an older pending block too
            if shard not in by_shard and part["p"].get(f"clicks/{i}", [block])[0] < block:
                by_shard[shard] = {}
        for shard, shard_rows in by_shard.items():
            new = merge(shards.get(shard), f"clicks/{i}", block, upto, shard_rows)
            if new is not None:
                shards[shard] = new
    got = totals(combined(list(shards.values()))) if shards else {}
    assert {c: v for c, v in got.items() if any(v)} == {c: v for c, v in expected.items() if any(v)}
    if shards:
        assert {c: list(row) for c, row in row_totals(combined(list(shards.values()))).items()} == got


def test_retiring_campaigns_keeps_the_channel_total_and_frees_their_rows() -> None:
    value = merged(
        ("clicks/0", 0, 9, {"-": vec(1), "old": vec(10, 1), "live": vec(5)}),
        ("clicks/0", 1, 19, {"new": vec(3)}),
    )
    assert value is not None
    assert campaigns_of(value) == {"-", "old", "live", "new"}
    retired = retire(value, keep={"live", "new"})
    assert retired is not None
    assert set(retired["b"]) == {"-", "live", OVERFLOW_CAMPAIGN}
    assert plain(retired)["b"][OVERFLOW_CAMPAIGN] == vec(10, 1)
    channel = [sum(counts[slot] for counts in totals(retired).values()) for slot in range(N_SLOTS)]
    assert channel == [sum(counts[slot] for counts in totals(value).values()) for slot in range(N_SLOTS)]
    assert retired["p"] == value["p"] and retired["f"] == value["f"]
    assert retire(retired, keep={"live", "new"}) is None


def test_a_total_at_the_cap_takes_new_campaigns_again_once_old_ones_retired() -> None:
    # Two campaigns fill the cap; once they retire, a new one gets a row of its own instead of (other).
    value = merged(("spend/0", 0, 9, {"a": vec(1), "b": vec(1)}), ("spend/0", 1, 19, {}))
    assert value is not None
    capped = merge(value, "spend/0", 2, 29, {"c": vec(0, 0, 0, 0, 0, 0, 7)}, max_campaigns=2)
    assert capped is not None
    folded = merge(capped, "spend/0", 3, 39, {}, max_campaigns=2)
    assert folded is not None and "c" not in folded["b"]
    retired = retire(value, keep=set())
    assert retired is not None
    capped = merge(retired, "spend/0", 2, 29, {"c": vec(0, 0, 0, 0, 0, 0, 7)}, max_campaigns=2)
    assert capped is not None
    folded = merge(capped, "spend/0", 3, 39, {}, max_campaigns=2)
    assert folded is not None and plain(folded)["b"]["c"] == vec(0, 0, 0, 0, 0, 0, 7)


def test_rows_are_tuples_with_interned_names_that_the_garbage_collector_stops_tracking() -> None:
    name = "".join(["camp", "aign-1"])  # a fresh string, as JSON decoding makes one per bucket
    value = merged(("clicks/0", 0, 9, {name: vec(300, 7)}), ("clicks/0", 1, 19, {name: vec(400, 9)}))
    assert value is not None
    gc.collect()
    for row in [*value["b"].values(), *value["p"]["clicks/0"][2].values()]:
        assert type(row) is tuple and not gc.is_tracked(row)
    (kept,) = value["b"]
    assert kept is sys.intern("campaign-1")


def test_a_value_read_back_from_the_changelog_is_compacted_and_merges_on_as_before() -> None:
    value = merged(
        ("clicks/0", 0, 9, {"-": vec(1), "a": vec(300, 2)}),
        ("clicks/0", 1, 19, {"b": vec(400, 3)}),
        ("spend/0", 4, 40, {"a": vec(0, 0, 0, 0, 0, 0, 10**9)}),
    )
    assert value is not None
    # The changelog's JSON (lists), as main's code wrote it and as this code writes it.
    recovered = compact(orjson.loads(orjson.dumps(value)))
    assert recovered == value
    gc.collect()
    assert all(type(row) is tuple and not gc.is_tracked(row) for row in recovered["b"].values())
    for partial in (("clicks/0", 1, 19, {"b": vec(400, 3)}), ("clicks/0", 2, 29, {"a": vec(5)})):
        assert merge(recovered, *partial) == merge(value, *partial)
    assert compact({"not": "a bucket"}) == {"not": "a bucket"}  # left for the merge to quarantine


def test_shards_are_a_stable_hash_of_the_campaign_not_pythons() -> None:
    # CRC-32: the same in every process and version (Python's str hash is salted per process).
    assert [shard_of(c, 8) for c in ("-", OVERFLOW_CAMPAIGN, "c1", "双十一")] == [0, 2, 1, 2]
    assert {shard_of(f"c{i}", 8) for i in range(100)} == set(range(8))


def test_a_bucket_kept_whole_cut_into_shards_reads_the_same_and_recognises_replays_in_every_shard() -> None:
    value = merged(
        ("clicks/0", 0, 9, {"-": vec(1), "a": vec(2), "b": vec(3), "c": vec(4)}),
        ("clicks/0", 1, 19, {"a": vec(5), "d": vec(6)}),
        ("spend/0", 3, 30, {"c": vec(0, 0, 0, 0, 0, 0, 7)}),
    )
    assert value is not None
    parts = split(value, 4)
    assert len(parts) == 4 and totals(combined(parts)) == totals(value)
    assert all(part["f"] == value["f"] and set(part["p"]) == set(value["p"]) for part in parts)
    # A replay of a folded block, or of the pending one, changes no shard, whichever campaigns it carries.
    for campaign in ("a", "b", "zz"):
        shard = shard_of(campaign, 4)
        assert merge(parts[shard], "clicks/0", 0, 9, {campaign: vec(2)}) is None
        assert merge(parts[shard], "clicks/0", 1, 18, {campaign: vec(5)}) is None


def test_combined_adds_up_the_other_row_each_shard_may_hold() -> None:
    left = merged(("clicks/0", 0, 9, {"a": vec(1), OVERFLOW_CAMPAIGN: vec(2)}))
    right = merged(("clicks/1", 0, 9, {"b": vec(3), OVERFLOW_CAMPAIGN: vec(4)}), ("clicks/1", 1, 10, {}))
    assert left is not None and right is not None
    assert totals(combined([left, right])) == {"a": vec(1), "b": vec(3), OVERFLOW_CAMPAIGN: vec(6)}
    assert own_campaigns(right) == 1 and own_campaigns(None) == 0


def test_named_counts_read_a_bucket_like_totals_and_share_its_rows() -> None:
    value = merged(("clicks/0", 1, 5, {"c1": vec(3, 1), "c2": vec(7)}), ("clicks/0", 2, 3, {"c1": vec(2)}))
    assert value is not None
    assert value["b"] and value["p"]  # c1 in the base and pending, c2 in the base only
    rows = row_totals(value)
    assert rows["c2"] is value["b"]["c2"]  # a row no pending block adds to is the base's own
    assert rows["c1"] == (5, 1, *[0] * (N_SLOTS - 2))
    named = NamedCounts(value)
    assert dict(named) == {c: counts_of(v) for c, v in totals(value).items()}
    assert named.get("c1") == counts_of(totals(value)["c1"])
    assert named.get("nobody") is None and named.get("nobody", {}) == {}
    assert "c2" in named and "nobody" not in named and len(named) == 2 and sorted(named) == ["c1", "c2"]
    assert not NamedCounts(empty())
