"""The global side of local-global aggregation: merging block partials into a window bucket's value.

Pure. A bucket value (one table entry per channel, window and bucket start) is a plain dict, so that
it serialises as JSON in the table's changelog:

    {"b": {campaign: counts},                 # base: blocks folded for good
     "p": {src: [block, upto, {campaign: counts}]},   # the newest block seen from each source partition
     "f": {src: block}}                       # the last block folded into the base, per source

``merge`` is idempotent and order-tolerant: re-sent, replayed or stale partials change nothing they
should not, which is what makes the counts exact across crashes without broker transactions.

A block's partial may come in pieces (a channel with many campaigns does not fit in one Kafka
message): each piece holds whole rows of some campaigns, so within a block a partial overwrites the
campaigns it carries and keeps the others. That is exact because replays decide every record as the
first run did: a campaign's counts at a given ``upto`` are the same whoever sends them.

Rows are tuples of ints with interned campaign names (``compact``): the garbage collector stops tracking a
tuple of ints once it has seen it, so its full collections no longer walk every row of every bucket (a
list of counts is tracked for good), and a row costs less (measured in ``docs/operations.md``). A value
read back from the changelog (JSON: lists, a fresh string per name) is compacted the same way.

A bucket is kept in shards (``shard_of``: a stable hash of the campaign, the same in every process and
version): each shard is a bucket value of its own holding the rows of its campaigns, merged on its own, so
that a changelog record holds a part of a channel's campaigns and a merge rewrites only the shards the
partial carries campaigns of. ``combined`` joins a bucket's shards for reading; ``split`` cuts a value kept
whole (by a version before shards) into them.

Bounds, so that a bucket's changelog record stays small whatever the sources send: the base keeps at
most ``max_campaigns`` campaigns of its own (besides ``-``), the rest are counted under
``OVERFLOW_CAMPAIGN`` (channel totals stay exact; which campaigns keep their own row can depend on the
order blocks of different source partitions arrive in); and every count in the base saturates at
``CEILING`` (JSON encoders stop at 64-bit integers; a partial's counts are saturated by the fold).
"""

from __future__ import annotations

import operator
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypedDict, cast

import orjson

from streams.codec import N_SLOTS
from streams.events import NO_CAMPAIGN, OVERFLOW_CAMPAIGN

#: One campaign's counts as a bucket keeps them (never changed in place: a merge makes new ones).
Row = tuple[int, ...]
#: Counts as they come in (a partial's rows, a test's lists): ``merge`` keeps them as a ``Row``.
Counts = Sequence[int]
#: ``[block, upto, {campaign: row}]``: a list, as JSON gives it back from the changelog.
Pending = list[Any]


class BucketValue(TypedDict):
    """One table entry (a plain dict at run time, for the changelog's JSON); the keys are short on purpose."""

    b: dict[str, Row]
    p: dict[str, Pending]
    f: dict[str, int]


#: The largest count a bucket holds: 2**63 - 1 (money: 9.2 trillion currency units in micro-units).
CEILING: Final = 2**63 - 1
#: The most one campaign row can take as JSON (128 characters of 4 bytes, eight 20-digit counts).
_MAX_ROW_BYTES: Final = 700


def empty() -> BucketValue:
    """A bucket with nothing in it."""
    return {"b": {}, "p": {}, "f": {}}


def compact_rows(rows: Mapping[str, Counts]) -> dict[str, Row]:
    """``rows`` with interned campaign names and tuple rows (the same dict if they are already)."""
    if isinstance(rows, dict) and all(type(counts) is tuple for counts in rows.values()):
        # Names of tuple rows were interned where the tuples were made (here, ``compact``, the agent).
        return cast(dict[str, Row], rows)
    return _tuple_rows(rows)


def _tuple_rows(rows: Mapping[str, Counts]) -> dict[str, Row]:
    return {sys.intern(campaign): tuple(counts) for campaign, counts in rows.items()}


def compact(value: Any) -> Any:
    """A bucket value decoded from the changelog's JSON, with tuple rows and interned names; anything that
    is not shaped like a bucket value is returned as it is (the merge that reads it quarantines its key)."""
    try:
        # compact_rows without its check for rows already tuples: JSON has none (the bulk read's hot path).
        pending = {src: [block, upto, _tuple_rows(rows)] for src, (block, upto, rows) in value["p"].items()}
        return {"b": _tuple_rows(value["b"]), "p": pending, "f": value["f"]}
    except Exception:  # noqa: BLE001 - never stop a recovery over one record
        return value


