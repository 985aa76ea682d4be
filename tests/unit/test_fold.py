"""agents.fold: validate, deduplicate, judge lateness, fold into block partials; exact across a crash."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import agents.fold
from agents.buckets import parse_partial
from agents.fold import (
    BASE_GAP,
    LOG_APPEND_TIME,
    Anchor,
    Checkpoint,
    ClockStep,
    FoldConfig,
    Partial,
    PartitionFold,
    Resume,
    encode_partial,
    resume_point,
)
from agents.partials import CEILING, BucketValue, merge, totals
from streams.codec import (
    CLICK_TYPES,
    CLICKS,
    GMV,
    IMPRESSIONS,
    N_SLOTS,
    NEW_CUSTOMERS,
    ORDERS,
    Accepted,
    decode,
)
from streams.events import MAX_MONEY, MAX_TS_MS, OVERFLOW_CAMPAIGN
from streams.windows import TOTAL, Calendar

CAL = Calendar(ZoneInfo("Asia/Shanghai"))
T0 = 1_700_000_040_000  # a minute start (2023-11-14T22:14:00Z)
#: A receive time after every record's: the worker's clock then binds no record (tests of other rules).
NOW = T0 + 10 * 86_400_000
START = Checkpoint(0, 0, 0)


@dataclass
class Rec:
    """The parts of an aiokafka ConsumerRecord the fold and the DLQ use."""

    offset: int
    timestamp: int
    value: bytes | None
    topic: str = "adpulse.clicks"
    partition: int = 0
    key: bytes | None = b"douyin"
    timestamp_type: int = 0  # CreateTime


def config(block: int = 100, grace_s: float = 60.0, skew_s: float = 3600.0) -> FoldConfig:
    return FoldConfig(
        block_records=block, grace_s=grace_s, max_future_skew_s=skew_s, max_record_bytes=65536, currency="CNY"
    )


def fold(
    cfg: FoldConfig | None = None,
    checkpoint: Checkpoint = START,
    steps: list[ClockStep] | None = None,
    topic: str = "clicks",
) -> PartitionFold:
    return PartitionFold(topic, 0, cfg or config(), CAL, checkpoint, steps or ())


def click(
    offset: int,
    event_id: str,
    ts: int,
    sent: int | None = None,
    channel: str = "douyin",
    campaign: str | None = None,
    kind: str = "click",
    count: int = 1,
) -> Rec:
    doc: dict[str, object] = {"event_id": event_id, "ts": ts, "channel": channel, "type": kind}
    if campaign is not None:
        doc["campaign"] = campaign
    if count != 1:
        doc["count"] = count
    return Rec(offset, ts if sent is None else sent, orjson.dumps(doc), key=channel.encode())


Key = tuple[str, str, int]  # channel, window, bucket start
Table = dict[Key, BucketValue]


def merge_all(table: Table, partials: list[Partial]) -> Table:
    """What the bucket agent does with partials, in order."""
    for partial in partials:
        grouped: dict[tuple[str, int], dict[str, list[int]]] = {}
        for window, start, campaign, *counts in partial.rows:
            grouped.setdefault((window, start), {})[campaign] = counts
        for (window, start), rows in grouped.items():
            key = (partial.channel, window, start)
            merged = merge(table.get(key), partial.src, partial.block, partial.upto, rows)
            if merged is not None:
                table[key] = merged
    return table


def merge_pieces(table: Table, partials: list[Partial], max_bytes: int, cap: int | None = None) -> Table:
    """What the fold stage sends (``encode_partial``) and the bucket agent reads (``parse_partial``)."""
    for partial in partials:
        for value in encode_partial(partial, max_bytes):
            assert len(value) <= max_bytes
            channel, src, block, upto, grouped = parse_partial(partial.channel.encode(), orjson.loads(value))
            for (window, start), rows in grouped.items():
                key = (channel, window, start)
                merged = merge(table.get(key), src, block, upto, rows, cap)
                if merged is not None:
                    table[key] = merged
    return table


def table_totals(table: Table) -> dict[Key, dict[str, list[int]]]:
    return {key: totals(value) for key, value in table.items()}


def recount(topic: str, values: list[bytes | None]) -> dict[Key, dict[str, list[int]]]:
    """Counts per (channel, window, start) and campaign, computed directly from accepted records."""
    result: dict[Key, dict[str, list[int]]] = {}
    for value in values:
        event = decode(topic, value, "CNY", 65536)
        assert isinstance(event, Accepted)
        ts_s = event.ts_ms // 1000
        for window in ("1m", "1h", "1d", TOTAL):
            cell = result.setdefault((event.channel, window, CAL.start(window, ts_s)), {}).setdefault(
                event.campaign, [0] * N_SLOTS
            )
            for slot, amount in event.contribution:
                cell[slot] += amount
    return result


def folded(records: list[Rec], cfg: FoldConfig | None = None) -> tuple[PartitionFold, list[Partial], list]:
    f = fold(cfg)
    out = f.process(records, NOW)
    return f, out.partials + f.flush(), out.rejects


# -- counting --------------------------------------------------------------------------------------


def test_counts_per_channel_campaign_and_window() -> None:
    records = [
        click(0, "a", T0 + 1_000, campaign="c1", kind="impression", count=10),
        click(1, "b", T0 + 2_000, campaign="c1"),
        click(2, "c", T0 + 61_000, campaign="c2", kind="impression", count=5),
        click(3, "d", T0 + 62_000, channel="taobao"),
        click(4, "e", T0 + 63_000, kind="visit"),
    ]
    f, partials, rejects = folded(records)
    assert rejects == [] and f.outcomes == {"accepted": 5, "invalid": 0, "late": 0, "duplicate": 0}
    got = table_totals(merge_all({}, partials))
    assert got == recount("clicks", [r.value for r in records])
    minute = T0 // 1000
    assert got[("douyin", "1m", minute)]["c1"][IMPRESSIONS] == 10
    assert got[("douyin", "1m", minute)]["c1"][CLICKS] == 1
    assert got[("douyin", "1m", minute + 60)]["c2"][IMPRESSIONS] == 5
    assert got[("douyin", TOTAL, 0)]["-"][2] == 1  # the visit, campaign "-"
    assert got[("taobao", "1h", CAL.start("1h", minute))] == {"-": [0, 1, 0, 0, 0, 0, 0, 0]}


def test_orders_fold_gmv_in_micros_and_new_customers() -> None:
    docs = [
        {
            "event_id": "o1",
            "ts": T0,
            "channel": "taobao",
            "order_id": "A",
            "amount": 299.99,
            "new_customer": True,
        },
        {"event_id": "o2", "ts": T0 + 5, "channel": "taobao", "order_id": "B", "amount": 0.01},
    ]
    records = [Rec(i, T0 + 10, orjson.dumps(d), topic="adpulse.orders") for i, d in enumerate(docs)]
    f = fold(topic="orders")
    f.process(records, NOW)
    got = table_totals(merge_all({}, f.flush()))
    cell = got[("taobao", "1d", CAL.start("1d", T0 // 1000))]["-"]
    assert (cell[ORDERS], cell[GMV], cell[NEW_CUSTOMERS]) == (2, 300_000_000, 1)


@st.composite
def orderly_streams(draw: st.DrawFn) -> tuple[FoldConfig, list[Rec], list[bool]]:
    """Event time trails send time by at most the grace period, so nothing is late; some exact re-sends."""
    cfg = config(block=draw(st.integers(1, 7)), grace_s=draw(st.sampled_from([0, 30, 60, 300])))
    grace_ms = int(cfg.grace_s * 1000)
    clock, records, sent_values = T0 + draw(st.integers(0, 86_400_000)), [], []
    for i in range(draw(st.integers(0, 50))):
        clock += draw(st.integers(0, 50_000))
        if sent_values and draw(st.integers(0, 4)) == 0:
            value = draw(st.sampled_from(sent_values))
        else:
            doc = {
                "event_id": f"e{i}",
                "ts": clock - draw(st.integers(0, grace_ms)),
                "channel": draw(st.sampled_from(["douyin", "taobao", "wechat"])),
                "type": draw(st.sampled_from(CLICK_TYPES)),
                "count": draw(st.integers(1, 3)),
            }
            campaign = draw(st.sampled_from([None, "c1", "c2"]))
            if campaign:
                doc["campaign"] = campaign
            value = orjson.dumps(doc)
            sent_values.append(value)
        records.append(Rec(i, clock, value))
    return cfg, records, draw(st.lists(st.booleans(), min_size=len(records), max_size=len(records)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orderly_streams())
def test_counts_equal_a_recount_and_resends_count_once(
    case: tuple[FoldConfig, list[Rec], list[bool]],
) -> None:
    cfg, records, flushes = case
    f = fold(cfg)
    partials: list[Partial] = []
    for record, flush in zip(records, flushes, strict=True):
        partials += f.process([record], NOW).partials
        if flush:
            partials += f.flush()
    partials += f.flush()
    unique = list(dict.fromkeys(r.value for r in records))
    assert f.outcomes["accepted"] == len(unique)
    assert f.outcomes["duplicate"] + f.outcomes["late"] == len(records) - len(unique)
    assert f.outcomes["invalid"] == 0
    assert table_totals(merge_all({}, partials)) == recount("clicks", unique)


# -- duplicates, lateness, the future --------------------------------------------------------------


def test_duplicates_are_counted_once_even_across_blocks() -> None:
    same = click(0, "dup", T0 + 1_000).value
    records = [Rec(i, T0 + 1_000 + i, same) for i in range(5)] + [click(5, "other", T0 + 2_000)]
    f, partials, rejects = folded(records, config(block=2))
    assert f.outcomes == {"accepted": 2, "invalid": 0, "late": 0, "duplicate": 4}
    # Every copy after the first goes to the DLQ (never dropped silently), pointing at the event_id.
    assert [(r.offset, j.reason, j.field) for r, j in rejects] == [
        (i, "duplicate", "event_id") for i in (1, 2, 3, 4)
    ]
    assert table_totals(merge_all({}, partials))[("douyin", "1m", T0 // 1000)]["-"][CLICKS] == 2


def test_same_event_id_different_channel_is_still_a_duplicate() -> None:
    f, partials, _ = folded([click(0, "x", T0), click(1, "x", T0, channel="taobao")])
    assert f.outcomes["duplicate"] == 1
    assert {p.channel for p in partials} == {"douyin"}


def test_late_beyond_grace_is_rejected_and_not_folded() -> None:
    records = [
        click(0, "a", T0),
        click(1, "b", T0 + 120_000),  # watermark T0 + 120 s: the minute T0 closed (60 s + 60 s grace)
        click(2, "late", T0 + 59_999, sent=T0 + 120_500),
    ]
    f, partials, rejects = folded(records, config(grace_s=60))
    assert f.outcomes == {"accepted": 2, "invalid": 0, "late": 1, "duplicate": 0}
    assert f.late_within_grace == 0
    assert [(r.offset, why.reason) for r, why in rejects] == [(2, "late")]
    assert rejects[0][0] is records[2]
    assert "grace" in rejects[0][1].detail
    got = table_totals(merge_all({}, partials))
    assert got[("douyin", "1m", T0 // 1000)]["-"][CLICKS] == 1
    assert got[("douyin", TOTAL, 0)]["-"][CLICKS] == 2


def test_late_within_grace_is_folded_and_counted() -> None:
    records = [
        click(0, "a", T0),
        click(1, "b", T0 + 120_000),
        click(2, "lwg", T0 + 60_000, sent=T0 + 121_000),  # minute T0+60 s closes at T0+180 s with grace
    ]
    f, partials, rejects = folded(records, config(grace_s=60))
    assert rejects == []
    assert f.outcomes["accepted"] == 3 and f.late_within_grace == 1
    assert f.watermark_ms == T0 + 120_000  # a late event does not move the watermark back
    got = table_totals(merge_all({}, partials))
    assert got[("douyin", "1m", T0 // 1000 + 60)]["-"][CLICKS] == 1


@pytest.mark.parametrize(
    ("grace_s", "ts", "late", "within_grace"),
    [
        (60, T0 + 59_999, True, False),  # minute T0: 60 + 60 s <= 120 s behind
        (60, T0 + 60_000, False, True),  # minute T0 + 60 s is open until T0 + 180 s
        (0, T0 + 119_999, True, False),  # no grace: closed as soon as the watermark reaches its end
        (0, T0 + 120_000, False, False),  # at the watermark: neither late nor behind
        (119, T0 + 0, False, True),  # 60 + 119 s > 120 s
        (120, T0 + 59_999, False, True),
    ],
)
def test_lateness_boundary(grace_s: float, ts: int, late: bool, within_grace: bool) -> None:
    f, _, rejects = folded(
        [click(0, "a", T0 + 120_000), click(1, "x", ts, sent=T0 + 130_000)], config(grace_s=grace_s)
    )
    assert f.outcomes["late"] == int(late)
    assert f.outcomes["accepted"] == 2 - int(late)
    assert [why.reason for _, why in rejects] == (["late"] if late else [])
    assert f.late_within_grace == int(within_grace)
    assert f.watermark_ms == T0 + 120_000


@pytest.mark.parametrize(
    ("ts", "sent", "received", "future"),
    [
        (T0 + 3_600_001, T0, T0, True),
        (T0 + 3_600_000, T0, T0, False),
        (T0 + 3_600_001, T0, T0 + 60_000, True),  # an earlier CreateTime bounds its own record
        (T0 + 10 * 3_600_000, 0, T0, True),  # no CreateTime: the receive time is the bound
        (T0 + 10 * 3_600_000, -1, T0, True),
        (T0 + 10 * 3_600_000, T0 + 10 * 3_600_000, T0, True),  # a matching CreateTime does not help
        (T0 + 3_600_000, T0 + 7_200_000, T0, False),  # a CreateTime after the receive time is ignored
        # A ts of 2100 passes the codec (microseconds do not: test_a_microsecond_ts_...), not the bound.
        (MAX_TS_MS, MAX_TS_MS, T0, True),
    ],
)
def test_future_beyond_skew(ts: int, sent: int, received: int, future: bool) -> None:
    f = fold(config(skew_s=3600))
    out = f.process([click(0, "f", ts, sent=sent)], received)
    partials = out.partials + f.flush()
    if future:
        assert [(r.offset, why.reason) for r, why in out.rejects] == [(0, "future")]
        assert "ahead of when the record was sent or received" in out.rejects[0][1].detail
        assert f.outcomes == {"accepted": 0, "invalid": 1, "late": 0, "duplicate": 0}
        assert partials == [] and f.watermark_ms == 0
    else:
        assert out.rejects == [] and f.outcomes["accepted"] == 1


def test_watermark_is_held_back_by_the_send_and_the_receive_time() -> None:
    f = fold(config(skew_s=3600))
    f.process([click(0, "ahead", T0 + 1_800_000, sent=T0)], T0 + 1_000)
    assert f.watermark_ms == T0  # a tracker cannot push event time past the moment it sent the record
    f.process([click(1, "b", T0 + 5_000, sent=T0 + 10_000)], T0 + 11_000)
    assert f.watermark_ms == T0 + 5_000
    f.process([click(2, "c", T0 + 1_000, sent=T0 + 20_000)], T0 + 21_000)
    assert f.watermark_ms == T0 + 5_000  # behind the watermark: no change
    assert f.late_within_grace == 1
    f.process([click(3, "fast", T0 + 1_800_000, sent=T0 + 1_800_000)], T0 + 30_000)
    assert f.watermark_ms == T0 + 30_000  # nor past the moment adpulse received it


def test_a_fast_tracker_makes_no_event_of_a_correct_one_late() -> None:
    """A tracker host 3 minutes fast (its CreateTime too) shares a channel with a correct tracker: the
    correct tracker's on-time events all count (when the watermark followed CreateTime, 999 of 1,000
    went to the DLQ as late)."""
    records: list[Rec] = []
    correct: set[int] = set()
    for i in range(1_000):
        now = T0 + i * 200  # 5 events a second, 200 s of event time
        correct.add(len(records))
        records.append(click(len(records), f"ok{i}", now - 50, sent=now - 40))
        if i % 10 == 0:
            ahead = now + 180_000
            records.append(click(len(records), f"fast{i}", ahead, sent=ahead))
    f = fold(config(block=50, grace_s=60, skew_s=3600))
    rejects = []
    for begin in range(0, len(records), 20):  # fetched 20 at a time, right after the last was sent
        batch = records[begin : begin + 20]
        out = f.process(batch, max(r.timestamp for r in batch if r.offset in correct) + 30)
        rejects += out.rejects
    assert rejects == []
    assert f.outcomes == {"accepted": len(records), "invalid": 0, "late": 0, "duplicate": 0}
    assert f.watermark_ms <= T0 + 999 * 200 + 30  # never past the worker's clock


def test_a_record_stamped_in_2100_is_future_and_moves_nothing() -> None:
    year_2100 = 4_102_444_800_000
    f = fold(config(block=4, grace_s=60, skew_s=3600))
    records = [click(0, "a", T0), click(1, "2100", year_2100, sent=year_2100)]
    records += [click(i, f"e{i}", T0 + i * 30_000) for i in range(2, 12)]
    out = f.process(records, T0 + 400_000)
    assert [(r.offset, why.reason) for r, why in out.rejects] == [(1, "future")]
    assert f.outcomes == {"accepted": 11, "invalid": 1, "late": 0, "duplicate": 0}
    assert [c.watermark_ms for c in out.checkpoints] == [T0 + 90_000, T0 + 210_000]
    # Not remembered for deduplication either: the dedup rebuild point moves on past its offset.
    assert out.checkpoints[-1].rebuild_from == 4


def test_one_event_far_ahead_does_not_pin_the_dedup_rebuild() -> None:
    """An event 50 minutes ahead stays in the dedup set until its minute closes; it travels in the
    checkpoint, so a restart re-reads only the grace horizon, not the 50 minutes of records since."""
    cfg = config(block=10, grace_s=60, skew_s=3600)
    ahead = click(3, "ahead", T0 + 50 * 60_000, sent=T0 + 3_000)
    records = [click(i, f"e{i}", T0 + i * 3_000) for i in range(3)] + [ahead]
    records += [click(i, f"e{i}", T0 + i * 3_000) for i in range(4, 100)]
    records.append(Rec(100, T0 + 300_000, ahead.value))  # the same event again, after the checkpoints
    whole = fold(cfg)
    checkpoints = whole.process(records, NOW).checkpoints
    assert whole.outcomes == {"accepted": 100, "invalid": 0, "late": 0, "duplicate": 1}
    last = checkpoints[-1]
    assert last.rebuild_from > 3 and last.ahead == ((T0 // 1000 + 50 * 60, 3, ("ahead",)),)
    restarted = fold(cfg, last)
    restarted.rebuild(records[last.rebuild_from : last.offset])
    restarted.finish_rebuild()
    restarted.process(records[last.offset :], NOW)
    assert restarted.outcomes["duplicate"] == 1 and restarted.dedup_size == whole.dedup_size


def test_many_events_ahead_are_reread_rather_than_carried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.fold.CARRY_MAX", 2)
    records = [click(i, f"ahead{i}", T0 + 50 * 60_000, sent=T0) for i in range(3)]
    records += [click(i, f"e{i}", T0 + i * 3_000) for i in range(3, 100)]
    checkpoints = fold(config(block=10)).process(records, NOW).checkpoints
    assert checkpoints[-1].rebuild_from == 0 and checkpoints[-1].ahead == ()


def test_a_log_append_time_topic_is_bounded_by_the_broker_not_the_worker() -> None:
    f = fold(config(skew_s=3600))
    broker = T0 + 60_000
    records = [
        Rec(0, broker, click(0, "a", T0 + 30_000).value, timestamp_type=LOG_APPEND_TIME),
        Rec(1, broker, click(1, "b", broker + 120_000).value, timestamp_type=LOG_APPEND_TIME),
        Rec(2, broker, click(2, "c", broker + 3_600_001).value, timestamp_type=LOG_APPEND_TIME),
    ]
    out = f.process(records, NOW)  # the worker reads it much later: its clock plays no part
    assert [(r.offset, why.reason) for r, why in out.rejects] == [(2, "future")]
    assert f.watermark_ms == broker
    assert out.steps == []


def test_batches_judged_by_the_receive_time_are_reported_as_clock_steps() -> None:
    f = fold(config(skew_s=60))
    assert f.process([click(0, "a", T0), click(1, "b", T0 + 1)], T0 + 5).steps == []  # nothing ahead
    ahead = f.process([click(2, "c", T0 + 2), click(3, "d", T0 + 90_000), click(4, "e", T0 + 3)], T0 + 10)
    assert ahead.steps == [ClockStep(2, 4, T0 + 10)]
    assert [why.reason for _, why in ahead.rejects] == ["future"]  # 90 s ahead of the receive time
    # A CreateTime before the receive time is what binds: the receive time did not decide anything.
    assert f.process([click(5, "f", T0 + 50_000, sent=T0 + 4)], T0 + 20).steps == []


def test_a_replay_judges_a_fast_clock_by_the_first_runs_receive_time() -> None:
    """The first run judges records of a fast tracker by when it received them; the replay after a crash
    runs minutes later. With the first run's steps it decides the same; without, it would not."""
    cfg = config(block=4, grace_s=0, skew_s=60)
    records = [
        click(0, "a", T0 + 1_000),
        click(1, "fast", T0 + 120_000, sent=T0 + 120_000),  # 2 minutes fast: a future reject at T0 + 2 s
        click(2, "b", T0 + 2_000),
        click(3, "c", T0 + 3_000),
        click(4, "d", T0 + 61_000, sent=T0 + 61_000),  # ahead: the watermark stops at the receive time
        click(5, "on time", T0 + 59_000, sent=T0 + 59_500),
        click(6, "fast", T0 + 62_000),  # the fast tracker's event again, now with a right clock
    ]
    first = fold(cfg)
    out_a = first.process(records[:4], T0 + 2_000)
    out_b = first.process(records[4:], T0 + 59_900)
    assert [why.reason for _, why in out_a.rejects + out_b.rejects] == ["future"]
    assert first.outcomes == {"accepted": 6, "invalid": 1, "late": 0, "duplicate": 0}
    (checkpoint,) = out_a.checkpoints + out_b.checkpoints
    steps = out_a.steps + out_b.steps
    assert steps == [ClockStep(0, 3, T0 + 2_000), ClockStep(4, 6, T0 + 59_900)]

    def replay(with_steps: list[ClockStep]) -> dict[str, int]:
        second = fold(cfg, checkpoint, with_steps)
        second.rebuild(records[checkpoint.rebuild_from : checkpoint.offset])
        second.finish_rebuild()
        second.process(records[checkpoint.offset :], T0 + 600_000)  # ten minutes later
        return second.outcomes

    assert replay(steps) == {"accepted": 3, "invalid": 0, "late": 0, "duplicate": 0}
    # Without them the "fast" id would be remembered (a duplicate now) and "on time" judged late.
    assert replay([]) == {"accepted": 1, "invalid": 0, "late": 1, "duplicate": 1}


