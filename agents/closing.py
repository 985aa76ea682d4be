"""When windows close: event time per partials partition, and which buckets to record as closed. Pure.

The bucket agent hands in what it reads and merges (the fold stages' watermark marks, the bucket keys it
writes); the snapshot timer asks, once per tick, for the event time of the partitions it owns and for the
windows that closed since its last tick. The clock is injected, so a unit test can step through ticks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from agents.snapshot import global_watermark, last_complete_start, newly_closed
from streams.windows import WINDOWS, Calendar

#: Buckets of never-recorded closed history (:meth:`WindowCloser.due`) handed out per tick.
BACKLOG_BUCKETS_PER_TICK = 5_000


class WindowCloser:
    """Event time from the marks, and the closed windows of each channel, as this worker sees them.

    - Each partials partition has its own event time: the marks that reached it. Silence is judged as of
      when a mark was sent (the agent may read it late), and a mark not renewed for ``stale_mark_s`` (its
      fold stage died or stalls) is no proof of silence: it holds time back. So does a source partition of
      which no mark reached this worker at all (the fold stages name every source partition there is with
      their marks): a worker that takes a partition over after a ``kill -9`` reads only the marks sent
      since the last commit, none from the fold stage that died, and would otherwise take the sources
      still listed as all there is (seen: every window closed, the dead stage's channels not yet replayed,
      and their data, arriving later, never recorded).
    - Event time never goes back: a closed window stays closed (late data only revises its record).
    - A window closes when the channel's event time passes its end plus ``grace_s``; a closed window whose
      bucket is written again is recorded again.
    - The closed history of a channel this worker has not recorded yet (after a start, a partition taken
      over, :meth:`forget`) is handed out ``backlog_per_tick`` buckets a tick at most: after a restart with a
      million buckets, recording them all in one tick took over a minute, and the tick's snapshot waited.
    """

    def __init__(
        self,
        calendar: Calendar,
        grace_s: float,
        idle_partition_s: float,
        stale_mark_s: float,
        clock: Callable[[], float] = time.time,
        backlog_per_tick: int = BACKLOG_BUCKETS_PER_TICK,
    ) -> None:
        self.calendar = calendar
        self.grace_s = grace_s
        self.idle_partition_s = idle_partition_s
        self.stale_mark_s = stale_mark_s
        self.clock = clock
        self.backlog_per_tick = backlog_per_tick
        # partials partition -> source partition -> (watermark_s, last active wall time, caught up, sent at).
        self._marks: dict[int, dict[str, tuple[float, float, bool, float]]] = {}
        self._highest: dict[int, float] = {}
        # Every source partition there is, as the fold stages' metadata last listed them.
        self._sources: frozenset[str] = frozenset()
        # (channel, window) -> start of the newest bucket already recorded as closed.
        self._emitted: dict[tuple[str, str], int] = {}
        # Buckets written since the last tick: a closed window that changes is recorded again.
        self._touched: set[tuple[str, str, int]] = set()
        self._pending: dict[tuple[str, str], int] = {}

    def mark(
        self, partition: int, src: str, watermark_s: float, active_at: float, caught_up: bool, sent_at: float
    ) -> None:
        """A fold stage's mark for source partition ``src``, read on partials ``partition``: everything it
        flushed before the mark is merged by now."""
        self._marks.setdefault(partition, {})[src] = (watermark_s, active_at, caught_up, sent_at)

    def sources(self, srcs: object) -> None:
        """Every source partition there is, as a fold stage listed them with its marks (``None``: not
        listed, as by an older fold stage); ValueError if it is not a list of names."""
        if srcs is None:
            return
        if not isinstance(srcs, list) or not all(isinstance(src, str) for src in srcs):
            raise ValueError(f"sources must be a list of source partition names, got {srcs!r:.200}")
        self._sources = frozenset(srcs)

    def touched(self, channel: str, window: str, start: int) -> None:
        """A bucket was written (merged into)."""
        self._touched.add((channel, window, start))

    def watermarks(self, partitions: Iterable[int]) -> dict[int, float]:
        """The event time of each of ``partitions`` that has one now (never lower than it was)."""
        now = self.clock()
        watermarks = {}
        for p in partitions:
            marks = self._marks.get(p, {})
            known = [
                (mark, seen + (now - sent), caught_up and now - sent < self.stale_mark_s)
                for mark, seen, caught_up, sent in marks.values()
            ]
            unknown = [(0.0, 0.0, False) for src in self._sources if src not in marks]
            w = global_watermark([*known, *unknown], now, self.idle_partition_s)
            if w is not None:
                watermarks[p] = w
        for p, w in watermarks.items():
            watermarks[p] = self._highest[p] = max(w, self._highest.get(p, w))
        return watermarks

    def event_time(self, partition: int) -> float | None:
        """The event time of ``partition`` as :meth:`watermarks` last found it (None: none yet)."""
        return self._highest.get(partition)

    def due(
        self, watermark_of: Mapping[str, float], starts: Callable[[str, str], Iterable[int]]
    ) -> Iterator[tuple[str, str, list[int]]]:
        """``(channel, window, bucket starts)`` to record as closed now, for the channels of
        ``watermark_of`` (channel → its event time): the buckets closed since the last tick, and earlier
        closed ones written since. ``starts(channel, window)`` gives the buckets that hold data.

        Call :meth:`recorded` once a window's buckets are recorded; until then they stay due. Buckets
        written to channels not asked about stay due until a tick asks about them: their partition has no
        event time this tick (a source not read yet holds it back, as after a rebalance), and forgotten, a
        closed window would keep its old record for good (seen on Kafka after a ``kill -9``).

        A ``(channel, window)`` never recorded has its whole closed history due: once this call has handed
        out ``backlog_per_tick`` buckets of such histories, the others are left out, due at a later tick.
        """
        revised: dict[tuple[str, str], set[int]] = {}
        for channel, window, start in self._touched:
            if channel in watermark_of:
                revised.setdefault((channel, window), set()).add(start)
        self._touched = {touched for touched in self._touched if touched[0] not in watermark_of}
        backlog = self.backlog_per_tick
        for channel, watermark in watermark_of.items():
            for window in WINDOWS:
                done = self._emitted.get((channel, window))
                last = last_complete_start(self.calendar, window, watermark, self.grace_s)
                if done is None and backlog <= 0 and any(s <= last for s in starts(channel, window)):
                    # Not listed whole: a channel-minute history of days is thousands of starts, and after a
                    # restart with a million buckets listing them all took most of every tick's time. One
                    # with nothing closed yet is recorded at once, as before (empty), so that the windows
                    # closing silent from now on are recorded too.
                    continue  # not recorded, so still due next tick
                todo = set(newly_closed(self.calendar, window, starts(channel, window), done, last))
                if done is None:
                    backlog -= len(todo)  # its revisions are in ``todo`` too
                if done is not None:
                    todo.update(s for s in revised.get((channel, window), ()) if s <= done)
                self._pending[(channel, window)] = max(last, done if done is not None else last)
                yield channel, window, sorted(todo)

    def recorded(self, channel: str, window: str) -> None:
        """The buckets :meth:`due` gave for ``(channel, window)`` are recorded: they are closed now."""
        self._emitted[(channel, window)] = self._pending.pop((channel, window))

    def keep_only(self, owned: Callable[[str], bool]) -> None:
        """Forget the channels for which ``owned`` is false (their partition moved to another worker): their
        buckets are the new owner's to record, and should one come back, all its closed windows are recorded
        again, as another worker may have revised them meanwhile."""
        self._emitted = {key: start for key, start in self._emitted.items() if owned(key[0])}
        self._pending = {key: start for key, start in self._pending.items() if owned(key[0])}
        self._touched = {touched for touched in self._touched if owned(touched[0])}

    def forget(self) -> None:
        """Recompute what closed from scratch next tick (the windows judged may not be what was recorded)."""
        self._emitted.clear()