def merge(
    value: BucketValue | None,
    src: str,
    block: int,
    upto: int,
    rows: Mapping[str, Counts],
    max_campaigns: int | None = None,
) -> BucketValue | None:
    """Merge one block partial (or one piece of it); returns the new value, or ``None`` when it changes
    nothing.

    - a block at or below the last folded block of ``src`` is a replay: ignored;
    - a newer block than the pending one means the pending one is complete: fold it into the base
      (keeping at most ``max_campaigns`` campaigns of the base's own);
    - the same block with a smaller ``upto`` is stale (a zombie or a slower replay): ignored;
    - the same block with the same or a larger ``upto`` (re)writes the campaigns it carries and keeps
      the others (they come in another piece): a re-sent piece changes nothing.
    """
    current = value if value is not None else empty()
    new_rows = compact_rows(rows)
    folded = current["f"].get(src, -1)
    if block <= folded:
        return None
    pending = current["p"].get(src)
    base = current["b"]
    folds = current["f"]
    if pending is not None:
        pending_block, pending_upto, pending_rows = pending
        if block < pending_block or (block == pending_block and upto < pending_upto):
            return None
        if pending_block < block:
            base = _folded(base, pending_rows, max_campaigns)
            folds = {**folds, src: pending_block}
        else:
            # A campaign's counts are absolute and only grow with upto: the newest carried value is right.
            new_rows = {**pending_rows, **new_rows}
            if upto == pending_upto and new_rows == pending_rows:
                return None
    return {"b": base, "p": {**current["p"], src: [block, upto, new_rows]}, "f": folds}


def totals(value: BucketValue) -> dict[str, list[int]]:
    """Counts per campaign: the base plus every pending block (Python integers, unbounded: where they
    leave as JSON, ``agents.snapshot.counts_of`` saturates them)."""
    result: dict[str, list[int]] = {campaign: list(counts) for campaign, counts in value["b"].items()}
    for _block, _upto, rows in value["p"].values():
        result = _added(result, rows, in_place=True)
    return result


def row_totals(value: BucketValue) -> dict[str, Row]:
    """``totals`` as rows: a campaign no pending block adds to keeps the base's own row (shared, not
    copied), so a bucket's totals cost a dict entry per campaign, not a list of counts."""
    result: dict[str, Row] = dict(value["b"])
    for _block, _upto, rows in value["p"].values():
        for campaign, counts in rows.items():
            before = result.get(campaign)
            result[campaign] = tuple(counts) if before is None else tuple(map(operator.add, before, counts))
    return result


def campaigns_of(value: BucketValue) -> set[str]:
    """The campaigns a bucket holds counts of (base and pending blocks)."""
    found = set(value["b"])
    for _block, _upto, rows in value["p"].values():
        found.update(rows)
    return found


def retire(value: BucketValue, keep: set[str]) -> BucketValue | None:
    """``value`` with the base rows of campaigns not in ``keep`` folded into ``OVERFLOW_CAMPAIGN`` (their
    counts stay in the channel's totals, their own rows go); ``None`` when there is nothing to retire.

    The all-time total uses it for campaigns that no retained day bucket saw: without it the total would
    keep a row for every campaign ever seen, and once it held the cap of them, every new campaign would
    be counted under ``OVERFLOW_CAMPAIGN`` from its first block on.
    """
    base = value["b"]
    gone = [c for c in base if c not in keep and c not in (NO_CAMPAIGN, OVERFLOW_CAMPAIGN)]
    if not gone:
        return None
    result = {campaign: counts for campaign, counts in base.items() if campaign not in gone}
    other = list(result.get(OVERFLOW_CAMPAIGN, (0,) * N_SLOTS))
    for campaign in gone:
        for slot, count in enumerate(base[campaign]):
            other[slot] = min(other[slot] + count, CEILING)
    result[OVERFLOW_CAMPAIGN] = tuple(other)
    return {"b": result, "p": value["p"], "f": value["f"]}


def encoded_over(value: BucketValue, limit: int) -> int | None:
    """The size of ``value`` as JSON if that is over ``limit`` bytes, else ``None`` (cheap for small ones)."""
    rows = len(value["b"]) + sum(len(rows) for _block, _upto, rows in value["p"].values())
    if (rows + len(value["p"])) * _MAX_ROW_BYTES <= limit:
        return None
    size = len(orjson.dumps(value))
    return size if size > limit else None