def test_a_missing_or_wrong_key_does_not_matter() -> None:
    """Trackers SHOULD key by channel; the channel in the value is what counts."""
    records = [click(0, "a", T0), click(1, "b", T0 + 1), click(2, "c", T0 + 2)]
    records[0].key, records[1].key = None, b"taobao"
    f, partials, rejects = folded(records)
    assert rejects == [] and f.outcomes["accepted"] == 3
    assert table_totals(merge_all({}, partials)) == recount("clicks", [r.value for r in records])
    assert {p.channel for p in partials} == {"douyin"}


def test_rejects_keep_the_original_record_for_the_dlq() -> None:
    records = [
        Rec(0, T0, b"{not json", topic="adpulse.clicks", partition=0, key=b"douyin"),
        Rec(1, T0, orjson.dumps({"event_id": "x", "ts": T0, "channel": "douyin", "type": "buy"}), key=None),
        Rec(2, T0, None, key=b"k"),
        Rec(3, T0, b"x" * 70_000),
    ]
    f, partials, rejects = folded(records)
    assert [(r.offset, why.reason) for r, why in rejects] == [
        (0, "not_json"),
        (1, "invalid"),
        (2, "invalid"),
        (3, "oversized"),
    ]
    assert all(r is records[r.offset] for r, _ in rejects)
    assert f.outcomes == {"accepted": 0, "invalid": 4, "late": 0, "duplicate": 0}
    assert partials == []


