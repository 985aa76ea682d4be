"""The ground truth of a simulated run: what was sent, by kind, and the KPI totals a correct pipeline must
count (valid, first-seen, on-time records only). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import orjson

from alerts.wording import rfc3339_utc_ms

#: Topics the generator writes to (short names; the settings add the prefix).
TOPICS: tuple[str, ...] = ("clicks", "orders", "spend")
#: Length of the event-time windows the ground truth counts in (the pipeline's finest, 1 minute).
WINDOW_MS = 60_000
#: Funnel counter positions in a ground-truth cell; orders also add their amount at GMV.
IMPRESSIONS, CLICKS, VISITS, CARTS, ORDERS, GMV, SPEND = range(7)
KINDS: tuple[str, ...] = ("valid", "invalid", "late", "duplicate")
_K = TypeVar("_K", bound=Hashable)


def window_end_ms(ts_ms: int) -> int:
    """End of the 1-minute event-time window holding ``ts_ms``."""
    return ts_ms - ts_ms % WINDOW_MS + WINDOW_MS


@dataclass(slots=True)
class Totals:
    """Funnel counts and money (in cents, so that sums are exact) of valid records."""

    impressions: int = 0
    clicks: int = 0
    visits: int = 0
    carts: int = 0
    orders: int = 0
    gmv_cents: int = 0
    spend_cents: int = 0

    @classmethod
    def from_cell(cls, cell: Sequence[int]) -> Totals:
        """Totals from a ground-truth cell (counters in the order IMPRESSIONS … SPEND)."""
        return cls(*cell)

    def add(self, other: Totals) -> None:
        """Add ``other`` into these totals."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def gmv(self) -> float:
        """GMV in currency units."""
        return self.gmv_cents / 100

    @property
    def spend(self) -> float:
        """Spend in currency units."""
        return self.spend_cents / 100

    def to_dict(self) -> dict[str, int | float]:
        """Counts plus ``gmv`` and ``spend`` in currency units (exact to the cent)."""
        return {
            "impressions": self.impressions,
            "clicks": self.clicks,
            "visits": self.visits,
            "carts": self.carts,
            "orders": self.orders,
            "gmv": self.gmv,
            "spend": self.spend,
        }


class GroundTruth:
    """What the generator sent, by kind, and the KPI totals a correct pipeline must arrive at."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self.meta = dict(meta)
        self.start_ms: int | None = None
        self.end_ms: int | None = None
        #: (channel, campaign, window start ms of the 1-minute window) → counters IMPRESSIONS … SPEND.
        self.cells: dict[tuple[str, str, int], list[int]] = {}
        self.kinds: dict[str, dict[str, int]] = {topic: dict.fromkeys(KINDS, 0) for topic in TOPICS}
        #: Records accepted although their ts was behind the partition's newest (within the grace period).
        self.late_within_grace: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self.invalid_reasons: dict[str, int] = {}
        #: Records sent per (topic, partition), every kind included.
        self.partition_records: dict[tuple[str, int], int] = {}

    def count_valid(self, channel: str, campaign: str, ts_ms: int, index: int, value: int) -> None:
        """Fold one valid record: ``value`` at counter ``index`` (an order adds 1 order and ``value`` GMV)."""
        key = (channel, campaign, ts_ms - ts_ms % WINDOW_MS)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0] * 7
        if index == ORDERS:
            cell[ORDERS] += 1
            cell[GMV] += value
        else:
            cell[index] += value

    @property
    def sent(self) -> int:
        """Every record sent, of every kind."""
        return sum(sum(kinds.values()) for kinds in self.kinds.values())

    def totals(self) -> dict[tuple[str, str], Totals]:
        """KPI totals per (channel, campaign)."""
        return self._roll_up(lambda channel, campaign, _: (channel, campaign))

    def channel_totals(self) -> dict[str, Totals]:
        """KPI totals per channel."""
        return self._roll_up(lambda channel, _campaign, _window: channel)

    def minute_totals(self) -> dict[tuple[str, str, int], Totals]:
        """KPI totals per (channel, campaign, 1-minute window start in epoch ms)."""
        return {key: Totals.from_cell(cell) for key, cell in self.cells.items()}

    def _roll_up(self, group: Callable[[str, str, int], _K]) -> dict[_K, Totals]:
        out: dict[_K, Totals] = {}
        for key, cell in self.cells.items():
            out.setdefault(group(*key), Totals()).add(Totals.from_cell(cell))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ground truth as plain JSON-able data: run metadata, record counts by kind, KPI totals."""
        return {
            "version": 1,
            **self.meta,
            "start": rfc3339_utc_ms(self.start_ms) if self.start_ms is not None else None,
            "end": rfc3339_utc_ms(self.end_ms) if self.end_ms is not None else None,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "sent": self.sent,
            "records": {
                topic: {**kinds, "late_within_grace": self.late_within_grace[topic]}
                for topic, kinds in self.kinds.items()
            },
            "invalid_reasons": dict(sorted(self.invalid_reasons.items())),
            "partitions": {
                topic: {str(p): n for (t, p), n in sorted(self.partition_records.items()) if t == topic}
                for topic in TOPICS
            },
            "totals": [
                {"channel": ch, "campaign": cp, **t.to_dict()}
                for (ch, cp), t in sorted(self.totals().items())
            ],
            "channel_totals": [
                {"channel": ch, **t.to_dict()} for ch, t in sorted(self.channel_totals().items())
            ],
            "minutes": [
                {
                    "channel": ch,
                    "campaign": cp,
                    "window_start": rfc3339_utc_ms(w),
                    "window_start_ms": w,
                    **t.to_dict(),
                }
                for (ch, cp, w), t in sorted(self.minute_totals().items())
            ],
        }

    def to_json(self) -> bytes:
        """:meth:`to_dict` as indented JSON bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)
