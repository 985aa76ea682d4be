"""agents.outbox: nothing of a later block is sent before every message of the earlier blocks is delivered
and their checkpoint written; a failed send stops the partition."""

from __future__ import annotations

from dataclasses import dataclass

from agents.fold import Checkpoint
from agents.outbox import Batch, Lane
from agents.partials import BucketValue, merge, totals
from streams.codec import N_SLOTS


@dataclass
class Delivery:
    """An in-flight send whose outcome the test decides."""

    state: str = "pending"  # pending / ok / failed

    def done(self) -> bool:
        return self.state != "pending"

    def exception(self) -> BaseException | None:
        return TimeoutError("batch expired") if self.state == "failed" else None


CP1 = Checkpoint(10, 1_000, 10)
CP2 = Checkpoint(20, 2_000, 20)


def send(lane: Lane[str]) -> list[tuple[str, Delivery]]:
    """What a stage does: send every sendable message, one delivery each."""
    out = []
    for batch in lane.sendable():
        deliveries = [Delivery() for _ in batch.messages]
        lane.sent(batch, list(deliveries))
        out += list(zip(batch.messages, deliveries, strict=True))
    return out


def test_a_block_is_sent_only_after_the_earlier_block_is_delivered_and_checkpointed() -> None:
    lane: Lane[str] = Lane((0, 0))
    lane.put(Batch(["block 0, first flush"], mark=(500, 5)))
    (first,) = send(lane)
    lane.put(Batch(["block 0, closing"]))
    lane.put(CP1)
    lane.put(Batch(["block 1, first flush"], mark=(1_500, 15)))
    (closing,) = send(lane)
    assert closing[0] == "block 0, closing"
    assert lane.checkpoint_due() is None  # two sends still in flight
    first[1].state = "ok"
    assert lane.retire() is None and lane.delivered_mark == (500, 5)
    assert lane.checkpoint_due() is None and send(lane) == []
    closing[1].state = "ok"
    assert lane.retire() is None
    assert lane.checkpoint_due() == CP1
    assert send(lane) == []  # still not before the checkpoint is written
    lane.checkpoint_written(CP1)
    ((message, delivery),) = send(lane)
    assert message == "block 1, first flush"
    delivery.state = "ok"
    assert lane.retire() is None and lane.delivered_mark == (1_500, 15) and lane.idle


def test_a_failed_send_stops_the_partition() -> None:
    lane: Lane[str] = Lane((0, 0))
    lane.put(Batch(["block 0"]))
    lane.put(CP1)
    lane.put(Batch(["block 1"]))
    ((_, delivery),) = send(lane)
    delivery.state = "failed"
    assert isinstance(lane.retire(), TimeoutError)
    assert lane.checkpoint_due() is None and send(lane) == []


def test_consecutive_checkpoints_are_written_once_as_the_last() -> None:
    lane: Lane[str] = Lane((0, 0))
    for item in (Batch(["a"]), CP1, CP2, Batch(["b"])):
        lane.put(item)
    ((_, delivery),) = send(lane)
    delivery.state = "ok"
    lane.retire()
    assert lane.checkpoint_due() == CP2
    lane.checkpoint_written(CP2)
    assert [m for m, _ in send(lane)] == ["b"]


def test_a_mark_counts_only_once_everything_before_it_is_delivered() -> None:
    lane: Lane[str] = Lane((0, 0))
    lane.put(Batch(["x"], mark=(100, 1)))
    lane.put(Batch([], mark=(200, 2)))  # a flush with nothing new
    sent = send(lane)
    assert lane.retire() is None and lane.delivered_mark == (0, 0)  # "x" is not delivered yet
    sent[0][1].state = "ok"
    assert lane.retire() is None and lane.delivered_mark == (200, 2)


def vec(n: int) -> list[int]:
    return [n, *[0] * (N_SLOTS - 1)]


def test_the_table_keeps_every_count_when_an_expired_partial_is_replayed() -> None:
    """The probe of the issue: a partial of block 0 expires during an outage, then the partition replays.

    Unordered (what the stage did), a partial of block 1 sent meanwhile made the table fold block 0 without
    the lost partial and ignore its replay. Ordered by a lane, block 1 waits, and the replay is whole.
    """

    def table_after(ordered: bool) -> int:
        value: BucketValue | None = None

        def deliver(block: int, upto: int, count: int) -> None:
            nonlocal value
            merged = merge(value, "clicks/0", block, upto, {"-": vec(count)})
            value = merged if merged is not None else value

        deliver(0, 49, 50)  # block 0 so far: 50 events, delivered
        lane: Lane[tuple[int, int, int]] = Lane((0, 0))
        lane.put(Batch([(0, 99, 100)]))  # block 0 complete: 100 events; this send will expire
        lane.put(CP1)
        lane.put(Batch([(1, 129, 30)]))  # block 1: 30 events
        if ordered:
            sent = [m for batch in lane.sendable() for m in batch.messages]
            assert sent == [(0, 99, 100)]
        else:  # no lane: everything goes out at once
            sent = [(0, 99, 100), (1, 129, 30)]
        for message in sent:
            if message[0] != 0:  # block 0's send expires, the rest is delivered
                deliver(*message)
        # The failure is seen: the partition replays blocks 0 and 1 from the checkpoint before block 0.
        deliver(0, 99, 100)
        deliver(1, 129, 30)
        assert value is not None
        return totals(value)["-"][0]

    assert table_after(ordered=False) == 80  # 80 of 130: the probe
    assert table_after(ordered=True) == 130