# -- hostile records never stop the fold ----------------------------------------------------------


def test_a_microsecond_ts_with_a_matching_send_time_is_rejected_not_a_crash() -> None:
    """Before, it was accepted (not ahead of its send time) and the flush raised in the calendar."""
    records = [click(0, "a", T0), click(1, "micro", T0 * 1000, sent=T0 * 1000), click(2, "b", T0 + 1)]
    f, partials, rejects = folded(records)
    assert [(r.offset, why.reason) for r, why in rejects] == [(1, "invalid")]
    assert "2100" in rejects[0][1].detail
    assert table_totals(merge_all({}, partials)) == recount("clicks", [records[0].value, records[2].value])


class _BrokenCalendar(Calendar):
    """A calendar that cannot place one minute: stands in for any failure while folding one record."""

    def __init__(self, bad_minute: int) -> None:
        super().__init__(ZoneInfo("Asia/Shanghai"))
        self.bad_minute = bad_minute
        self.hour_start = self._checked  # type: ignore[method-assign]

    def _checked(self, minute: int) -> int:
        if minute == self.bad_minute:
            raise OverflowError("date value out of range")
        return self._hour_start(minute)


def test_a_record_whose_handling_raises_goes_to_the_dlq_as_error_and_the_fold_goes_on() -> None:
    bad_minute = (T0 + 120_000) // 1000
    f = PartitionFold("clicks", 0, config(), _BrokenCalendar(bad_minute), START)
    records = [click(0, "a", T0), click(1, "boom", T0 + 120_000), click(2, "b", T0 + 1)]
    out = f.process(records, NOW)
    assert [(r.offset, why.reason) for r, why in out.rejects] == [(1, "error")]
    assert out.rejects[0][1].detail.startswith("OverflowError")
    assert f.outcomes == {"accepted": 2, "invalid": 1, "late": 0, "duplicate": 0}
    partials = out.partials + f.flush()  # the flush cannot fail on the bad minute: nothing was folded there
    assert table_totals(merge_all({}, partials)) == recount("clicks", [records[0].value, records[2].value])


