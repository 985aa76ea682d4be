"""The traffic generator: tracker records for an event-time interval at a target rate, and their ground
truth. Pure: it yields records, :mod:`adpulse.simulate` sends them.

The funnel is simulated per campaign: impressions (Poisson) → clicks (binomial, the CTR) → visits →
carts → orders (the CVR over clicks), with order amounts around the campaign's AOV and spend charged per
click at a CPC chosen so that the channel's ROI lands on its profile.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiokafka.partitioner import murmur2

from adpulse.traffic.malformed import Limits, malformed
from adpulse.traffic.profiles import (
    DEFAULT_CHANNELS,
    REGIONS,
    CampaignProfile,
    campaign_profiles,
    daily_curve,
)
from adpulse.traffic.sampling import binomial, poisson
from adpulse.traffic.scenarios import Effects, Scenario, scenario_params
from adpulse.traffic.truth import (
    CARTS,
    CLICKS,
    IMPRESSIONS,
    ORDERS,
    SPEND,
    TOPICS,
    VISITS,
    GroundTruth,
    window_end_ms,
)

#: A record ready to produce: (topic short name, key, value, Kafka timestamp ms = send time, partition).
Record = tuple[str, bytes, bytes, int, int]

SLICE_MS = 1_000
#: Injected late and duplicate records keep this distance from the lateness boundary, so that a pipeline
#: whose watermark differs slightly from ours (e.g. it also counts rejected records' ts) agrees on them.
LATENESS_MARGIN_MS = 10_000
AMOUNT_SIGMA = 0.6
NEW_CUSTOMER_SHARE = 0.3


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the simulator sends ``key`` to: Kafka's default (Java client) murmur2 rule.

    Chosen here rather than left to the client because the ground truth's lateness is per partition.
    (With 4 partitions, CRC32 would leave one of them without any of the six default channels.)
    """
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


#: A generated event before delivery: (ts ms, topic, profile, document, truth counter, truth value).
_Event = tuple[int, str, CampaignProfile, dict[str, Any], int, int]


@dataclass(slots=True)
class _Pending:
    """What a campaign's tracker has counted but not reported yet (impressions and cost go in bulk)."""

    impressions: int = 0
    cost_cents: float = 0.0
    next_flush_ms: int = 0


