"""In what order the fold stage may publish one source partition's output (pure).

The table folds block k-1 of a partition into its base as soon as it sees a partial of block k, and
ignores block k-1 from then on (``agents.partials``). So if a partial of block k-1 is lost (its batch
expired during a broker or leader outage) while a later partial is delivered, re-sending the lost one
changes nothing: its counts are gone. Hence the order kept here:

- a checkpoint (the start of block k) is written only once every message before it is acknowledged;
- nothing after a checkpoint is sent before the checkpoint is written;
- a failed send stops the partition: the stage replays it from its last written checkpoint, and the
  replay re-sends what was lost before anything newer.

Messages of one block go out as soon as the fold produces them: only a block boundary waits (for the
acknowledgements of the block before it and one Redis write).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from agents.fold import Checkpoint

M = TypeVar("M")


class Delivery(Protocol):
    """The outcome of one send, as an asyncio future of the producer reports it."""

    def done(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


@dataclass(frozen=True, slots=True)
class Batch(Generic[M]):
    """Messages to send together; ``mark`` is the (watermark ms, position) the partition has reached once
    they are delivered, for batches that carry everything folded so far (a flush)."""

    messages: Sequence[M]
    mark: tuple[int, int] | None = None


class Lane(Generic[M]):
    """One source partition's batches and checkpoints, in the order the fold produced them."""

    def __init__(self, mark: tuple[int, int]) -> None:
        self._queue: deque[Batch[M] | Checkpoint] = deque()
        self._issued: deque[tuple[list[Delivery], tuple[int, int] | None]] = deque()
        #: The first failed send: once set, nothing more of this lane is sent or checkpointed.
        self.failed: BaseException | None = None
        #: (watermark ms, position) of the newest flush whose every message, and every one before it,
        #: is acknowledged: what the stage may announce downstream as merged.
        self.delivered_mark = mark

    def put(self, item: Batch[M] | Checkpoint) -> None:
        """Queue the next batch or checkpoint."""
        self._queue.append(item)

    def sendable(self) -> list[Batch[M]]:
        """Take the batches that may be sent now: those before the next unwritten checkpoint.

        The caller sends their messages in order and hands the deliveries to ``sent``.
        """
        batches: list[Batch[M]] = []
        while self.failed is None and self._queue and isinstance(self._queue[0], Batch):
            batches.append(self._queue.popleft())  # type: ignore[arg-type]
        return batches

    def sent(self, batch: Batch[M], deliveries: list[Delivery]) -> None:
        """Record the deliveries of a batch ``sendable`` gave out."""
        self._issued.append((deliveries, batch.mark))

    def retire(self) -> BaseException | None:
        """Forget the batches delivered so far, in order; the first failure if one failed (the partition
        must then stop: nothing more of this lane may be sent)."""
        while self.failed is None and self._issued and all(d.done() for d in self._issued[0][0]):
            deliveries, mark = self._issued.popleft()
            self.failed = next((d.exception() for d in deliveries if d.exception() is not None), None)
            if self.failed is None and mark is not None:
                self.delivered_mark = mark
        return self.failed

    def checkpoint_due(self) -> Checkpoint | None:
        """The checkpoint to write now, if the next item is one and everything before it is delivered.

        Of several consecutive checkpoints (a fetch that spanned blocks with nothing to send between
        them) only the last needs writing.
        """
        if self.failed is not None or self._issued or not self._queue or isinstance(self._queue[0], Batch):
            return None
        due: Checkpoint | None = None
        for item in self._queue:
            if isinstance(item, Batch):
                break
            due = item
        return due

    def checkpoint_written(self, checkpoint: Checkpoint) -> None:
        """``checkpoint`` (from ``checkpoint_due``) is durable: the batches after it may go."""
        while self._queue and isinstance(self._queue[0], Checkpoint):
            if self._queue.popleft() == checkpoint:
                return

    def outstanding(self) -> list[Delivery]:
        """Deliveries sent but not retired (to look at once when the lane is given up)."""
        return [delivery for deliveries, _ in self._issued for delivery in deliveries]

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting for delivery."""
        return not self._queue and not self._issued