def test_an_exception_in_decode_is_an_error_reject_in_process_and_skipped_in_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = agents.fold.decode

    def fragile(topic: str, value: bytes | None, currency: str, max_bytes: int) -> object:
        if value == b"boom":
            raise RecursionError("maximum recursion depth exceeded")
        return real(topic, value, currency, max_bytes)

    monkeypatch.setattr(agents.fold, "decode", fragile)
    cfg = config(block=3)
    records = [click(0, "a", T0), Rec(1, T0, b"boom"), click(2, "b", T0 + 1), click(3, "c", T0 + 2)]
    whole = fold(cfg)
    out = whole.process(records, NOW)
    assert [(r.offset, why.reason) for r, why in out.rejects] == [(1, "error")]
    assert whole.outcomes == {"accepted": 3, "invalid": 1, "late": 0, "duplicate": 0}
    (checkpoint,) = out.checkpoints
    restarted = fold(cfg, checkpoint)
    restarted.rebuild(records[checkpoint.rebuild_from : checkpoint.offset])
    restarted.finish_rebuild()
    restarted.process(records[checkpoint.offset :], NOW)
    assert restarted.dedup_size == whole.dedup_size == 3


def test_campaigns_beyond_the_cap_are_counted_under_other_per_block() -> None:
    cfg = replace(config(block=10), max_campaigns_per_channel=2)
    records = [
        click(0, "e0", T0, campaign="a"),
        click(1, "e1", T0, campaign="b"),
        click(2, "e2", T0),  # no campaign: never counts against the cap
        click(3, "e3", T0, campaign="c"),
        click(4, "e4", T0 + 60_000, campaign="d"),
        click(5, "e5", T0 + 60_000, campaign="a"),
        click(6, "e6", T0, campaign="c", channel="taobao"),  # another channel has its own cap
        click(10, "e10", T0 + 120_000, campaign="d"),  # a new block starts afresh
    ]
    f = fold(cfg)
    out = f.process(records, NOW)
    assert out.overflow == {"douyin": 2}
    partials = out.partials + f.flush()
    campaigns = {(p.channel, p.block): {row[2] for row in p.rows} for p in partials}
    assert campaigns == {
        ("douyin", 0): {"a", "b", "-", OVERFLOW_CAMPAIGN},
        ("taobao", 0): {"c"},
        ("douyin", 1): {"d"},
    }
    got = table_totals(merge_all({}, partials))
    assert got[("douyin", TOTAL, 0)] == {
        "a": [0, 2, 0, 0, 0, 0, 0, 0],
        "b": [0, 1, 0, 0, 0, 0, 0, 0],
        "-": [0, 1, 0, 0, 0, 0, 0, 0],
        OVERFLOW_CAMPAIGN: [0, 2, 0, 0, 0, 0, 0, 0],
        "d": [0, 1, 0, 0, 0, 0, 0, 0],
    }


