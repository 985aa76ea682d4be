"""agents.closing.WindowCloser: event time from the marks, and which windows close, tick by tick."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from zoneinfo import ZoneInfo

import pytest

from agents.closing import WindowCloser
from streams.windows import Calendar

UTC = ZoneInfo("UTC")
T0 = 1_700_000_040  # a minute boundary (2023-11-14T22:14:00Z)
GRACE_S, IDLE_S, STALE_S = 10.0, 30.0, 10.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def closer(clock: Clock) -> WindowCloser:
    return WindowCloser(Calendar(UTC), GRACE_S, IDLE_S, STALE_S, clock=clock)


def minutes_due(
    wc: WindowCloser, watermark_of: dict[str, float], data: dict[str, set[int]], record: bool = True
) -> dict[str, list[int]]:
    """The 1-minute buckets due per channel this tick (every window recorded, as the snapshot timer does)."""

    def starts(channel: str, window: str) -> Iterable[int]:
        return data.get(channel, set()) if window == "1m" else ()

    due: dict[str, list[int]] = {}
    for channel, window, todo in wc.due(watermark_of, starts):
        if window == "1m":
            due[channel] = todo
        if record:
            wc.recorded(channel, window)
    return due


def test_a_partition_without_marks_has_no_event_time() -> None:
    wc = closer(Clock(T0))
    wc.mark(0, "clicks-0", T0 - 5, T0 - 1, False, T0 - 1)
    assert wc.watermarks([0, 1]) == {0: T0 - 5}


def test_the_slowest_source_holds_event_time_back_until_it_is_idle() -> None:
    clock = Clock(T0)
    wc = closer(clock)
    wc.mark(0, "clicks-0", T0 - 5, T0, True, T0)  # caught up, just read
    wc.mark(0, "orders-0", T0 - 100, T0, True, T0)  # caught up, but silent for less than IDLE_S
    assert wc.watermarks([0]) == {0: T0 - 100}
    # Renewed marks say both are still caught up and silent: after IDLE_S nothing is in flight, and event
    # time follows the wall clock (minus IDLE_S) so that a quiet channel's windows close.
    clock.now = T0 + 40
    wc.mark(0, "clicks-0", T0 - 5, T0, True, T0 + 40)
    wc.mark(0, "orders-0", T0 - 100, T0, True, T0 + 40)
    assert wc.watermarks([0]) == {0: T0 + 40 - IDLE_S}


def test_a_source_of_which_no_mark_was_read_holds_event_time_back() -> None:
    """A worker takes a partials partition over after another's ``kill -9``: since the last commit it reads
    marks of the surviving fold stage only (caught up, silent: its trackers are done), none of the dead
    stage's sources, not replayed yet. Before, event time jumped to the wall clock and every window closed
    ahead of the dead stage's data (seen in the fault suite: a channel's later minutes never recorded)."""
    clock = Clock(T0 + 100)
    wc = closer(clock)
    wc.sources(["clicks-0", "clicks-1", "orders-0", "orders-1"])
    for src in ("clicks-1", "orders-1"):
        wc.mark(0, src, T0 - 300, T0 - 50, True, T0 + 99)  # caught up, silent for 149 s > IDLE_S
    assert wc.watermarks([0]) == {}
    # The sources' new owner reports them (not caught up yet): event time is theirs.
    wc.mark(0, "clicks-0", T0 - 200, T0 + 99, False, T0 + 100)
    wc.mark(0, "orders-0", T0 - 250, T0 + 99, False, T0 + 100)
    assert wc.watermarks([0]) == {0: T0 - 250}
    # Marks of an older fold stage list no sources: what is known stays known (here on partials partition
    # 1, where only the surviving stage's marks arrived so far).
    wc.sources(None)
    for src in ("clicks-1", "orders-1"):
        wc.mark(1, src, T0 - 300, T0 - 50, True, T0 + 99)
    assert wc.watermarks([1]) == {}
    with pytest.raises(ValueError, match="list of source partition names"):
        wc.sources("clicks-0")


def test_a_mark_not_renewed_is_no_proof_of_silence() -> None:
    clock = Clock(T0)
    wc = closer(clock)
    wc.mark(0, "clicks-0", T0 - 100, T0 - 60, True, T0)
    clock.now = T0 + 40  # 40 s after it was sent, more than STALE_S: its fold stage may be stuck
    assert wc.watermarks([0]) == {0: T0 - 100}


def test_event_time_never_goes_back() -> None:
    wc = closer(Clock(T0))
    wc.mark(0, "clicks-0", T0 - 5, T0, False, T0)
    assert wc.watermarks([0]) == {0: T0 - 5}
    wc.mark(0, "clicks-0", T0 - 50, T0, False, T0)  # a restarted fold stage reports an older mark
    assert wc.watermarks([0]) == {0: T0 - 5}


def test_a_window_closes_once_its_end_plus_the_grace_has_passed() -> None:
    wc = closer(Clock(T0))
    data = {"douyin": {T0 - 120, T0 - 60}}
    # The minute [T0-60, T0) ends at T0; with GRACE_S it closes at T0 + 10.
    assert minutes_due(wc, {"douyin": T0 + 9}, data) == {"douyin": [T0 - 120]}
    assert minutes_due(wc, {"douyin": T0 + 9}, data) == {"douyin": []}
    assert minutes_due(wc, {"douyin": T0 + 10}, data) == {"douyin": [T0 - 60]}


def test_silent_minutes_after_the_last_recorded_one_close_as_zeros_but_history_is_not_invented() -> None:
    wc = closer(Clock(T0))
    data = {"douyin": {T0 - 600}}
    assert minutes_due(wc, {"douyin": T0 - 500}, data) == {"douyin": [T0 - 600]}  # nothing before it
    assert minutes_due(wc, {"douyin": T0 + 10}, data) == {
        "douyin": [T0 - 540, T0 - 480, T0 - 420, T0 - 360, T0 - 300, T0 - 240, T0 - 180, T0 - 120, T0 - 60]
    }


def test_a_closed_window_written_again_is_recorded_again() -> None:
    wc = closer(Clock(T0))
    data = {"douyin": {T0 - 120}, "taobao": {T0 - 120}}
    minutes_due(wc, {"douyin": T0 + 10, "taobao": T0 + 10}, data)
    wc.touched("douyin", "1m", T0 - 120)  # late data within the grace of another partition
    wc.touched("douyin", "1m", T0 + 60)  # an open window: not closed yet, nothing to record
    assert minutes_due(wc, {"douyin": T0 + 10, "taobao": T0 + 10}, data) == {
        "douyin": [T0 - 120],
        "taobao": [],
    }
    assert minutes_due(wc, {"douyin": T0 + 10}, data) == {"douyin": []}


def test_a_window_not_recorded_is_due_again_and_forget_starts_over() -> None:
    wc = closer(Clock(T0))
    data = {"douyin": {T0 - 120, T0 - 60}}
    assert minutes_due(wc, {"douyin": T0 + 10}, data, record=False) == {"douyin": [T0 - 120, T0 - 60]}
    assert minutes_due(wc, {"douyin": T0 + 10}, data) == {"douyin": [T0 - 120, T0 - 60]}
    assert minutes_due(wc, {"douyin": T0 + 10}, data) == {"douyin": []}
    wc.forget()  # judging failed: what closed is computed afresh, from the buckets that hold data
    assert minutes_due(wc, {"douyin": T0 + 10}, data) == {"douyin": [T0 - 120, T0 - 60]}


def test_a_revision_waits_for_a_tick_that_has_its_channels_event_time() -> None:
    """After a rebalance a source not read yet holds a partition's event time back: a closed window written
    meanwhile is recorded again once the partition has event time, not forgotten (found on Kafka)."""
    wc = closer(Clock(T0))
    data = {"douyin": {T0 - 120}, "taobao": {T0 - 120}}
    minutes_due(wc, {"douyin": T0 + 10, "taobao": T0 + 10}, data)
    wc.touched("douyin", "1m", T0 - 120)
    assert minutes_due(wc, {"taobao": T0 + 10}, data) == {"taobao": []}  # douyin's partition: no event time
    assert minutes_due(wc, {"douyin": T0 + 10, "taobao": T0 + 10}, data) == {
        "douyin": [T0 - 120],
        "taobao": [],
    }


def test_a_channel_that_comes_back_records_its_closed_windows_again() -> None:
    """Another worker may have revised its windows while it owned the channel."""
    wc = closer(Clock(T0))
    data = {"douyin": {T0 - 120}}
    minutes_due(wc, {"douyin": T0 + 10}, data)
    wc.touched("douyin", "1m", T0 - 180)
    wc.keep_only(lambda channel: channel != "douyin")  # its partition moved away: the new owner's to record
    wc.keep_only(lambda channel: True)  # and came back
    assert minutes_due(wc, {"douyin": T0 + 10}, data) == {"douyin": [T0 - 120]}


def test_closed_history_not_recorded_yet_is_handed_out_a_bounded_number_of_buckets_a_tick() -> None:
    """After a restart every closed bucket of the table is due; a tick takes a bounded share of them so that
    its snapshot is not held back (seen: over a minute with a million buckets), and the rest come later."""
    wc = WindowCloser(Calendar(UTC), GRACE_S, IDLE_S, STALE_S, clock=Clock(T0), backlog_per_tick=5)
    data = {ch: {T0 - 60 * k for k in range(1, 4)} for ch in ("a", "b", "c", "d")}
    watermark_of: dict[str, float] = {ch: T0 + 10.0 for ch in data}
    first = minutes_due(wc, watermark_of, data)
    # Whole histories only: "a" (3 buckets) and "b" (3 more, past the bound of 5), the others wait.
    assert first == {"a": sorted(data["a"]), "b": sorted(data["b"])}
    wc.touched("a", "1m", T0 - 60)  # a recorded channel's revision is not held back by the bound
    second = minutes_due(wc, watermark_of, data)
    assert second == {"a": [T0 - 60], "b": [], "c": sorted(data["c"]), "d": sorted(data["d"])}
    assert minutes_due(wc, watermark_of, data) == {"a": [], "b": [], "c": [], "d": []}


def test_closed_history_past_the_bound_is_not_listed_that_tick_but_a_window_without_any_is_recorded() -> None:
    """Listing every never-recorded history each tick to leave most of it out took most of a tick's time
    after a restart with a million buckets: once the tick's share is handed out, the rest is read only as far
    as its first closed start; a window with none closed is recorded at once, as before."""
    wc = WindowCloser(Calendar(UTC), GRACE_S, IDLE_S, STALE_S, clock=Clock(T0), backlog_per_tick=5)
    data = {ch: {T0 - 60 * k for k in range(1, 1001)} for ch in ("a", "b", "c")}
    data["fresh"] = {T0}  # its only minute is still open: nothing to hold back
    read: dict[str, int] = {}

    def starts(channel: str, window: str) -> Iterator[int]:
        for start in sorted(data[channel]) if window == "1m" else ():
            read[channel] = read.get(channel, 0) + 1
            yield start

    watermark_of = {ch: T0 + 10.0 for ch in data}
    due = {(ch, w): todo for ch, w, todo in wc.due(watermark_of, starts) if w == "1m"}
    for channel, window in due:
        wc.recorded(channel, window)
    # "a" (1,000 buckets) spends the share of 5; "b" and "c" wait, read no further than their first start.
    assert due == {("a", "1m"): sorted(data["a"]), ("fresh", "1m"): []}
    assert read == {"a": 1000, "b": 1, "c": 1, "fresh": 2}
    # "fresh" was recorded at once: the minute it is in, closing silent, is recorded when it closes.
    watermark_of["fresh"] = T0 + 70.0
    later = {ch: todo for ch, w, todo in wc.due(watermark_of, starts) if w == "1m" and ch == "fresh"}
    assert later == {"fresh": [T0]}
