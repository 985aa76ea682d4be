"""The global side of local-global aggregation: merging block partials into a window bucket's value.

Pure. A bucket value (one table entry per channel, window and bucket start) is a plain dict, so that
it serialises as JSON in the table's changelog:

    {"b": {campaign: counts},                 # base: blocks folded for good
     "p": {src: [block, upto, {campaign: counts}]},   # the newest block seen from each source partition
     "f": {src: block}}                       # the last block folded into the base, per source

``merge`` is idempotent and order-tolerant: re-sent, replayed or stale partials change nothing they
should not, which is what makes the counts exact across crashes without broker transactions.
"""

from __future__ import annotations

from typing import Any, TypedDict

from streams.codec import N_SLOTS

Counts = list[int]
#: ``[block, upto, {campaign: counts}]``: a list, as JSON gives it back from the changelog.
Pending = list[Any]


class BucketValue(TypedDict):
    """One table entry (a plain dict at run time, for the changelog's JSON); the keys are short on purpose."""

    b: dict[str, Counts]
    p: dict[str, Pending]
    f: dict[str, int]


def empty() -> BucketValue:
    """A bucket with nothing in it."""
    return {"b": {}, "p": {}, "f": {}}


def merge(
    value: BucketValue | None, src: str, block: int, upto: int, rows: dict[str, Counts]
) -> BucketValue | None:
    """Merge one block partial; returns the new value, or ``None`` when it changes nothing.

    - a block at or below the last folded block of ``src`` is a replay: ignored;
    - a newer block than the pending one means the pending one is complete: fold it into the base;
    - the same block with a smaller ``upto`` is stale (a zombie or a slower replay): ignored.
    """
    current = value if value is not None else empty()
    folded = current["f"].get(src, -1)
    if block <= folded:
        return None
    pending = current["p"].get(src)
    base = current["b"]
    folds = current["f"]
    if pending is not None:
        pending_block, pending_upto, pending_rows = pending
        if block < pending_block or (block == pending_block and upto <= pending_upto):
            return None
        if pending_block < block:
            base = _added(base, pending_rows)
            folds = {**folds, src: pending_block}
    return {"b": base, "p": {**current["p"], src: [block, upto, rows]}, "f": folds}


def totals(value: BucketValue) -> dict[str, Counts]:
    """Counts per campaign: the base plus every pending block."""
    result: dict[str, Counts] = {campaign: list(counts) for campaign, counts in value["b"].items()}
    for _block, _upto, rows in value["p"].values():
        result = _added(result, rows, in_place=True)
    return result


def _added(base: dict[str, Counts], rows: dict[str, Counts], *, in_place: bool = False) -> dict[str, Counts]:
    result = base if in_place else {campaign: list(counts) for campaign, counts in base.items()}
    for campaign, counts in rows.items():
        target = result.get(campaign)
        if target is None:
            result[campaign] = list(counts)
        else:
            for slot in range(N_SLOTS):
                target[slot] += counts[slot]
    return result