def test_a_partial_with_thousands_of_campaigns_goes_out_in_pieces_under_the_limit() -> None:
    """Before, one message of > 1 MB: the send raised MessageSizeTooLargeError and the stage stopped."""
    cfg = replace(config(block=10_000), max_campaigns_per_channel=5000)
    records = [
        click(i, f"e{i}", T0 + (i // 1000) * 60_000, campaign=f"{i:05d}-" + "长" * 100) for i in range(3000)
    ]
    f, partials, rejects = folded(records, cfg)
    assert rejects == []
    (partial,) = partials
    limit = 1024 * 1024 - 8 * 1024
    assert len(orjson.dumps(partial.rows)) > 1024 * 1024
    values = encode_partial(partial, limit)
    assert len(values) > 1 and all(len(v) <= limit for v in values)
    assert table_totals(merge_pieces({}, partials, limit)) == recount("clicks", [r.value for r in records])
    assert encode_partial(partial, limit) == values  # the same pieces on a re-send


def test_money_past_64_bits_saturates_instead_of_breaking_the_partial() -> None:
    """Before, 19 orders of the largest amount overflowed the JSON encoder and stopped the stage."""
    orders = [
        Rec(
            i,
            T0,
            orjson.dumps(
                {"event_id": f"o{i}", "ts": T0, "channel": "taobao", "order_id": f"o{i}", "amount": MAX_MONEY}
            ),
        )
        for i in range(30)
    ]
    f = PartitionFold("orders", 0, config(), CAL, START)
    out = f.process(orders, NOW)
    partials = out.partials + f.flush()
    assert all(len(encode_partial(p, 1024 * 1024)) == 1 for p in partials)
    got = table_totals(merge_all({}, partials))
    assert got[("taobao", TOTAL, 0)]["-"][GMV] == CEILING
    assert got[("taobao", TOTAL, 0)]["-"][ORDERS] == 30


# -- blocks, checkpoints, partials ---------------------------------------------------------------


def test_checkpoints_at_block_multiples_carry_the_watermark() -> None:
    records = [click(i, f"e{i}", T0 + i * 7_000) for i in range(23)]
    f = fold(config(block=5))
    seen: list[Checkpoint] = []
    watermark_before: dict[int, int] = {}
    for record in records:
        watermark_before[record.offset] = f.watermark_ms
        seen += f.process([record], NOW).checkpoints
    assert [c.offset for c in seen] == [5, 10, 15, 20]
    for checkpoint in seen:
        assert checkpoint.watermark_ms == watermark_before[checkpoint.offset]
        assert checkpoint.rebuild_from <= checkpoint.offset
    # One batch gives the same checkpoints.
    assert fold(config(block=5)).process(records, NOW).checkpoints == seen


def test_a_closed_block_publishes_its_partials_with_its_last_offset() -> None:
    records = [click(i, f"e{i}", T0 + i, channel=["douyin", "taobao"][i % 2]) for i in range(7)]
    f = fold(config(block=4))
    out = f.process(records, NOW)
    assert [c.offset for c in out.checkpoints] == [4]
    assert [(p.channel, p.src, p.block, p.upto) for p in out.partials] == [
        ("douyin", "clicks/0", 0, 3),
        ("taobao", "clicks/0", 0, 3),
    ]
    rest = f.flush()
    assert [(p.channel, p.block, p.upto) for p in rest] == [("douyin", 1, 6), ("taobao", 1, 6)]
    assert f.flush() == []  # nothing changed since
    douyin = {(w, s, c): counts for w, s, c, *counts in rest[0].rows}
    minute = T0 // 1000
    assert set(douyin) == {
        ("1m", minute, "-"),
        ("1h", CAL.start("1h", minute), "-"),
        ("1d", CAL.start("1d", minute), "-"),
        (TOTAL, 0, "-"),
    }
    assert all(counts[CLICKS] == 2 for counts in douyin.values())  # offsets 4 and 6: absolute block totals


def test_partials_are_absolute_block_totals() -> None:
    f = fold(config(block=10))
    f.process([click(0, "a", T0)], NOW)
    first = f.flush()
    f.process([click(1, "b", T0 + 1)], NOW)
    second = f.flush()
    assert first[0].rows[0][3 + CLICKS] == 1 and second[0].rows[0][3 + CLICKS] == 2
    assert (first[0].upto, second[0].upto) == (0, 1)


def test_an_offset_gap_jumps_to_the_right_block() -> None:
    f = fold(config(block=10))
    out = f.process([click(0, "a", T0), click(1, "b", T0 + 1), click(37, "c", T0 + 2)], NOW)
    assert [c.offset for c in out.checkpoints] == [30]
    assert f.block == 3 and f.position == 38
    assert [(p.block, p.upto) for p in out.partials] == [(0, 1)]


def test_redelivered_records_are_ignored() -> None:
    records = [click(i, f"e{i}", T0 + i) for i in range(15)]
    f = fold(config(block=4))
    partials = f.process(records[:10], NOW).partials
    again = f.process(records[5:15], NOW)
    partials += again.partials + f.flush()
    assert f.outcomes == {"accepted": 15, "invalid": 0, "late": 0, "duplicate": 0}
    assert f.position == 15
    assert table_totals(merge_all({}, partials)) == recount("clicks", [r.value for r in records])
    assert f.process(records, NOW).partials == [] and f.outcomes["accepted"] == 15


def test_dedup_forgets_closed_minutes_at_block_boundaries() -> None:
    f = fold(config(block=2, grace_s=0))
    f.process([click(0, "old", T0), click(1, "x", T0 + 1)], NOW)
    assert f.dedup_size == 2
    f.process([click(2, "new", T0 + 180_000), click(3, "y", T0 + 180_001)], NOW)  # block 1
    f.process([click(4, "z", T0 + 180_002)], NOW)  # block 2 starts: the minute T0 is evicted
    assert f.dedup_size == 3
    f.process([click(5, "old", T0 + 5, sent=T0 + 180_010)], NOW)
    assert f.outcomes["late"] == 1 and f.outcomes["duplicate"] == 0  # forgotten, but still not counted


def test_resume_from_a_checkpoint_starts_at_its_block() -> None:
    checkpoint = Checkpoint(offset=20, watermark_ms=T0 + 90_000, rebuild_from=20)
    f = fold(config(block=10), checkpoint)
    assert (f.block, f.position, f.watermark_ms) == (2, 20, T0 + 90_000)
    out = f.process([click(19, "skipped", T0 + 100_000), click(20, "a", T0 + 100_000)], NOW)
    assert out.checkpoints == [] and f.outcomes["accepted"] == 1
    assert [(p.block, p.upto) for p in f.flush()] == [(2, 20)]


def test_a_future_record_does_not_turn_a_later_valid_one_into_a_duplicate_after_restart() -> None:
    """The uninterrupted run never remembers a "future" reject; the rebuild must not either."""
    cfg = config(block=4, skew_s=3600)
    records = [
        click(0, "a", T0),
        click(1, "x", T0 + 2 * 3_600_000, sent=T0),  # rejected: two hours ahead of its send time
        click(2, "b", T0 + 1),
        click(3, "c", T0 + 2),
        click(4, "d", T0 + 3),
        click(5, "x", T0 + 4),  # a valid event that happens to reuse the id
    ]
    whole = fold(cfg)
    checkpoints = []
    for record in records:
        checkpoints += whole.process([record], NOW).checkpoints
    assert whole.outcomes == {"accepted": 5, "invalid": 1, "late": 0, "duplicate": 0}
    (checkpoint,) = checkpoints
    restarted = fold(cfg, checkpoint)
    restarted.rebuild(records[checkpoint.rebuild_from : checkpoint.offset])
    restarted.finish_rebuild()
    restarted.process(records[checkpoint.offset :], NOW)
    assert restarted.outcomes == {"accepted": 2, "invalid": 0, "late": 0, "duplicate": 0}


# -- where a partition resumes -------------------------------------------------------------------

SAVED = Checkpoint(offset=4_000, watermark_ms=T0, rebuild_from=3_500)


@pytest.mark.parametrize(
    ("saved", "committed", "log", "expected"),
    [
        (SAVED, 4_000, (0, 9_000), Resume(SAVED)),
        (SAVED, None, (0, 4_000), Resume(SAVED)),  # nothing new since: the log ends at the checkpoint
        # Redis lost its last writes after the commit: the checkpoint, not the commit (watermark 0, no dedup).
        (SAVED, 6_000, (0, 9_000), Resume(SAVED, "behind")),
        # The topic was recreated: the saved offset is past the end of the new log.
        (SAVED, 4_000, (0, 1_200), Resume(Checkpoint(0, 0, 0, 4 + BASE_GAP), "recreated", keep_steps=False)),
        (
            Checkpoint(2_000, T0, 2_000, base=7),
            None,
            (0, 10),
            Resume(Checkpoint(0, 0, 0, 7 + 2 + BASE_GAP), "recreated", keep_steps=False),
        ),
        # Retention deleted records past the checkpoint before they were read.
        (SAVED, 4_000, (5_000, 9_000), Resume(Checkpoint(5_000, T0, 5_000), "expired")),
        (None, None, (0, 9_000), Resume(Checkpoint(0, 0, 0), keep_steps=False)),
        (None, None, (300, 9_000), Resume(Checkpoint(300, 0, 300), keep_steps=False)),
        (None, 6_000, (0, 9_000), Resume(Checkpoint(6_000, 0, 6_000), "no_checkpoint", keep_steps=False)),
        (None, 6_000, (0, 10), Resume(Checkpoint(0, 0, 0, 6 + BASE_GAP), "recreated", keep_steps=False)),
        (None, 6_000, (7_000, 9_000), Resume(Checkpoint(7_000, 0, 7_000), "expired", keep_steps=False)),
    ],
)
def test_resume_point(
    saved: Checkpoint | None, committed: int | None, log: tuple[int, int], expected: Resume
) -> None:
    assert resume_point(saved, committed, *log, block_records=1_000) == expected


def test_a_recreated_topic_is_counted_in_blocks_the_table_takes_as_newer() -> None:
    """The old incarnation's blocks stay folded in the table; the new offsets start again at 0."""
    cfg = config(block=4)
    old = fold(cfg)
    old_records = [click(i, f"old{i}", T0 + i) for i in range(10)]
    partials = old.process(old_records, NOW).partials + old.flush()
    saved = Checkpoint(8, old.watermark_ms, 8)
    resume = resume_point(saved, 8, 0, 3, cfg.block_records)
    assert resume.problem == "recreated"
    new = fold(cfg, resume.checkpoint)
    new_records = [click(i, f"new{i}", T0 + 60_000 + i) for i in range(3)]
    partials += new.process(new_records, NOW).partials + new.flush()
    assert table_totals(merge_all({}, partials)) == recount(
        "clicks", [r.value for r in old_records + new_records]
    )


# -- the anchor: which log a checkpoint was taken on ------------------------------------------------


def test_a_checkpoint_is_anchored_at_the_record_that_closed_its_block() -> None:
    records = [click(i, f"e{i}", T0 + i) for i in range(7)]
    (checkpoint,) = fold(config(block=5)).process(records, NOW).checkpoints
    assert checkpoint.offset == 5
    anchor = Anchor.of(records[5])
    assert checkpoint.anchor == anchor
    assert anchor.verdict(records[5], 7) is True


def test_an_anchor_tells_another_log_from_the_one_it_was_taken_on() -> None:
    old = click(20, "old20", T0 + 20)
    anchor = Anchor.of(old)
    # A recreated topic refilled past the checkpoint: another record at the same offset.
    assert anchor.verdict(click(20, "new20", T0 + 20), 30) is False
    assert anchor.verdict(replace(old, timestamp=old.timestamp + 1), 30) is False
    assert anchor.verdict(replace(old, key=b"taobao"), 30) is False
    # Key and value do not trade bytes; a null key is no empty one.
    assert Anchor.of(replace(old, key=b"d", value=b"ouyin" + (old.value or b""))) != anchor
    assert Anchor.of(replace(old, key=None)) != Anchor.of(replace(old, key=b""))
    # No record at the offset, the next one later: another log (the old one had a record there).
    assert anchor.verdict(replace(old, offset=21), 30) is False
    # The log ends at or before the anchor.
    assert anchor.verdict(None, 20) is False
    assert anchor.verdict(None, 5) is False
    # Nothing read from a log that reaches past it, or an unknown end: no evidence either way.
    assert anchor.verdict(None, 21) is None
    assert anchor.verdict(None, None) is None
    assert anchor.verdict(old, 21) is True


def test_a_checkpoint_reads_back_with_its_anchor_and_without_one() -> None:
    anchor = Anchor.of(click(20, "e20", T0 + 20))
    checkpoint = Checkpoint(20, T0, 12, base=3, ahead=((1, 15, ("a", "b")),), anchor=anchor)
    assert Checkpoint.from_fields(orjson.loads(orjson.dumps(checkpoint.fields()))) == checkpoint
    bare = Checkpoint(0, 0, 0)
    assert "anchor" not in bare.fields()
    assert Checkpoint.from_fields(orjson.loads(orjson.dumps(bare.fields()))) == bare
    # As an earlier version saved it: no base, ahead or anchor.
    legacy = {"offset": 20, "watermark_ms": T0, "rebuild_from": 12, "at": 1.5}
    assert Checkpoint.from_fields(legacy) == Checkpoint(20, T0, 12)


@pytest.mark.parametrize(
    ("same_log", "expected"),
    [
        (True, Resume(SAVED)),
        (None, Resume(SAVED)),  # old checkpoints without an anchor: the offsets decide, as before
        (False, Resume(Checkpoint(0, 0, 0, 4 + BASE_GAP), "recreated", keep_steps=False)),
    ],
)
def test_a_log_without_the_anchor_is_a_recreated_topic(same_log: bool | None, expected: Resume) -> None:
    """The new log already holds more records than the checkpoint: only the anchor tells it apart."""
    assert resume_point(SAVED, 4_000, 0, 9_000, 1_000, same_log) == expected


# -- the key property: a crash and a restart from the checkpoint change nothing --------------------

KINDS = ["new"] * 6 + ["resend"] * 3 + ["late", "ahead", "nosent", "invalid", "future"]
FAST = ["fast", "fast", "fastnosent"]  # trackers whose clocks run up to 5 minutes fast
CHANNELS = ("douyin", "taobao", "wechat")
CAMPAIGNS = (None, "c1", "c2")


@st.composite
def crash_cases(draw: st.DrawFn, kinds: tuple[str, ...], log_append: bool = False) -> dict[str, object]:
    """A partition's records with re-sends, late, invalid, ahead and (optionally) future ones and ones
    from fast clocks; when the first run received each fetch; where it crashes; when the replay runs."""
    cfg = config(block=draw(st.integers(2, 6)), grace_s=draw(st.sampled_from([0, 30, 60, 120])), skew_s=60)
    grace_ms, skew_ms = int(cfg.grace_s * 1000), int(cfg.max_future_skew_s * 1000)
    clock = T0 + draw(st.integers(0, 86_400_000))
    records: list[Rec] = []
    values: list[bytes] = []
    actions: list[tuple[int, int, bool]] = []
    appended: list[int] = []  # the true time each record reached the broker
    n = draw(st.integers(0, 45))
    for i in range(n):
        # Few draws per record keep generation cheap: one packs channel, type, count and campaign.
        clock += draw(st.integers(0, 40_000))
        kind = draw(st.sampled_from(kinds))
        spread = draw(st.integers(0, 600_000))
        shape = draw(st.integers(0, 3 * 4 * 3 * 3 - 1))
        action = draw(st.integers(0, 17))
        actions.append((action % 3, action // 3 % 3, action >= 9))  # fetched run, first run, flush
        sent = clock
        if kind == "resend" and values:
            value = values[spread % len(values)]
        elif kind == "invalid":
            value = b"{" if spread % 2 else orjson.dumps({"event_id": f"e{i}", "ts": clock})
        else:
            ts = {
                "late": clock - spread,
                "ahead": clock + spread % (skew_ms + 1),
                "future": clock + skew_ms + 1 + spread % 120_000,
                "fast": clock + spread % 300_000,
                "fastnosent": clock + spread % 300_000,
            }.get(kind, clock - spread % (grace_ms + 30_001))
            if kind in ("nosent", "fastnosent"):
                sent = -(spread % 2)
            elif kind == "fast":
                sent = ts + spread % 1000  # its CreateTime runs as fast as its event clock
            doc: dict[str, object] = {
                "event_id": f"e{i}",
                "ts": ts,
                "channel": CHANNELS[shape % 3],
                "type": CLICK_TYPES[shape // 3 % 4],
                "count": 1 + shape // 12 % 3,
            }
            campaign = CAMPAIGNS[shape // 36]
            if campaign:
                doc["campaign"] = campaign
            value = orjson.dumps(doc)
            values.append(value)
        if log_append:
            records.append(Rec(i, clock, value, timestamp_type=LOG_APPEND_TIME))
        else:
            records.append(Rec(i, sent, value))
        appended.append(clock)
    return {
        "cfg": cfg,
        "records": records,
        "actions": actions,
        "appended": appended,
        "delays": [draw(st.integers(0, 3_000)) for _ in range(n)],
        "replay_delay": draw(st.sampled_from([0, 1, 5_000, 60_000, 3_600_000])),
        "crash": draw(st.integers(0, n)),
        "older_checkpoint": draw(st.integers(0, 3)) == 0,
        "pick": draw(st.integers(0, 10**6)),
        "redeliver": draw(st.integers(0, 3)),
    }


Decision = tuple[str, int, str | None]


def fetch_clocks(appended: list[int], delays: list[int], ends: list[bool]) -> list[int]:
    """The receive time of each record: when the fetch holding it (ending where ``ends`` says) returned."""
    clocks: list[int] = []
    batch: list[int] = []
    for i, end in enumerate(ends):
        batch.append(i)
        if end or i == len(ends) - 1:
            received = max(appended[j] + delays[j] for j in batch)
            clocks += [received] * len(batch)
            batch = []
    return clocks


def one_by_one(
    f: PartitionFold, records: list[Rec], flushes: list[bool], clocks: list[int]
) -> tuple[list[Partial], list[Checkpoint], dict[int, Decision], list[ClockStep]]:
    """Feed records one at a time, each at its receive time, flushing where told; note each decision."""
    partials: list[Partial] = []
    checkpoints: list[Checkpoint] = []
    steps: list[ClockStep] = []
    decisions: dict[int, Decision] = {}
    for record, flush, received in zip(records, flushes, clocks, strict=True):
        before, lwg = dict(f.outcomes), f.late_within_grace
        out = f.process([record], received)
        partials += out.partials
        checkpoints += out.checkpoints
        steps += out.steps
        changed = [k for k in f.outcomes if f.outcomes[k] != before[k]]
        if changed:
            (outcome,) = changed
            assert f.outcomes[outcome] == before[outcome] + 1
            reasons = [why.reason for _, why in out.rejects]
            decisions[record.offset] = (outcome, f.late_within_grace - lwg, reasons[0] if reasons else None)
        else:
            assert out.rejects == []
        if flush:
            partials += f.flush()
    return partials, checkpoints, decisions, steps


def batched(
    f: PartitionFold, records: list[Rec], actions: list[int], clocks: list[int]
) -> tuple[list[Partial], list[Checkpoint], list[ClockStep]]:
    """Feed records in fetches: action 0 continues the fetch, 1 ends it, 2 ends it and flushes."""
    partials: list[Partial] = []
    checkpoints: list[Checkpoint] = []
    steps: list[ClockStep] = []
    batch: list[Rec] = []
    for i, (record, action) in enumerate(zip(records, actions, strict=True)):
        batch.append(record)
        if action or i == len(records) - 1:
            out = f.process(batch, clocks[i])
            partials += out.partials
            checkpoints += out.checkpoints
            steps += out.steps
            batch = []
            if action == 2:
                partials += f.flush()
    return partials, checkpoints, steps


def check_restart_changes_nothing(case: dict[str, object]) -> None:
    cfg: FoldConfig = case["cfg"]  # type: ignore[assignment]
    records: list[Rec] = case["records"]  # type: ignore[assignment]
    crash: int = case["crash"]  # type: ignore[assignment]
    actions: list[tuple[int, int, bool]] = case["actions"]  # type: ignore[assignment]
    appended: list[int] = case["appended"]  # type: ignore[assignment]
    delays: list[int] = case["delays"]  # type: ignore[assignment]
    flushes = [a[2] for a in actions]
    # The first run receives its fetches as they end; the replay runs after the crash, later.
    clocks = fetch_clocks(appended, delays, [a[1] > 0 for a in actions])
    crashed_at = max(clocks[:crash], default=T0)
    later = [max(crashed_at, t) + case["replay_delay"] for t in appended]  # type: ignore[operator]

    # Folding in fetches decides as folding record by record at the same receive times.
    whole = fold(cfg)
    partials_whole, checkpoints_whole, decisions_whole, _ = one_by_one(whole, records, flushes, clocks)
    partials_whole += whole.flush()
    assert table_totals(merge_all({}, partials_whole)) == recount(
        "clicks", [r.value for r in records if decisions_whole[r.offset][0] == "accepted"]
    )
    fetched = fold(cfg)
    partials_fetched, checkpoints_fetched, _ = batched(fetched, records, [a[1] for a in actions], clocks)
    partials_fetched += fetched.flush()
    assert checkpoints_fetched == checkpoints_whole
    assert table_totals(merge_all({}, partials_fetched)) == table_totals(merge_all({}, partials_whole))
    assert fetched.outcomes == whole.outcomes

    # The first run dies after ``crash`` records; what it had not flushed is lost. It persisted the clock
    # steps of every fetch it folded (the stage writes them before it publishes anything).
    first = fold(cfg)
    partials_first, checkpoints_first, steps_first = batched(
        first, records[:crash], [a[1] for a in actions[:crash]], clocks[:crash]
    )
    candidates = [START, *checkpoints_first]
    checkpoint = candidates[-1]
    if case["older_checkpoint"]:  # the commit of the newest checkpoints may not have happened yet
        checkpoint = candidates[case["pick"] % len(candidates)]  # type: ignore[operator]

    second = fold(cfg, checkpoint, [s for s in steps_first if s.last >= checkpoint.rebuild_from])
    if checkpoint.rebuild_from < checkpoint.offset:
        second.rebuild(records[checkpoint.rebuild_from : checkpoint.offset])
        second.finish_rebuild()
    begin = max(0, checkpoint.offset - case["redeliver"])  # type: ignore[operator]
    partials_second, checkpoints_second, decisions_second, _ = one_by_one(
        second, records[begin:], flushes[begin:], later[begin:]
    )
    partials_second += second.flush()

    # The reference: no crash; the records the first run never got to arrive when the replay reads them.
    ref = fold(cfg)
    partials_ref, checkpoints_ref, decisions_ref, _ = one_by_one(
        ref, records, flushes, clocks[:crash] + later[crash:]
    )
    partials_ref += ref.flush()
    accepted = [r.value for r in records if decisions_ref[r.offset][0] == "accepted"]
    assert table_totals(merge_all({}, partials_ref)) == recount("clicks", accepted)

    assert decisions_second == {o: d for o, d in decisions_ref.items() if o >= checkpoint.offset}
    assert second.watermark_ms == ref.watermark_ms
    assert second.dedup_size == ref.dedup_size
    assert checkpoints_second == [c for c in checkpoints_ref if c.offset > checkpoint.offset]
    totals_restarted = table_totals(merge_all(merge_all({}, partials_first), partials_second))
    assert totals_restarted == table_totals(merge_all({}, partials_ref))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crash_cases(tuple(k for k in KINDS if k != "future")))
def test_restart_from_checkpoint_gives_the_same_totals_and_decisions(case: dict[str, object]) -> None:
    """Re-sends, late events, invalid records, events ahead of their send time, a crash anywhere."""
    check_restart_changes_nothing(case)


# Without shrinking: a failure here is reported at once (the deterministic tests above name the cause).
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    report_multiple_bugs=False,
)
@given(crash_cases(tuple(KINDS + FAST)))
def test_restart_with_future_rejects_and_fast_clocks_gives_the_same_totals_and_decisions(
    case: dict[str, object],
) -> None:
    """The same, with records more than the skew ahead of their send time (rejected "future") and from
    trackers whose clocks run fast, judged by a receive time that is later on the replay."""
    check_restart_changes_nothing(case)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    report_multiple_bugs=False,
)
@given(crash_cases(tuple(KINDS + FAST), log_append=True))
def test_restart_on_a_log_append_time_topic_gives_the_same_totals_and_decisions(
    case: dict[str, object],
) -> None:
    """The same on a topic whose records carry the broker's LogAppendTime: no clock steps are needed."""
    check_restart_changes_nothing(case)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crash_cases(tuple(k for k in KINDS if k != "future")), st.integers(1, 2), st.integers(160, 400))
def test_restart_with_a_campaign_cap_and_partials_in_pieces_changes_nothing(
    case: dict[str, object], cap: int, piece_bytes: int
) -> None:
    """The cap decides the same on a replay, and partials in pieces merge to the same totals."""
    cfg: FoldConfig = replace(case["cfg"], max_campaigns_per_channel=cap)  # type: ignore[arg-type]
    records: list[Rec] = case["records"]  # type: ignore[assignment]
    crash: int = case["crash"]  # type: ignore[assignment]
    actions: list[tuple[int, int, bool]] = case["actions"]  # type: ignore[assignment]

    whole = fold(cfg)
    # One receive time after every record: nothing is judged by it, so a replay decides the same.
    clocks = [NOW] * len(records)
    partials_whole, _, decisions, _ = one_by_one(whole, records, [a[2] for a in actions], clocks)
    partials_whole += whole.flush()
    assert all(len({row[2] for row in p.rows if row[0] == TOTAL}) <= cap + 2 for p in partials_whole)
    totals_whole = table_totals(merge_pieces({}, partials_whole, piece_bytes, cap))
    accepted = [r.value for r in records if decisions[r.offset][0] == "accepted"]

    def channel_sums(table: dict[Key, dict[str, list[int]]]) -> dict[Key, list[int]]:
        return {
            key: [sum(c[s] for c in rows.values()) for s in range(N_SLOTS)] for key, rows in table.items()
        }

    assert channel_sums(totals_whole) == channel_sums(recount("clicks", accepted))

    first = fold(cfg)
    partials_first, checkpoints_first, _ = batched(
        first, records[:crash], [a[1] for a in actions[:crash]], clocks[:crash]
    )
    checkpoint = [START, *checkpoints_first][-1]
    second = fold(cfg, checkpoint)
    if checkpoint.rebuild_from < checkpoint.offset:
        second.rebuild(records[checkpoint.rebuild_from : checkpoint.offset])
        second.finish_rebuild()
    partials_second, _, _, _ = one_by_one(
        second,
        records[checkpoint.offset :],
        [a[2] for a in actions[checkpoint.offset :]],
        clocks[checkpoint.offset :],
    )
    partials_second += second.flush()
    table = merge_pieces(
        merge_pieces({}, partials_first, piece_bytes, cap), partials_second, piece_bytes, cap
    )
    assert table_totals(table) == totals_whole


def test_decision_mix_of_the_generator_is_varied() -> None:
    """Guard against a generator that never produces the cases the property is about."""
    mix: Counter[str] = Counter()

    @settings(max_examples=60, deadline=None, database=None)
    @given(crash_cases(tuple(KINDS + FAST)))
    def collect(case: dict[str, object]) -> None:
        whole = fold(case["cfg"])  # type: ignore[arg-type]
        records: list[Rec] = case["records"]  # type: ignore[assignment]
        actions: list[tuple[int, int, bool]] = case["actions"]  # type: ignore[assignment]
        clocks = fetch_clocks(case["appended"], case["delays"], [a[1] > 0 for a in actions])  # type: ignore[arg-type]
        _, checkpoints, decisions, steps = one_by_one(whole, records, [False] * len(records), clocks)
        mix.update(d[0] for d in decisions.values())
        mix.update("lwg" for d in decisions.values() if d[1])
        mix.update(d[2] for d in decisions.values() if d[2])
        mix["checkpoint"] += len(checkpoints)
        mix["step"] += len(steps)

    collect()
    for what in ("accepted", "duplicate", "late", "invalid", "lwg", "future", "checkpoint", "step"):
        assert mix[what] > 0, mix


def test_a_late_id_of_a_minute_evicted_in_the_same_fetch_is_forgotten_later() -> None:
    # The fold keeps the last record's minute list at hand; a block boundary may evict that very minute.
    f = fold(config(block=2, grace_s=0))
    out = f.process(
        [
            click(0, "a", T0 + 180_000),
            click(1, "b", T0),  # late, remembered under the minute T0
            click(2, "c", T0 + 1),  # block 1: the minute T0 was evicted just before this record
            click(3, "d", T0 + 180_001),
            click(4, "e", T0 + 180_002),  # block 2: the minute T0 is evicted again, "c" with it
        ],
        NOW,
    )
    assert [len(out.checkpoints), f.outcomes["late"], f.outcomes["accepted"]] == [2, 2, 3]
    assert f.dedup_size == 3  # a, d and e


def test_accepted_records_per_channel_cover_the_blocks_closed_in_between() -> None:
    f = fold(config(block=4))
    f.process([click(i, f"e{i}", T0 + i, channel="jd" if i % 3 else "taobao") for i in range(10)], NOW)
    assert f.drain_accepted() == {"jd": 6, "taobao": 4}
    f.process([click(10, "e10", T0 + 10)], NOW)
    assert f.drain_accepted() == {"douyin": 1}
    assert f.drain_accepted() == {}


def test_the_output_names_the_newest_timestamp_of_every_record_fetched() -> None:
    f = fold()
    records = [
        click(0, "a", T0, sent=T0 + 5),
        Rec(1, T0 + 9, b"{not json"),
        click(2, "b", T0 + 1, sent=T0 + 7),
    ]
    assert f.process(records, NOW).newest_stamp == T0 + 9  # the reject's too
    assert f.process(records[:2], NOW).newest_stamp == T0 + 9  # a re-delivered fetch's too
    assert f.process([], NOW).newest_stamp == 0
