"""The worker's data path in memory: fold stage, bucket table and what is rendered from it, without I/O.

Records are fed partition by partition in fetches of drawn sizes, with flushes in between and "crashes": a
partition's fold state is dropped and resumed from its last checkpoint with the dedup set rebuilt, as a
worker restarted after ``kill -9`` does, so unflushed partials are lost and the block is replayed. Every
partial is merged into a table exactly as the Faust agent merges it, and every message the worker would send
(partials, DLQ records) is measured against the broker's limit. At the end the table is read back the way the
worker reads it after a recovery (keys split into channel, window and start), rendered into the rows it
writes to Redis and Prometheus, and judged against the seed threshold rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import orjson
from prometheus_client import CollectorRegistry

from adpulse.settings import Settings
from agents.buckets import FAUST_MAX_REQUEST_BYTES, BucketIndex, bucket_key, parse_partial
from agents.fold import Checkpoint, ClockStep, FoldConfig, FoldOutput, PartitionFold, encode_partial
from agents.metrics import SnapshotCollector
from agents.partials import BucketValue, encoded_over, merge, totals
from agents.snapshot import build_rows, closed_rows
from alerts.rules import default_rules, evaluate_thresholds
from streams.dlq import dlq_headers, dlq_key, dlq_value
from streams.topics import value_limit
from streams.windows import Calendar
from tests.faults.hostile import Cell, Placed, Pos

#: Room a record batch needs around one record (batch header, record framing).
_FRAMING = 128
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(slots=True)
class SourceRecord:
    """The fields of aiokafka's ConsumerRecord that the fold stage and the DLQ read."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    timestamp_type: int = 0  # CreateTime: the tracker's clock


@dataclass(frozen=True, slots=True)
class Plan:
    """How a run goes: fetch sizes (cycled), a flush once ``flush_records`` records were folded since the
    last one (a worker flushes every 0.25 s, thousands of records), and the fetch numbers after which the
    partition just fed crashes."""

    fetch_sizes: tuple[int, ...]
    flush_records: int
    crashes: frozenset[int] = frozenset()


class CrashError(Exception):
    """The data path raised while handling records of the given cases."""

    def __init__(self, stage: str, cases: Iterable[str], error: BaseException) -> None:
        self.stage = stage
        self.cases = sorted(set(cases))
        self.error = error
        super().__init__(f"{stage} raised {type(error).__name__}: {str(error)[:200]} (cases {self.cases})")