class TrafficGenerator:
    """Deterministic tracker traffic with its ground truth; see the module docstring.

    Call :meth:`records` with consecutive event-time intervals; the generator keeps its state (per-partition
    newest ``ts``, pending impression counts and spend, the ground truth) between calls.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        campaigns_per_channel: int = 3,
        zone: ZoneInfo | None = None,
        scenarios: Iterable[Scenario] = (),
        partitions: int | Mapping[str, int] = 4,
        grace_s: float = 60.0,
        currency: str = "CNY",
        max_record_bytes: int = 64 * 1024,
        max_future_skew_s: float = 3600.0,
        impressions_per_record: int = 50,
        daily_curve: bool = True,
        origin_ms: int | None = None,
    ) -> None:
        if not channels or len(set(channels)) != len(channels):
            raise ValueError("channels must be a non-empty list of distinct names")
        if not all(1 <= len(c) <= 64 for c in channels):
            raise ValueError("channel names must be 1–64 characters (CONTRACT.md §1)")
        if campaigns_per_channel < 1:
            raise ValueError("campaigns_per_channel must be ≥ 1")
        self.seed = seed
        self.channels = tuple(channels)
        self.campaigns = campaign_profiles(self.channels, campaigns_per_channel)
        self.zone = zone or ZoneInfo("Asia/Shanghai")
        self.scenarios = tuple(s.bind(self.channels) for s in scenarios)
        self.partitions = {t: partitions if isinstance(partitions, int) else partitions[t] for t in TOPICS}
        self.grace_ms = round(grace_s * 1000)
        self.impressions_per_record = impressions_per_record
        self.use_daily_curve = daily_curve
        self.origin_ms = origin_ms
        self.truth = GroundTruth(
            {
                "seed": seed,
                "grace_s": grace_s,
                "currency": currency,
                "channels": list(self.channels),
                "partition_counts": dict(self.partitions),
                "scenarios": [{"name": s.name, **scenario_params(s)} for s in self.scenarios],
            }
        )
        self._limits = Limits(currency, max_record_bytes, round(max_future_skew_s * 1000))
        self._rng = random.Random(seed)
        self._keys = {c: c.encode() for c in self.channels}
        self._partition = {
            (t, c): partition_for(self._keys[c], self.partitions[t]) for t in TOPICS for c in self.channels
        }
        self._newest_ms: dict[tuple[str, int], int] = {}
        self._pending = [_Pending() for _ in self.campaigns]  # parallel to self.campaigns
        self._id_prefix = ""
        self._ids = itertools.count(1)
        self._cursor_ms: int | None = None

    # -- public ---------------------------------------------------------------------------------------------

    def records(self, start_ms: int, end_ms: int, rate: float) -> Iterator[Record]:
        """Records for event time ``[start_ms, end_ms)`` at ``rate`` records per event-time second.

        ``rate`` is the day's mean; with the daily curve on, the actual rate follows the time of day.
        Intervals must follow one another (each starting where the previous one ended, or later).
        """
        if rate <= 0:
            raise ValueError("rate must be > 0 records per second")
        if self._cursor_ms is not None and start_ms < self._cursor_ms:
            raise ValueError("intervals must not go back in event time")
        self._begin(start_ms)
        flush_ms = self._flush_interval_ms(rate)
        clicks_per_ms = self._clicks_per_ms(rate, flush_ms)
        for lo in range(start_ms, end_ms, SLICE_MS):
            hi = min(lo + SLICE_MS, end_ms)
            effects = self.effects_at(lo)
            events = self._slice(lo, hi, clicks_per_ms, flush_ms, effects)
            if effects.faulty:
                yield from self._deliver_with_faults(events, effects)
            else:
                yield from self._deliver(events)
            self.truth.end_ms = self._cursor_ms = hi

    def effects_at(self, ts_ms: int) -> Effects:
        """The combined effect of the scenarios active at event time ``ts_ms``."""
        effects = Effects()
        offset_s = self.offset_s(ts_ms)
        for scenario in self.scenarios:
            if scenario.active(offset_s):
                scenario.apply(effects)
        return effects

    def offset_s(self, ts_ms: int) -> float:
        """Seconds of event time since the run's start (the scenarios' clock)."""
        return (ts_ms - (self.origin_ms if self.origin_ms is not None else ts_ms)) / 1000

    def phases(self, ts_ms: int) -> list[str]:
        """Where each scenario stands at event time ``ts_ms``, in words."""
        return [s.phase(self.offset_s(ts_ms)) for s in self.scenarios]

    # -- rates ----------------------------------------------------------------------------------------------

    def _begin(self, start_ms: int) -> None:
        if self.origin_ms is None:
            self.origin_ms = start_ms
        if self.truth.start_ms is None:
            self.truth.start_ms = start_ms
            # Seed and start make ids unique across runs, yet reproducible.
            self._id_prefix = f"{self.seed}-{start_ms:x}-"
            for index, pending in enumerate(self._pending):  # staggered, as independent trackers would be
                pending.next_flush_ms = start_ms + index * SLICE_MS // len(self._pending)

    def _flush_interval_ms(self, rate: float) -> int:
        # Trackers report impressions and spend per campaign about once a second; at low rates less often,
        # so that those reports stay a small share (~15 %) of the records.
        return int(min(60.0, max(1.0, len(self.campaigns) * 10 / rate)) * 1000)

    def _clicks_per_ms(self, rate: float, flush_ms: int) -> float:
        batch = self.impressions_per_record
        per_click = sum(p.click_share * p.records_per_click(batch) for p in self.campaigns)
        # Each flush sends one spend record and on average half an impression record more than per_click says.
        flush_records_per_s = len(self.campaigns) * 1.5 / (flush_ms / 1000)
        return max(rate - flush_records_per_s, rate * 0.1) / per_click / 1000

    # -- generation -----------------------------------------------------------------------------------------

    def _slice(self, lo: int, hi: int, clicks_per_ms: float, flush_ms: int, effects: Effects) -> list[_Event]:
        level = clicks_per_ms * (hi - lo) * (daily_curve(lo, self.zone) if self.use_daily_curve else 1.0)
        events: list[_Event] = []
        for profile, pending in zip(self.campaigns, self._pending, strict=True):
            volume = effects.volume.get(profile.channel, 1.0)
            if volume == 0:
                continue
            expected_clicks = level * profile.click_share * volume
            impressions = poisson(self._rng, expected_clicks / profile.ctr)
            clicks = binomial(self._rng, impressions, profile.ctr * effects.ctr.get(profile.channel, 1.0))
            pending.impressions += impressions
            pending.cost_cents += clicks * profile.cpc * 100 * effects.cost.get(profile.channel, 1.0)
            self._funnel(events, profile, clicks, lo, hi)
            if lo >= pending.next_flush_ms:
                self._flush(events, profile, pending, lo, hi)
                pending.next_flush_ms += flush_ms
                if pending.next_flush_ms <= lo:  # after an outage: report again one interval from now
                    pending.next_flush_ms = lo + flush_ms
        if effects.site_down:
            down = effects.site_down
            events = [
                e for e in events if not (e[2].channel in down and e[1] == "clicks" and e[4] != IMPRESSIONS)
            ]
        events.sort(key=_event_ts)
        return events

    def _funnel(self, events: list[_Event], profile: CampaignProfile, clicks: int, lo: int, hi: int) -> None:
        """Each click, and the visit, cart and order that may follow it, all within ``[lo, hi)``."""
        rand = self._rng.random
        stages = (("visit", VISITS, profile.visit_rate), ("cart", CARTS, profile.cart_rate))
        for _ in range(clicks):
            ts = lo + int(rand() * (hi - lo))
            click_id = self._new_id()
            shared = {
                "channel": profile.channel,
                "campaign": profile.campaign,
                "region": REGIONS[int(rand() * len(REGIONS))],
                "click_id": click_id,
            }
            click = {"event_id": click_id, "ts": ts, "type": "click", **shared}
            events.append((ts, "clicks", profile, click, CLICKS, 1))
            for name, index, stage_rate in stages:
                if rand() >= stage_rate:
                    break
                # A stage follows the previous one, within the same slice (so slices stay in ts order).
                ts += int(rand() * (hi - ts))
                doc = {"event_id": self._new_id(), "ts": ts, "type": name, **shared}
                events.append((ts, "clicks", profile, doc, index, 1))
            else:  # reached the cart
                if rand() < profile.order_rate:
                    events.append(self._order(profile, shared, ts + int(rand() * (hi - ts))))

    def _order(self, profile: CampaignProfile, shared: dict[str, str], ts: int) -> _Event:
        rng = self._rng
        cents = max(100, round(profile.aov * rng.lognormvariate(-(AMOUNT_SIGMA**2) / 2, AMOUNT_SIGMA) * 100))
        event_id = self._new_id()
        order = {
            "event_id": event_id,
            "ts": ts,
            **shared,
            "order_id": "o" + event_id,
            "amount": cents / 100,
            "currency": self._limits.currency,
            "new_customer": rng.random() < NEW_CUSTOMER_SHARE,
        }
        return (ts, "orders", profile, order, ORDERS, cents)

    def _flush(
        self, events: list[_Event], profile: CampaignProfile, pending: _Pending, lo: int, hi: int
    ) -> None:
        """A tracker's periodic report: the impressions counted since the last one, and the spend."""
        rand = self._rng.random
        base = {"channel": profile.channel, "campaign": profile.campaign}
        if pending.impressions:
            records = -(-pending.impressions // self.impressions_per_record)
            each, extra = divmod(pending.impressions, records)
            for n in range(records):
                ts = lo + int(rand() * (hi - lo))
                count = each + (n < extra)
                doc = {"event_id": self._new_id(), "ts": ts, **base, "type": "impression", "count": count}
                events.append((ts, "clicks", profile, doc, IMPRESSIONS, count))
            pending.impressions = 0
        cents = round(pending.cost_cents * self._rng.uniform(0.9, 1.1))
        if cents > 0:
            ts = lo + int(rand() * (hi - lo))
            doc = {"event_id": self._new_id(), "ts": ts, **base, "cost": cents / 100}
            doc["currency"] = self._limits.currency
            events.append((ts, "spend", profile, doc, SPEND, cents))
            pending.cost_cents = 0.0

    def _new_id(self) -> str:
        return self._id_prefix + str(next(self._ids))

    # -- delivery -------------------------------------------------------------------------------------------

    def _deliver(self, events: list[_Event]) -> Iterator[Record]:
        """Fast path: every record valid and in ts order per partition (locals: this loop is the hot one)."""
        dumps, count_valid, keys = orjson.dumps, self.truth.count_valid, self._keys
        newest, partition_of = self._newest_ms, self._partition
        sent: dict[tuple[str, int], int] = {}
        for ts, topic, profile, doc, index, value in events:
            channel = profile.channel
            partition = partition_of[topic, channel]
            newest[topic, partition] = ts  # events are sorted, so this is the partition's maximum
            count_valid(channel, profile.campaign, ts, index, value)
            sent[topic, partition] = sent.get((topic, partition), 0) + 1
            yield topic, keys[channel], dumps(doc), ts, partition
        for (topic, partition), n in sent.items():
            self._tally(topic, partition, "valid", n)

    def _deliver_with_faults(self, events: list[_Event], effects: Effects) -> Iterator[Record]:
        rand = self._rng.random
        resends: list[Record] = []
        for event in events:
            ts, topic, profile, doc, index, value = event
            key = self._keys[profile.channel]
            partition = self._partition[topic, profile.channel]
            draw = rand()
            bad = effects.bad + effects.bad_by_channel.get(profile.channel, 0.0)
            if draw < bad:
                reason, data = malformed(self._rng, topic, doc, ts, self._limits)
                self.truth.invalid_reasons[reason] = self.truth.invalid_reasons.get(reason, 0) + 1
                self._tally(topic, partition, "invalid")
                yield topic, key, data, ts, partition
                continue
            if draw < bad + effects.late and self._make_late(topic, partition, doc, effects):
                yield self._deliver_late(topic, key, partition, event)
                continue
            newest_ms = self._newest_ms.get((topic, partition), ts)
            self._newest_ms[topic, partition] = max(newest_ms, ts)
            self.truth.count_valid(profile.channel, profile.campaign, ts, index, value)
            self._tally(topic, partition, "valid")
            record = (topic, key, orjson.dumps(doc), ts, partition)
            if rand() < effects.duplicate:
                resends.append(record)
            yield record
        yield from self._resend(resends)

    def _make_late(self, topic: str, partition: int, doc: dict[str, Any], effects: Effects) -> bool:
        """Backdate ``doc``'s ts, clearly inside or clearly beyond the grace period; False if neither fits."""
        newest = self._newest_ms.get((topic, partition))
        if newest is None:
            return False
        sent_ms = doc["ts"]
        if self._rng.random() < effects.late_beyond_share:
            old = sent_ms - self.grace_ms - int(self._rng.uniform(90_000, 600_000))
            fits = newest - (window_end_ms(old) + self.grace_ms) >= LATENESS_MARGIN_MS
        else:
            # At most half the grace late, so a pipeline reading its topics unevenly still accepts it.
            longest = max(1_000, self.grace_ms // 2 - LATENESS_MARGIN_MS)
            old = sent_ms - int(self._rng.uniform(1_000, longest))
            fits = old < newest and (window_end_ms(old) + self.grace_ms) - newest >= LATENESS_MARGIN_MS
        if fits:
            doc["ts"] = old
        return fits

    def _deliver_late(self, topic: str, key: bytes, partition: int, event: _Event) -> Record:
        sent_ms, _, profile, doc, index, value = event
        ts = doc["ts"]
        if window_end_ms(ts) + self.grace_ms <= self._newest_ms[topic, partition]:
            self._tally(topic, partition, "late")
        else:
            self.truth.count_valid(profile.channel, profile.campaign, ts, index, value)
            self.truth.late_within_grace[topic] += 1
            self._tally(topic, partition, "valid")
        return topic, key, orjson.dumps(doc), sent_ms, partition

    def _resend(self, records: list[Record]) -> Iterator[Record]:
        """Duplicates, sent after their slice; only those far enough from the grace boundary to be clear."""
        for topic, key, data, ts, partition in records:
            # Only on-time records are re-sent, so the Kafka timestamp is also the event's ts.
            if window_end_ms(ts) + self.grace_ms - self._newest_ms[topic, partition] >= LATENESS_MARGIN_MS:
                self._tally(topic, partition, "duplicate")
                yield topic, key, data, ts, partition

    def _tally(self, topic: str, partition: int, kind: str, n: int = 1) -> None:
        self.truth.kinds[topic][kind] += n
        counts = self.truth.partition_records
        counts[topic, partition] = counts.get((topic, partition), 0) + n


def _event_ts(event: _Event) -> int:
    return event[0]