def overflowing(value: BucketValue) -> bool:
    """Whether the bucket's base has reached the campaign cap (it counts some under ``OVERFLOW_CAMPAIGN``)."""
    return OVERFLOW_CAMPAIGN in value["b"]


def _added(
    base: dict[str, list[int]], rows: Mapping[str, Counts], *, in_place: bool = False
) -> dict[str, list[int]]:
    result = base if in_place else {campaign: list(counts) for campaign, counts in base.items()}
    for campaign, counts in rows.items():
        target = result.get(campaign)
        if target is None:
            result[campaign] = list(counts)
        else:
            for slot in range(N_SLOTS):
                target[slot] += counts[slot]
    return result


def _folded(base: dict[str, Row], rows: dict[str, Row], max_campaigns: int | None) -> dict[str, Row]:
    """``base`` plus a finished block's ``rows``: the campaign cap applied, every count saturated.

    Rows are shared with ``base`` (never changed in place): only the dict is copied, and the rows that
    change are new tuples."""
    result = dict(base)
    own = len(result) - (NO_CAMPAIGN in result) - (OVERFLOW_CAMPAIGN in result)
    # Under a cap, campaigns join in name order: which ones keep a row must not depend on the order a
    # block's pieces and flushes happened to arrive in.
    for campaign, counts in rows.items() if max_campaigns is None else sorted(rows.items()):
        target = result.get(campaign)
        if target is None and campaign not in (NO_CAMPAIGN, OVERFLOW_CAMPAIGN):
            if max_campaigns is not None and own >= max_campaigns:
                campaign = OVERFLOW_CAMPAIGN
                target = result.get(campaign)
            else:
                own += 1
        if target is None:
            result[campaign] = tuple([min(count, CEILING) for count in counts])
        else:
            result[campaign] = tuple([min(a + b, CEILING) for a, b in zip(target, counts, strict=True)])
    return result


def shard_of(campaign: str, shards: int) -> int:
    """The shard that holds ``campaign``'s rows: CRC-32 of its UTF-8 bytes (Python's ``hash`` of a string
    differs between processes), modulo ``shards``."""
    return zlib.crc32(campaign.encode("utf-8", "surrogatepass")) % shards


def own_campaigns(value: BucketValue | None) -> int:
    """How many campaigns of its own the base holds (``-`` and ``OVERFLOW_CAMPAIGN`` are none)."""
    if value is None:
        return 0
    base = value["b"]
    return len(base) - (NO_CAMPAIGN in base) - (OVERFLOW_CAMPAIGN in base)


def combined(parts: Sequence[BucketValue]) -> BucketValue:
    """A bucket's shards as one value to read (``totals``, ``campaigns_of``; not to merge into): the bases
    joined, each shard's pending blocks kept apart. A campaign's rows are in one shard, except
    ``OVERFLOW_CAMPAIGN``, which each shard at the cap or retiring campaigns has: its rows are added up
    (not saturated: ``totals`` are unbounded). Rows are shared, not copied."""
    if len(parts) == 1:
        return parts[0]
    base: dict[str, Row] = {}
    pending: dict[str, Pending] = {}
    for shard, part in enumerate(parts):
        rows = part["b"]
        both = base.keys() & rows.keys()
        earlier = {campaign: base[campaign] for campaign in both}
        base.update(rows)
        for campaign in both:
            base[campaign] = tuple([a + b for a, b in zip(earlier[campaign], rows[campaign], strict=True)])
        for src, blocks in part["p"].items():
            pending[f"{shard}:{src}"] = blocks
    return {"b": base, "p": pending, "f": {}}


def split(value: BucketValue, shards: int) -> list[BucketValue]:
    """``value`` (a bucket kept whole) cut into its ``shards``: each holds the base and pending rows of its
    campaigns, and every one the blocks folded and pending per source, so that a replayed block is
    recognised whichever shard its rows go to (a row of a capped campaign went into another one's
    ``OVERFLOW_CAMPAIGN`` row)."""
    parts: list[BucketValue] = [
        {
            "b": {},
            "p": {src: [block, upto, {}] for src, (block, upto, _rows) in value["p"].items()},
            "f": dict(value["f"]),
        }
        for _ in range(shards)
    ]
    for campaign, row in value["b"].items():
        parts[shard_of(campaign, shards)]["b"][campaign] = row
    for src, (_block, _upto, rows) in value["p"].items():
        for campaign, row in rows.items():
            parts[shard_of(campaign, shards)]["p"][src][2][campaign] = row
    return parts