@dataclass
class RunResult:
    """What the data path produced: counted cells, DLQ verdicts, and what broke a rule on the way."""

    got: dict[Cell, list[int]] = field(default_factory=dict)
    rejected: dict[Pos, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    crashes: int = 0


def fold_config(settings: Settings) -> FoldConfig:
    """The fold configuration a worker with ``settings`` runs with (every FoldConfig field is a setting)."""
    return FoldConfig(**{name: getattr(settings, name) for name in FoldConfig.__dataclass_fields__})


class DataPath:
    """One worker's fold stage and bucket table over a set of placed records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = fold_config(settings)
        self.calendar = Calendar(settings.zone)
        self.table: dict[str, BucketValue] = {}
        self.cells: dict[str, tuple[str, str, int]] = {}
        self.result = RunResult()
        self._clock_ms = 0
        self._steps: dict[tuple[str, int], list[ClockStep]] = {}
        # Cases of the records folded since the last flush, per partition: the suspects when a flush raises.
        self._unflushed: dict[tuple[str, int], set[str]] = {}

    def run(self, placed: list[Placed], plan: Plan) -> RunResult:
        """Feed every record, crash where the plan says, flush, then read and render the table."""
        streams: dict[tuple[str, int], list[tuple[SourceRecord, str]]] = {}
        for item in sorted(placed, key=lambda p: (p.topic, p.partition, p.offset)):
            record = item.record
            source = SourceRecord(
                item.topic, item.partition, item.offset, record.create_ms, record.key, record.value
            )
            streams.setdefault((item.topic, item.partition), []).append((source, record.case))
        folds = {tp: self._resume(tp, Checkpoint(0, 0, 0), []) for tp in streams}
        checkpoints = dict.fromkeys(streams, Checkpoint(0, 0, 0))
        positions = dict.fromkeys(streams, 0)
        fetch = folded = 0
        while any(positions[tp] < len(records) for tp, records in streams.items()):
            for tp, records in streams.items():
                if positions[tp] >= len(records):
                    continue
                size = plan.fetch_sizes[fetch % len(plan.fetch_sizes)]
                batch = records[positions[tp] : positions[tp] + size]
                positions[tp] += len(batch)
                folded += len(batch)
                cases = [case for _, case in batch]
                self._unflushed.setdefault(tp, set()).update(cases)
                # The worker's clock, read once per fetch and never backwards.
                self._clock_ms = max(self._clock_ms, int(time.time() * 1000))
                out = self._guard("fold", cases, folds[tp].process, [r for r, _ in batch], self._clock_ms)
                self._steps.setdefault(tp, []).extend(out.steps)
                self._emit(out, cases)
                if out.checkpoints:
                    checkpoints[tp] = out.checkpoints[-1]
                fetch += 1
                if fetch in plan.crashes:
                    self.result.crashes += 1
                    start = checkpoints[tp]
                    folds[tp] = self._resume(tp, start, records)
                    positions[tp] = start.offset
                if folded >= plan.flush_records:
                    folded = 0
                    self._flush(folds)
        self._flush(folds)
        self._render()
        return self.result

    # -- the fold stage ------------------------------------------------------------------------------------

    def _resume(
        self, tp: tuple[str, int], checkpoint: Checkpoint, records: list[tuple[SourceRecord, str]]
    ) -> PartitionFold:
        short = tp[0].rsplit(".", 1)[-1]
        # The clock steps the stage saved, from the rebuild point on (as it reads them back from Redis).
        steps = [step for step in self._steps.get(tp, []) if step.last >= checkpoint.rebuild_from]
        fold = PartitionFold(short, tp[1], self.config, self.calendar, checkpoint, steps)
        if checkpoint.rebuild_from < checkpoint.offset:
            span = records[checkpoint.rebuild_from : checkpoint.offset]
            self._guard("dedup rebuild", [case for _, case in span], fold.rebuild, [r for r, _ in span])
            fold.finish_rebuild()
        return fold

    def _flush(self, folds: dict[tuple[str, int], PartitionFold]) -> None:
        for tp, fold in folds.items():
            cases = sorted(self._unflushed.pop(tp, set()))
            self._emit(FoldOutput(partials=self._guard("flush", cases, fold.flush)), cases)

    def _emit(self, out: FoldOutput, cases: list[str]) -> None:
        limit = self.settings.max_message_bytes
        for record, rejection in out.rejects:
            value = dlq_value(record, rejection, value_limit(limit))
            headers = sum(len(k) + len(v) for k, v in dlq_headers(rejection))
            size = len(dlq_key(record) or b"") + len(value) + headers
            where = f"{record.topic}/{record.partition}@{record.offset}"
            if size + _FRAMING > limit:
                self.result.problems.append(f"DLQ record over the broker's limit: {where} gives {size} bytes")
            if not rejection.reason or not rejection.detail:
                self.result.problems.append(f"DLQ record without reason or detail: {where} {rejection}")
            shown = orjson.loads(value)
            if (shown["topic"], shown["partition"], shown["offset"]) != (
                record.topic,
                record.partition,
                record.offset,
            ):
                self.result.problems.append(f"DLQ record names another source: {where} {shown}")
            earlier = self.result.rejected.setdefault(
                (record.topic, record.partition, record.offset), rejection.reason
            )
            if earlier != rejection.reason:
                self.result.problems.append(
                    f"verdict changed on replay: {where} {earlier!r}, then {rejection.reason!r}"
                )
        for partial in out.partials:
            key = partial.channel.encode()
            for piece in encode_partial(partial, value_limit(limit)):
                if len(piece) + len(key) + _FRAMING > limit:
                    self.result.problems.append(
                        f"partial over the broker's limit: {partial.src} block {partial.block}, channel "
                        f"{partial.channel[:40]!r}, {len(piece) + len(key)} bytes"
                    )
                self._guard("merge", cases, self._merge, key, piece)

    # -- the Faust agent and what the worker renders ------------------------------------------------------

    def _merge(self, key: bytes, message: bytes) -> None:
        """What the bucket agent does with one partials message (a piece of a partial)."""
        channel, src, block, upto, grouped = parse_partial(key, orjson.loads(message))
        limit = value_limit(min(self.settings.max_message_bytes, FAUST_MAX_REQUEST_BYTES))
        for (window, start), campaigns in grouped.items():
            table_key = bucket_key(channel, window, start)
            merged = merge(
                self.table.get(table_key),
                src,
                block,
                upto,
                campaigns,
                self.settings.max_campaigns_per_channel,
            )
            if merged is None:
                continue
            size = encoded_over(merged, limit)
            if size is not None:
                self.result.problems.append(
                    f"bucket over its changelog record: {(channel, window, start)} would be {size} bytes"
                )
                continue
            self.table[table_key] = merged
            self.cells[table_key] = (channel, window, start)

    def _render(self) -> None:
        for key, value in self.table.items():
            channel, window, start = self.cells[key]
            for campaign, counts in totals(value).items():
                self.result.got[(channel, campaign, window, start)] = counts
        cases = ["(table)"]
        index = BucketIndex()
        # After a recovery or a rebalance the worker rebuilds its index from the table's keys.
        self._guard("bucket index", cases, index.sync, len(self.table), lambda: list(self.table))
        channels = self._guard("bucket index", cases, index.channels)

        def lookup(channel: str, window: str, start: int) -> BucketValue | None:
            return self.table.get(bucket_key(channel, window, start))

        now = time.time()
        grace = self.settings.grace_s
        rows = self._guard("snapshot", cases, build_rows, channels, lookup, self.calendar, now, grace)
        zone = self.calendar.zone
        for channel in channels:
            # Hours and days: every name and campaign the minutes hold is in them too, at a tenth of the rows.
            for window in ("1h", "1d"):
                starts = sorted(index.starts(channel, window))
                rows += self._guard(
                    "closed windows", cases, closed_rows, channel, window, starts, lookup, self.calendar
                )
        rules = default_rules()
        for row in rows:
            shown = self._guard("rows to JSON", cases, row.to_json, zone)
            orjson.dumps(shown)
            if row.window == "1h" and row.which == "closed":
                named = None if row.campaign == "-" else row.campaign
                bounds = (str(shown["window_start"]), str(shown["window_end"]))
                self._guard(
                    "threshold rules",
                    cases,
                    evaluate_thresholds,
                    rules,
                    row.channel,
                    named,
                    "1h",
                    row.counts,
                    bounds,
                )
        collector = SnapshotCollector(lambda: rows, self.settings.max_channels)
        registry = CollectorRegistry()
        registry.register(collector)
        self._guard("Prometheus collector", cases, lambda: list(registry.collect()))

    def _guard(
        self, stage: str, cases: list[str], call: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # any exception here is a data-derived crash: that is the finding
            raise CrashError(stage, cases, exc) from exc
