"""Sequential detection of sustained ratio drops: a one-sided CUSUM on the minute counts. Pure.

A 10-minute window judged on its own sees too little on a mid-size channel (10 clicks against 25 expected
never passes a strict test), and windows judged one after the other never pool their evidence. Here every
minute's counts add to a running log-likelihood ratio, so evidence accumulates for as long as a drop lasts:
a deep drop is caught within minutes, a milder one later, and on a large channel within a minute or two.

For each subject (a channel, or one of its campaigns) and each ratio KPI — CTR, CVR, ROI and the funnel
stages visits/clicks, carts/visits, orders/carts — the judge keeps:

- **A baseline rate** ``p0`` (:class:`Baseline`): the pooled rate of the previous ``history_hours`` closed
  hours plus the same hour on up to ``seasonal_days`` earlier days, once ``min_hours`` hours exist; before
  that (cold start) the subject's own earlier minutes, once ``warmup_minutes`` of them have settled. Hours
  and minutes that belong to a detected drop are left out, so a long incident does not become the normal,
  and so are the hours of a likely drop (a run whose evidence reached ``LIKELY`` of its threshold, at
  least ``min_drop`` deep) that was never confirmed (and while a run of evidence looks like a drop, so
  are its own hours). The alert says which baseline it used.
- **Two CUSUMs** ``S = max(0, S + LLR / φ)``, where LLR is the binomial (Poisson for ROI: GMV in baseline
  order values per unit of spend) log-likelihood ratio of "the rate fell to r1 × p0" against "it is p0",
  for this minute's counts: one tuned for a moderate drop (r1 = ``design_ratio``, 0.6), one for a deep one
  (r1 = ``deep_ratio``, 0.3), which gathers evidence of a collapse faster. φ is the over-dispersion
  measured on the subject's last six hours of 10-minute blocks (not every ratio is binomial: orders need
  not come from tracked carts, and GMV varies with the basket; blocks of a drop, found or likely, never
  count). The baseline is lowered by one standard error of it here (a baseline of a few hundred events
  that happens to be high must not make ordinary minutes look like a drop). ``S`` only grows while the
  observed rate is below the midpoint r* = (1 − r1) / −ln r1 (0.78 for r1 = 0.6, 0.58 for 0.3): smaller
  wobbles pull it back to 0.
- **A threshold per volume.** A CUSUM pages by chance about as often as its evidence would reach h were it
  a random walk losing I nats a minute (I: its expected loss of evidence per stationary minute, the
  Kullback-Leibler divergence of its design rate from the baseline times the KPI's denominator per
  minute, over φ), about once in e^h / I minutes. So h = ln(I × ``alarm_minutes``): a KPI with few events
  a minute needs less evidence for the same false-alarm rate (at 5k impressions an hour CTR gets h ≈ 10,
  at 100k 12), a campaign as much as if it had all its channel's campaigns' information (together they
  page by chance as rarely as their channel). Between ``min_threshold`` and ``threshold``; e^h minutes
  is a lower bound on the mean time between false alarms whatever the volume (Lorden).
- **Two gates on the run** (the minutes since ``S`` last left 0: the drop's likely start), checked when
  ``S`` reaches h: the run's rate must be at least ``min_drop`` below the baseline (big enough to matter)
  and its z-score must pass with a variance that includes the KPI's hour-to-hour wobble τ (real CTR moves
  with the hour beyond binomial noise; each clock hour of the run its own draw) and the baseline's own
  uncertainty (few hours or minutes of history are less certain): ``Var = φE + τ²ΣE_h² + E²φ/B``, E the
  expected numerator over the run, E_h over its part in clock hour h, and B the baseline's. τ is measured
  on the baseline's hours (their mean excess variance over counting noise, an odd hour winsorised) and
  weighed against ``tau_floor`` by how much those hours can say about it: hours of a few orders say
  little, and their lumpy counts must not pass for wobble. The bar is ``z_min_counting`` (3) where
  counting noise dominates that variance (the CUSUM has weighed it already) and rises to ``z_min`` (4)
  where the wobble does: on a big channel, where every dip is "significant", only a dip well beyond the
  usual wobble passes.

Recovery is evidence too: while firing, each ``S`` is capped at its h, and the alert counts as recovered
only once good data has pulled both back to 0 (at least h nats of evidence for "the rate is back near p0")
and the ``recover_minutes`` since then have the rate back near p0 (within its counting noise, and
10 % at least); in between, neither finding nor recovery is reported, so the alert holds instead of
flapping, also when the hour's wobble masks a moderate drop for a while.

One cause, one alert: a campaign's drop is not reported while (or after) its channel's same KPI reports
the drop it is part of, and ROI not while the same subject's CVR explains it.

Cost: O(1) per subject, KPI and minute (running sums); the baseline and φ are recomputed once per hour.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Final

from alerts.model import Finding, Fingerprint, Severity, fingerprint
from alerts.stats import norm_cdf
from streams.events import NO_CAMPAIGN

MINUTE_S: Final = 60
HOUR_S: Final = 3600
DAY_S: Final = 86_400
#: Over-dispersion is measured on 10-minute blocks (minutes are too lumpy: trackers report impressions in
#: batches), the last 36 of them (6 hours).
BLOCK_S: Final = 600
BLOCKS: Final = 36
PEARSON_CAP: Final = 25.0
#: φ is measured again once this many new blocks settled (an hour's).
REMEASURE: Final = 6
PRIOR_BLOCKS: Final = 12.0
#: A run whose evidence reached this share of its threshold is a likely drop: its blocks are kept out of
#: the over-dispersion and, if it is at least ``min_drop`` deep, its hours out of the hourly baselines.
LIKELY: Final = 0.75
#: The last drops found or likely a track remembers (their blocks never count towards φ).
DROPS: Final = 8
#: The hour-to-hour wobble is estimated from this many hours at least (fewer: ``tau_floor``).
MIN_WOBBLE_HOURS: Final = 6
#: Beyond this many standard deviations an hour counts towards the wobble as if it were this many.
WINSOR: Final = 3.0
#: How far from ``tau_floor``² the wobble τ² of a KPI may plausibly be before its hours are measured.
PRIOR_WOBBLE: Final = 0.01

#: Named counts of one minute or hour (money in currency units), as ``agents.snapshot.counts_of`` gives.
Counts = Mapping[str, float]
#: A bucket's counts per campaign (``NO_CAMPAIGN`` for events without one); ``None``: no data.
Source = Callable[[int], Mapping[str, Counts] | None]


@dataclass(frozen=True, slots=True)
class Kpi:
    """A ratio KPI the judge watches: numerator over denominator; ``money`` for ROI (GMV per spend)."""

    name: str
    numerator: str
    denominator: str
    label: str
    check: str
    money: bool = False


KPIS: Final = (
    Kpi(
        "ctr",
        "clicks",
        "impressions",
        "CTR",
        "Check the creatives and placements on {where}: a creative rejected or paused by the platform, a "
        "placement or targeting change, a bid change that moved ads to worse slots, or a click tracker that "
        "lost events (impressions still counted, clicks not).",
    ),
    Kpi(
        "cvr",
        "orders",
        "clicks",
        "CVR",
        "Check the landing page and checkout for {where}: page errors or slow loads, items out of stock, a "
        "price or coupon change, a broken payment step, or order tracking that lost events.",
    ),
    Kpi(
        "funnel_visit",
        "visits",
        "clicks",
        "Visits per click",
        "Clicks on {where} no longer reach the page: a broken or slow landing URL, a redirect or deep link "
        "that fails in some app, or a page tag that stopped firing.",
    ),
    Kpi(
        "funnel_cart",
        "carts",
        "visits",
        "Carts per visit",
        "Visitors from {where} stop adding to cart: out-of-stock or removed items, a price change, a broken "
        "add-to-cart button, or a landing page that no longer matches the ad.",
    ),
    Kpi(
        "funnel_order",
        "orders",
        "carts",
        "Orders per cart",
        "Carts from {where} are not checked out: a payment or checkout error, a coupon that stopped "
        "working, shipping costs, or order tracking that lost events.",
    ),
    Kpi(
        "roi",
        "gmv",
        "spend",
        "ROI",
        "Check what got worse on {where}: CPC (bids, auction competition), conversion (landing page, stock, "
        "price), or basket size (coupons, product mix).",
        money=True,
    ),
)


@dataclass(frozen=True, slots=True)
class SequentialConfig:
    """How sensitive the sequential judge is; the defaults are measured in ``benchmarks/alert_quality.py``."""

    #: The drop the CUSUM is tuned for: the rate at ``design_ratio`` × baseline (a 40 % drop).
    design_ratio: float = 0.6
    #: A second CUSUM tuned for deep drops (the rate at ``deep_ratio`` × baseline, a 70 % drop): it gathers
    #: evidence of a collapse faster than the first (None: none).
    deep_ratio: float | None = 0.3
    #: The alarm threshold h in nats of a subject's KPI is what makes false alarms as rare as once in
    #: ``alarm_minutes`` for the information its counts carry (h = ln(I × alarm_minutes), I the expected
    #: evidence a stationary minute takes away): a KPI with few events per minute needs less evidence
    #: for the same false-alarm rate, a busy one more. Never more than ``threshold``, never less than
    #: ``min_threshold``; e^h minutes is a lower bound on the mean time between false alarms (Lorden).
    alarm_minutes: float = 100_000.0
    threshold: float = 12.0
    min_threshold: float = 6.0
    #: The run's rate must be at least this far below the baseline.
    min_drop: float = 0.25
    #: The run's z-score (hour-to-hour wobble and baseline uncertainty included) must be below −z_min
    #: where those dominate its variance, below −z_min_counting where counting noise does (the CUSUM has
    #: already weighed that), and in between in proportion.
    z_min: float = 4.0
    z_min_counting: float = 3.0
    #: Hour-to-hour relative wobble of a KPI assumed at least, and until its hours show more (estimated
    #: from the history above it).
    tau_floor: float = 0.05
    #: Baselines: closed hours before the current one, and the same hour on earlier days.
    history_hours: int = 24
    seasonal_days: int = 7
    #: Hours of history needed before hours make the baseline (before: the subject's own minutes).
    min_hours: int = 3
    #: Cold start: minutes enter the subject's own baseline once this old (a drop found by then is left out).
    settle_minutes: int = 30
    #: ... and judging starts once this many of them have settled.
    warmup_minutes: int = 30
    #: The own-minutes baseline keeps at most this many minutes.
    cold_minutes: int = 360
    #: A baseline must hold at least this many numerator events (clicks for CTR, orders for CVR, ...).
    min_baseline_events: float = 20.0
    #: A drop is over once this many minutes have passed since its evidence fell back to 0, with the rate
    #: over them back near the baseline.
    recover_minutes: int = 10
    #: Minutes replayed silently when a channel is first seen (a restart, a rebalance) or after a gap.
    replay_minutes: int = 90
    #: A campaign without data for this long (and no drop found on it) is forgotten: it starts afresh if
    #: it comes back. Bounds the judge's memory by the campaigns active recently, not all ever seen.
    forget_minutes: int = 360
    #: Campaigns of a channel judged on their own at most (the first seen; more wait until some are
    #: forgotten); their channel's judge still covers them.
    max_campaigns: int = 2000
    #: A drop at least this deep is critical (and ROI below ``red_line``).
    critical_drop: float = 0.8
    red_line: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.design_ratio < 1.0:
            raise ValueError(f"design_ratio must be in (0, 1), got {self.design_ratio!r}")
        if self.deep_ratio is not None and not 0.0 < self.deep_ratio < self.design_ratio:
            raise ValueError(f"deep_ratio must be in (0, design_ratio), got {self.deep_ratio!r}")
        if not 0 < self.min_threshold <= self.threshold:
            raise ValueError(
                f"need 0 < min_threshold <= threshold, got {self.min_threshold!r}, {self.threshold!r}"
            )
        if not self.alarm_minutes > 0:
            raise ValueError(f"alarm_minutes must be > 0, got {self.alarm_minutes!r}")
        if not 0.0 <= self.min_drop < 1.0:
            raise ValueError(f"min_drop must be in [0, 1), got {self.min_drop!r}")

    @property
    def midpoint(self) -> float:
        """The rate ratio below which the CUSUM grows: (1 − r1) / −ln r1."""
        return (1.0 - self.design_ratio) / -math.log(self.design_ratio)

    @property
    def ratios(self) -> tuple[float, ...]:
        """The design ratios of a track's CUSUMs: the main one first."""
        return (self.design_ratio,) if self.deep_ratio is None else (self.design_ratio, self.deep_ratio)


@dataclass(frozen=True, slots=True)
class Baseline:
    """The rate a subject's KPI is judged against, how sure it is, and where it comes from."""

    rate: float  # numerator per unit of denominator (ROI: orders per unit of spend)
    events: float  # the numerator events it pools (ROI: orders)
    denominator: float
    tau2: float  # hour-to-hour relative variance of the rate beyond counting noise
    source: str
    unit: float = 1.0  # ROI: the baseline's GMV per order; counts are judged in orders' worth of GMV

    @property
    def binomial(self) -> bool:
        """Binomial variance (a share of the denominator, below 1) or Poisson (ROI, or a ratio above 1)."""
        return self.unit == 1.0 and self.rate < 1.0

    @property
    def value(self) -> float:
        """The baseline KPI as people read it (ROI: GMV per spend)."""
        return self.rate * self.unit


@dataclass(frozen=True, slots=True)
class _Recovered:
    """Evidence of recovery: the statistic is back at 0. ``value``: this minute's KPI (None: no data)."""

    value: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """One minute of the sequential judge: findings, and the fingerprints with evidence of recovery."""

    findings: list[Finding] = field(default_factory=list)
    recovered: dict[Fingerprint, float | None] = field(default_factory=dict)


@dataclass(slots=True)
class _Cusum:
    """One CUSUM of a track (tuned for the rate at ``ratio`` × baseline) and the sums of its current run:
    numerator seen, expected, denominator, since the statistic last left 0; and Σ over its clock hours of
    the expected numerator squared (the wobble moves the rate hour by hour: each hour its own draw)."""

    ratio: float
    h: float  # its alarm threshold in nats
    s: float = 0.0
    run_start: int | None = None
    x: float = 0.0
    e: float = 0.0
    n: float = 0.0
    hours_e2: float = 0.0  # the run's earlier clock hours
    hour: int = -1
    hour_e: float = 0.0  # the current clock hour

    def add(self, x: float, e: float, n: float, start_s: int) -> None:
        """Add a minute to the run."""
        if self.run_start is None:
            self.run_start = start_s
        self.x, self.e, self.n = self.x + x, self.e + e, self.n + n
        hour = start_s - start_s % HOUR_S
        if hour != self.hour:
            self.hours_e2 += self.hour_e**2
            self.hour, self.hour_e = hour, 0.0
        self.hour_e += e

    def reset(self) -> None:
        self.run_start, self.x, self.e, self.n = None, 0.0, 0.0, 0.0
        self.hours_e2, self.hour, self.hour_e = 0.0, -1, 0.0

    @property
    def e2(self) -> float:
        """Σ over the run's clock hours of its expected numerator in each, squared."""
        return self.hours_e2 + self.hour_e**2


@dataclass(frozen=True, slots=True)
class Weights:
    """What a minute adds to a track's CUSUMs against ``baseline`` at dispersion ``phi`` and ``per_minute``
    denominator units a minute: x × slope + n × offset for each, and each one's threshold h (``peers``:
    the subjects that share the false-alarm rate of one)."""

    baseline: Baseline
    phi: float
    per_minute: float
    peers: int
    p0: float
    terms: tuple[tuple[float, float, float], ...]


#: The most ``_Track.hourly`` values without a baseline a judge shares at once (one an hour per key in use).
MAX_SHARED_KEYS: Final = 4096
#: Hours none of a KPI's alarms fell in: one shared empty set for the many tracks without any.
NO_HOURS: Final[frozenset[int]] = frozenset()


@dataclass(slots=True)
class _Track:
    """The CUSUMs of one subject and KPI.

    Most of the tracks a judge keeps are quiet (a campaign with data in a few minutes of its hours): their
    state is the defaults, and costs no objects of its own. CUSUMs at 0 with no run are exactly fresh
    ones, so they are kept only while one of them is not (``cusums`` None: all quiet); the hours, blocks
    and drops are shared empty values until there is one; the block being filled is None while empty.
    A campaign with data in one minute of 333 cost 8.2 KiB and 59 objects for the garbage collector when
    each track had its own (two CUSUMs, a set, two lists, two arrays); now 4.0 KiB and 18: 0.4 GB less at
    100,000 such campaigns. With data every minute, 46 → 42 KiB and 84 → 46 objects. A track without an
    hourly baseline shares its ``hourly`` with every other of the same key (``_without_hourly``): 3.3 KiB
    for the campaign in one minute of 333.
    """

    cusums: list[_Cusum] | None = None
    weights: Weights | None = None
    alarmed: bool = False
    marked: bool = False
    last_alarmed: int | None = None  # the last minute this KPI was found dropped
    # After a drop, from when its evidence first fell back to 0: numerator seen, expected, minutes with data.
    recovery: list[float] | None = None
    # Hours of this KPI's alarms: left out of its hourly baselines, so a drop does not become the normal
    # (nor pass for the usual wobble); and its hourly baseline with what it was computed for.
    flagged: set[int] | frozenset[int] = NO_HOURS
    hourly: tuple[tuple[int, int, int | None], Baseline | None] | None = None
    # The measured over-dispersion φ: the last ``BLOCKS`` settled 10-minute blocks (numerator,
    # denominator, orders) outside drops, those still settling, the block being filled, the last drops
    # found or likely (start, end; None while on: their blocks never settle, also when a likely one
    # fizzles out: a drop nobody caught must not pass for noise), and φ itself (None: fewer than 3
    # blocks yet). The settled blocks and the block being filled are flat arrays of doubles, three a
    # block: a tuple of three floats per block cost ~140 bytes, its doubles 24. The few waiting blocks and
    # drops are tuples, rebound when they change (a deque costs ~700 bytes however short, a list 56 empty).
    blocks: array[float] | None = None
    waiting: tuple[tuple[int, tuple[float, float, float]], ...] = ()
    block: array[float] | None = None
    drops: tuple[tuple[int, int | None], ...] = ()
    phi: float | None = None
    per_minute: float = 0.0  # the denominator per minute over the same blocks
    fresh: int = 0  # blocks settled since φ was measured
    # The start of the earliest current run that looks like a drop: evidence ``LIKELY`` of its threshold.
    likely: int | None = None

    @property
    def run_start(self) -> int | None:
        """The start of the earliest current run (None: all quiet)."""
        if self.cusums is None:
            return None
        starts = [c.run_start for c in self.cusums if c.run_start is not None]
        return min(starts) if starts else None


#: The counts the KPIs read, in the order a settling or settled minute keeps them.
FIELDS: Final = tuple(dict.fromkeys(name for k in KPIS for name in (k.numerator, k.denominator, "orders")))
#: A minute packed as bytes (its start, whether it belongs to a drop, its ``FIELDS``): a dict per minute
#: per campaign cost ~300 bytes and a GC-tracked object each; packed, a minute costs its 65 or 64 bytes in
#: one untracked buffer per subject, and doubles keep the counts exactly.
_PENDING: Final = struct.Struct(f"<q?{len(FIELDS)}d")
_SETTLED: Final = struct.Struct(f"<q{len(FIELDS)}d")


@dataclass(slots=True)
class _Subject:
    """One channel or campaign: its tracks, its settling and settled minutes (the cold-start baseline),
    packed one after the other (``_PENDING``, ``_SETTLED``), oldest first."""

    tracks: dict[str, _Track] = field(default_factory=dict)
    pending: bytearray = field(default_factory=bytearray)
    settled: bytearray = field(default_factory=bytearray)
    sums: dict[str, float] = field(default_factory=dict)
    #: The last minute judged: a campaign is judged only in minutes it has data (see ``_catch_up``).
    last: int | None = None


@dataclass(slots=True)
class _Channel:
    last: int | None = None
    subjects: dict[str | None, _Subject] = field(default_factory=dict)
    # The closed hours read for baselines (per campaign) and, once asked for, the channel's sums of them.
    hours: tuple[int, dict[int, Mapping[str, Counts]], dict[int, Counts] | None] | None = None
    swept: int = 0


class SequentialJudge:
    """Per channel and campaign, every minute: the CUSUM of every ratio KPI, its findings and recoveries."""

    def __init__(self, config: SequentialConfig | None = None, zone: tzinfo = UTC) -> None:
        self.config = config or SequentialConfig()
        self.zone = zone
        self._channels: dict[str, _Channel] = {}
        #: ``_Track.hourly`` of the tracks without an hourly baseline, one per key, shared: most tracks of a
        #: judge (campaigns with data in few hours) have none, and a pair of tuples each cost ~120 bytes.
        self._no_hourly: dict[tuple[int, int, int | None], tuple[tuple[int, int, int | None], None]] = {}

    def forget(self) -> None:
        """Drop every state (ownership changed): channels are replayed from their buckets when next seen."""
        self._channels.clear()

    def campaigns(self, channel: str) -> set[str]:
        """The campaigns of ``channel`` the judge keeps state for now."""
        state = self._channels.get(channel)
        return {c for c in state.subjects if c is not None} if state is not None else set()

    def minute(self, channel: str, start_s: int, minutes: Source, hours: Source) -> Verdict:
        """Judge the closed minute at ``start_s`` of ``channel``; ``minutes``/``hours`` read its buckets.

        A channel seen for the first time (or after a gap) first replays up to ``replay_minutes`` earlier
        minutes silently, so a restarted worker resumes with the state it would have had. A minute at or
        before the last one judged is ignored.
        """
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        if state.last is not None and start_s <= state.last:
            return Verdict()
        first = start_s - self.config.replay_minutes * MINUTE_S
        if state.last is not None:
            first = max(first, state.last + MINUTE_S)
        for replayed in range(first, start_s, MINUTE_S):
            self._step(state, channel, replayed, minutes, hours, None)
        verdict = Verdict()
        self._step(state, channel, start_s, minutes, hours, verdict)
        return verdict

    # -- one minute ------------------------------------------------------------------------------------

    def _step(
        self,
        state: _Channel,
        channel: str,
        start_s: int,
        minutes: Source,
        hours: Source,
        verdict: Verdict | None,
    ) -> None:
        state.last = start_s
        per_campaign = minutes(start_s) or {}
        whole: dict[str, float] = {}
        for counts in per_campaign.values():
            for name, value in counts.items():
                whole[name] = whole.get(name, 0.0) + value
        # The channel every minute; a campaign only in minutes it has data: a minute without any changes
        # none of its statistics, and what time alone does (blocks closing, minutes settling) is caught up
        # when it next has data. So a minute costs what its active campaigns cost, however many are known.
        subjects: dict[str | None, Counts] = {None: whole}
        for name in sorted(per_campaign):
            if name != NO_CAMPAIGN:
                subjects[name] = per_campaign[name]
        self._forget_idle(state, start_s)
        channel_alarms: set[str] = set()
        # Peers: every campaign the judge follows, with data this minute or not.
        known = sum(1 for c in state.subjects if c is not None)
        campaigns = max(1, known + sum(1 for c in subjects if c is not None and c not in state.subjects))
        for campaign, counts in subjects.items():
            subject = state.subjects.get(campaign)
            if subject is None:
                if len(state.subjects) > self.config.max_campaigns:
                    continue
                subject = state.subjects[campaign] = _Subject()
            elif subject.last is not None and subject.last < start_s - MINUTE_S:
                self._catch_up(subject, start_s)
            subject.last = start_s
            baselines = self._baselines(state, subject, channel, campaign, start_s, hours)
            peers = 1 if campaign is None else campaigns
            for kpi in KPIS:
                result = self._judge(subject, kpi, baselines.get(kpi.name), counts, start_s, peers)
                if verdict is None or result is None:
                    continue
                fp = fingerprint("anomaly", kpi.name, channel, campaign)
                if isinstance(result, _Recovered):
                    verdict.recovered[fp] = result.value
                    continue
                cvr = subject.tracks.get("cvr")
                if kpi.money and cvr is not None and (cvr.alarmed or cvr.likely is not None):
                    continue  # fewer orders per click explain the lower ROI: the CVR alert says it
                channel_track = state.subjects[None].tracks[kpi.name]
                own = subject.tracks[kpi.name]
                if campaign is None:
                    channel_alarms.add(kpi.name)
                elif (
                    kpi.name in channel_alarms
                    or channel_track.alarmed
                    or (
                        channel_track.last_alarmed is not None
                        and own.run_start is not None
                        and own.run_start <= channel_track.last_alarmed
                    )
                ):
                    continue  # the channel's alert covers this drop (and names its campaigns)
                verdict.findings.append(_placed(result, channel, campaign))
            self._settle(subject, counts, start_s)

    def _catch_up(self, subject: _Subject, start_s: int) -> None:
        """What the minutes without data since ``subject.last`` would have done: close each KPI's 10-minute
        blocks at their boundaries (settling waiting blocks, re-measuring φ), and settle queued minutes."""
        first = subject.last + MINUTE_S if subject.last is not None else start_s
        boundary = first + (-(first + MINUTE_S) % BLOCK_S)  # the first skipped minute that ends a block
        for kpi in KPIS:
            track = subject.tracks.get(kpi.name)
            if track is None:
                continue
            minute = boundary
            settle_s = self.config.settle_minutes * MINUTE_S
            while minute < start_s:
                self._measure(track, kpi, {}, minute)
                if not track.waiting:
                    break  # the next boundaries find an empty block and nothing to settle: no change
                # Boundaries before the oldest waiting block settles change nothing either: skip them.
                due = track.waiting[0][0] + settle_s
                minute = max(minute + BLOCK_S, due + (-(due + MINUTE_S) % BLOCK_S))
        self._settle(subject, {}, start_s - MINUTE_S)

    def _forget_idle(self, state: _Channel, start_s: int) -> None:
        """Once an hour: forget the campaigns without data for ``forget_minutes`` and no drop found."""
        if start_s - state.swept < HOUR_S:
            return
        state.swept = start_s
        horizon = start_s - self.config.forget_minutes * MINUTE_S
        for campaign in [
            c
            for c, subject in state.subjects.items()
            if c is not None
            and subject.last is not None
            and subject.last < horizon
            and not any(track.alarmed for track in subject.tracks.values())
        ]:
            del state.subjects[campaign]

    def _judge(
        self,
        subject: _Subject,
        kpi: Kpi,
        baseline: Baseline | None,
        counts: Counts,
        start_s: int,
        peers: int = 1,
    ) -> Finding | _Recovered | None:
        """One KPI's minute: a finding (a drop detected), recovered (the statistic is back at 0), or
        ``None`` when the minute proves nothing either way (the alert, if any, holds). ``peers``: how many
        subjects share one false-alarm rate (a campaign: the channel's campaigns)."""
        track = self._track(subject, kpi)
        self._measure(track, kpi, counts, start_s)
        if baseline is None or track.phi is None:
            return None
        n = counts.get(kpi.denominator, 0.0)
        x = counts.get(kpi.numerator, 0.0) / baseline.unit
        e = 0.0
        weights = track.weights
        # Quiet CUSUMs are fresh ones (None): made again for a minute with data, kept only if one moves.
        cusums = track.cusums
        if n > 0 or x > 0:
            if cusums is None:
                cusums = [_Cusum(ratio, self.config.threshold) for ratio in self.config.ratios]
            # The quasi-likelihood ratio is linear in the counts, so a minute's clicks reported before its
            # impressions (trackers batch them) count the same as if they came together.
            if (
                weights is None
                or weights.baseline is not baseline
                or weights.phi != track.phi
                or weights.per_minute != track.per_minute
                or weights.peers != peers
            ):
                weights = track.weights = weigh(self.config, baseline, track.phi, track.per_minute, peers)
            e = weights.p0 * n
            for cusum, (slope, offset, h) in zip(cusums, weights.terms, strict=True):
                cusum.h = h
                cusum.s = max(0.0, cusum.s + x * slope + n * offset)
                if cusum.s > 0.0:
                    cusum.add(x, e, n, start_s)
                if track.alarmed:
                    cusum.s = min(cusum.s, h)
        quiet, likely, peak = True, None, False
        for cusum in cusums or ():
            if cusum.s <= 0.0:
                if cusum.run_start is not None:
                    cusum.reset()
                continue
            quiet = False
            if cusum.s >= LIKELY * cusum.h and cusum.run_start is not None:
                likely = cusum.run_start if likely is None else min(likely, cusum.run_start)
                peak = peak or cusum.s >= cusum.h
                if cusum.x <= (1.0 - self.config.min_drop) * cusum.e:
                    hours = range(cusum.run_start - cusum.run_start % HOUR_S, start_s + 1, HOUR_S)
                    if not track.flagged.issuperset(hours):
                        track.flagged = {*track.flagged, *hours}
        track.cusums = None if quiet else cusums
        track.likely = likely
        if likely is not None:
            self._suspect(track, likely)
        elif not track.alarmed and track.drops and track.drops[-1][1] is None:
            track.drops = (*track.drops[:-1], (track.drops[-1][0], start_s + MINUTE_S))
        if quiet:
            track.marked = False
            if track.alarmed and track.recovery is None:
                track.recovery = [0.0, 0.0, 0]
        if track.alarmed and track.recovery is not None and not peak:
            return self._recovering(track, x, e, track.phi, counts, kpi, start_s)
        track.recovery = None
        if quiet:
            return _Recovered(counts.get(kpi.numerator, 0.0) / n if n > 0 else None)
        if peak:
            for cusum in cusums or ():
                z = self._gated(cusum, baseline, track.phi)
                if z is not None:
                    return self._alarm(subject, kpi, track, cusum, baseline, z, start_s)
        return None

    def _gated(self, cusum: _Cusum, baseline: Baseline, phi: float) -> float | None:
        """The z-score of ``cusum``'s run if it is evidence of a drop: the statistic at the threshold, the run
        at least ``min_drop`` below the baseline and beyond its wobble (see the module's docstring)."""
        cfg = self.config
        if cusum.s < cusum.h or cusum.run_start is None or cusum.e <= 0:
            return None
        beyond = baseline.tau2 * cusum.e2 + cusum.e**2 * phi / max(baseline.events, 1.0)
        variance = phi * cusum.e + beyond
        z = (cusum.x - cusum.e) / math.sqrt(variance)
        required = cfg.z_min_counting + (cfg.z_min - cfg.z_min_counting) * beyond / variance
        if 1.0 - cusum.x / cusum.e < cfg.min_drop or z > -required:
            return None
        return z

    def _alarm(
        self,
        subject: _Subject,
        kpi: Kpi,
        track: _Track,
        cusum: _Cusum,
        baseline: Baseline,
        z: float,
        start_s: int,
    ) -> Finding:
        """A drop found by ``cusum``: keep its minutes and hours out of the baselines, and word it."""
        begun = track.run_start
        assert begun is not None
        track.alarmed = True
        track.last_alarmed = start_s
        self._suspect(track, begun)
        # A drop: its hours leave this KPI's hourly baselines, its minutes the own-minutes one (from the
        # earliest run: the main CUSUM's may have begun before the deep one's).
        track.flagged = {*track.flagged, *range(begun - begun % HOUR_S, start_s + 1, HOUR_S)}
        if not track.marked:
            track.marked = True
            for offset in range(0, len(subject.pending), _PENDING.size):
                if _PENDING.unpack_from(subject.pending, offset)[0] >= begun:
                    struct.pack_into("<?", subject.pending, offset + 8, True)
        return self._finding(kpi, track, cusum, baseline, z, start_s)

    @staticmethod
    def _suspect(track: _Track, since: int) -> None:
        """A drop found or likely since ``since``: its blocks do not settle until it is over."""
        if track.drops and track.drops[-1][1] is None:
            track.drops = (*track.drops[:-1], (min(track.drops[-1][0], since), None))
        else:
            track.drops = (*track.drops, (since, None))[-DROPS:]

    def _track(self, subject: _Subject, kpi: Kpi) -> _Track:
        track = subject.tracks.get(kpi.name)
        if track is None:
            track = subject.tracks[kpi.name] = _Track()
        return track

    def _recovering(
        self, track: _Track, x: float, e: float, phi: float, counts: Counts, kpi: Kpi, start_s: int
    ) -> _Recovered | None:
        """After a drop, from the minute its evidence first fell back to 0: recovered once ``recover_minutes``
        minutes with data have passed since, with the rate over them back near the baseline (within its
        counting noise, and 10 % at least), and no new run building up. A drop the hour's wobble masks for a
        while, or a rate that came back only halfway, is still the same drop: the alert holds."""
        cfg = self.config
        recovery = track.recovery
        assert recovery is not None
        if e > 0 or x > 0:
            recovery[0] += x
            recovery[1] += e
            recovery[2] += 1
        seen, expected, minutes = recovery
        if minutes < cfg.recover_minutes or expected <= 0 or track.likely is not None:
            return None
        if seen / expected < 1.0 - max(0.1, 2.0 * math.sqrt(phi / expected)):
            return None
        track.alarmed, track.recovery = False, None
        track.drops = (*track.drops[:-1], (track.drops[-1][0], start_s + MINUTE_S))
        n = counts.get(kpi.denominator, 0.0)
        return _Recovered(counts.get(kpi.numerator, 0.0) / n if n > 0 else None)

    def _measure(self, track: _Track, kpi: Kpi, counts: Counts, start_s: int) -> None:
        """Add the minute to its 10-minute block; blocks count towards φ once ``settle_minutes`` old, and
        φ is measured again every ``REMEASURE`` settled blocks (it moves slowly).

        The delay keeps a drop from passing for noise: its blocks are still waiting when it is found,
        and a found drop's blocks never count (see ``_judge``).
        """
        numerator = counts.get(kpi.numerator, 0.0)
        denominator = counts.get(kpi.denominator, 0.0)
        orders = counts.get("orders", 0.0)
        block = track.block
        if block is None and (numerator or denominator or orders):
            block = track.block = array("d", (0.0, 0.0, 0.0))
        if block is not None:
            block[0] += numerator
            block[1] += denominator
            block[2] += orders
        if (start_s + MINUTE_S) % BLOCK_S:
            return
        if block is not None and block[1] > 0:
            track.waiting = (*track.waiting, (start_s + MINUTE_S - BLOCK_S, (block[0], block[1], block[2])))
        track.block = None
        while track.waiting and track.waiting[0][0] <= start_s - self.config.settle_minutes * MINUTE_S:
            (began, counted), track.waiting = track.waiting[0], track.waiting[1:]
            if not any(a < began + BLOCK_S and (b is None or began < b) for a, b in track.drops):
                if track.blocks is None:
                    track.blocks = array("d")
                track.blocks.extend(counted)
                del track.blocks[: max(0, len(track.blocks) - 3 * BLOCKS)]
                track.fresh += 1
        if track.fresh >= REMEASURE or track.phi is None:
            track.fresh = 0
            blocks = track.blocks if track.blocks is not None else array("d")
            rows = list(zip(blocks[0::3], blocks[1::3], blocks[2::3], strict=True))
            if track.phi is None:
                rows += [b for _, b in track.waiting]
            track.phi = _dispersion(kpi, rows)
            if rows:
                track.per_minute = sum(b[1] for b in rows) / (len(rows) * BLOCK_S / MINUTE_S)

    # -- the baseline ------------------------------------------------------------------------------------

    def _baselines(
        self,
        state: _Channel,
        subject: _Subject,
        channel: str,
        campaign: str | None,
        start_s: int,
        hours: Source,
    ) -> dict[str, Baseline | None]:
        """Every KPI's baseline for this minute: from hours where there are enough, else its own minutes.

        The hourly ones are computed once per hour, and again when the KPI's left-out hours change: the
        hours of its past alarms and of likely drops of at least ``min_drop`` (a drop nobody caught must
        not become the normal, nor pass for the usual wobble), and while a run of evidence looks like a
        drop, that run's hours (a drop must not dilute its own baseline); the own-minutes one comes from
        running sums.
        """
        hour = start_s - start_s % HOUR_S
        result: dict[str, Baseline | None] = {}
        history: dict[int, Counts] | None = None
        for kpi in KPIS:
            track = self._track(subject, kpi)
            likely = track.likely
            running = likely - likely % HOUR_S if likely is not None else None
            if track.hourly is not None and track.hourly[0][0] != hour and track.flagged:
                oldest = hour - self.config.seasonal_days * DAY_S
                track.flagged = {flagged for flagged in track.flagged if flagged >= oldest} or NO_HOURS
            key = (hour, len(track.flagged), running)
            if track.hourly is None or track.hourly[0] != key:
                if history is None:
                    history = self._history(state, hour, hours, campaign)
                rows = {
                    start: counts
                    for start, counts in history.items()
                    if start not in track.flagged and (running is None or start < running)
                }
                hourly = self._hourly(kpi, rows, hour)
                track.hourly = (key, hourly) if hourly is not None else self._without_hourly(key)
            result[kpi.name] = track.hourly[1] or self._cold(kpi, subject)
        return result

    def _without_hourly(self, key: tuple[int, int, int | None]) -> tuple[tuple[int, int, int | None], None]:
        shared = self._no_hourly.get(key)
        if shared is None:
            if len(self._no_hourly) >= MAX_SHARED_KEYS:
                self._no_hourly.clear()  # the tracks keep theirs; only the sharing starts again
            shared = self._no_hourly[key] = (key, None)
        return shared

    def _history(self, state: _Channel, hour: int, hours: Source, campaign: str | None) -> dict[int, Counts]:
        """A subject's counts in the channel's closed hours a baseline may use: read once per hour, and the
        channel's own (summed over its campaigns) once per hour too."""
        if state.hours is None or state.hours[0] != hour:
            cfg = self.config
            starts = {hour - k * HOUR_S for k in range(1, cfg.history_hours + 1)}
            starts |= {hour - d * DAY_S for d in range(1, cfg.seasonal_days + 1)}
            state.hours = (hour, {s: v for s in starts if (v := hours(s))}, None)
        _hour, found, whole = state.hours
        if campaign is not None:
            return {start: counts.get(campaign, {}) for start, counts in found.items()}
        if whole is None:
            whole = {start: _summed(counts.values()) for start, counts in found.items()}
            state.hours = (hour, found, whole)
        return whole

    def _hourly(self, kpi: Kpi, rows: Mapping[int, Counts], hour: int) -> Baseline | None:
        """The pooled rate of the recent hours and the same hour on earlier days, once ``min_hours`` exist."""
        cfg = self.config
        useful = {s: c for s, c in rows.items() if c.get(kpi.denominator, 0.0) > 0}
        recent = sum(1 for s in useful if s >= hour - cfg.history_hours * HOUR_S)
        if recent < cfg.min_hours:
            return None
        seasonal = len(useful) - recent
        source = f"the previous {recent} h"
        if seasonal:
            source += f" and the same hour on {seasonal} earlier day{'s' if seasonal > 1 else ''}"
        return self._pooled(kpi, list(useful.values()), source, hourly=True)

    def _cold(self, kpi: Kpi, subject: _Subject) -> Baseline | None:
        """Cold start: the subject's own settled minutes (no hourly history yet)."""
        settled = len(subject.settled) // _SETTLED.size
        if settled < self.config.warmup_minutes:
            return None
        return self._pooled(kpi, [subject.sums], f"its own last {settled} min (no hourly history yet)")

    def _pooled(self, kpi: Kpi, windows: list[Counts], source: str, hourly: bool = False) -> Baseline | None:
        cfg = self.config
        numerator = sum(w.get(kpi.numerator, 0.0) for w in windows)
        denominator = sum(w.get(kpi.denominator, 0.0) for w in windows)
        if denominator <= 0 or numerator <= 0:
            return None
        tau2 = cfg.tau_floor**2
        if kpi.money:
            orders = sum(w.get("orders", 0.0) for w in windows)
            if orders < cfg.min_baseline_events:
                return None
            unit, rate = numerator / orders, orders / denominator
            return Baseline(rate, orders, denominator, tau2, source, unit)
        if numerator < cfg.min_baseline_events:
            return None
        rate = numerator / denominator
        if hourly and len(windows) >= MIN_WOBBLE_HOURS:
            tau2 = max(tau2, _wobble(kpi, windows, rate, tau2))
        return Baseline(rate, numerator, denominator, tau2, source)

    def _settle(self, subject: _Subject, counts: Counts, start_s: int) -> None:
        """Queue this minute for the own-minutes baseline; minutes older than the settle time join it."""
        cfg = self.config
        pending, settled = subject.pending, subject.settled
        if any(counts.values()):  # a minute without any event says nothing about the rates
            pending += _PENDING.pack(start_s, False, *(counts.get(name, 0.0) for name in FIELDS))
        while pending and _PENDING.unpack_from(pending)[0] <= start_s - cfg.settle_minutes * MINUTE_S:
            minute, suspect, *values = _PENDING.unpack_from(pending)
            del pending[: _PENDING.size]  # amortised O(1): a bytearray drops its head without copying
            if suspect:
                continue
            settled += _SETTLED.pack(minute, *values)
            _add_fields(subject.sums, values, 1.0)
        # The last ``cold_minutes`` minutes, by time: a campaign with data now and then must not keep a
        # day's worth of scattered minutes.
        while settled and (
            len(settled) > cfg.cold_minutes * _SETTLED.size
            or _SETTLED.unpack_from(settled)[0] <= start_s - cfg.cold_minutes * MINUTE_S
        ):
            _, *old = _SETTLED.unpack_from(settled)
            del settled[: _SETTLED.size]
            _add_fields(subject.sums, old, -1.0)

    # -- wording -----------------------------------------------------------------------------------------

    def _finding(
        self, kpi: Kpi, track: _Track, cusum: _Cusum, baseline: Baseline, z: float, start_s: int
    ) -> Finding:
        assert track.phi is not None
        cfg = self.config
        assert cusum.run_start is not None
        end_s = start_s + MINUTE_S
        span = end_s - cusum.run_start
        base_value = baseline.value
        value = cusum.x * baseline.unit / cusum.n if cusum.n > 0 else 0.0
        drop = 1.0 - value / base_value
        p_value = norm_cdf(z)
        severity: Severity = "critical" if drop >= cfg.critical_drop else "warning"
        if kpi.money and value < cfg.red_line:
            severity = "critical"
        shown = _shown(kpi)
        volume = _volume(cusum.n)
        summary = (
            f"{kpi.label} fell {drop * 100:.0f} % over the last {_span(span)} "
            f"({shown(base_value)} → {shown(value)}, {volume} {kpi.denominator}, {_p(p_value)})"
        )
        if kpi.money and value < cfg.red_line:
            summary += f"; below {cfg.red_line:g}: recommend pausing"
        numerator_name = "orders' worth of GMV" if kpi.money else kpi.numerator
        description = (
            f"{{where}}: {kpi.label} over the last {_span(span)} was {shown(value)} against a baseline of "
            f"{shown(base_value)} from {baseline.source}; {cusum.x:,.0f} {numerator_name} where "
            f"{cusum.e:,.0f} were expected ({cusum.n:,.0f} {kpi.denominator}). Sequential test (one-sided "
            f"CUSUM of log-likelihood ratios, minute by minute, tuned for a "
            f"{(1.0 - cusum.ratio) * 100:.0f} % drop): evidence {cusum.s:.1f} ≥ {cusum.h:.1f}; "
            f"z = {z:.1f} with the usual hour-to-hour wobble (±{math.sqrt(baseline.tau2) * 100:.0f} %) and "
            f"the baseline's own uncertainty allowed for, {_p(p_value)}.\n{kpi.check}"
        )
        return Finding(
            kind="anomaly",
            metric=kpi.name,
            severity=severity,
            channel="",
            campaign=None,
            value=value,
            summary=summary,
            description=description,
            baseline=base_value,
            threshold=base_value * (1.0 - cfg.min_drop),
            change_pct=-drop * 100.0,
            evidence={
                kpi.numerator: cusum.x * baseline.unit,
                kpi.denominator: cusum.n,
                f"expected_{kpi.numerator}": cusum.e * baseline.unit,
                f"baseline_{kpi.numerator}": baseline.value * baseline.denominator,
                f"baseline_{kpi.denominator}": baseline.denominator,
                "baseline_from": baseline.source,
                "run_minutes": span // MINUTE_S,
                "cusum": cusum.s,
                "cusum_threshold": cusum.h,
                "design_drop": 1.0 - cusum.ratio,
                "z": z,
                "p_value": p_value,
                "wobble": math.sqrt(baseline.tau2),
                "dispersion": track.phi,
                "min_drop": cfg.min_drop,
                "test": "sequential: one-sided CUSUM of "
                + ("Poisson" if kpi.money else "binomial")
                + " log-likelihood ratios on minute counts",
            },
            window=f"{span // MINUTE_S}m",
            window_start=datetime.fromtimestamp(cusum.run_start, self.zone).isoformat(),
            window_end=datetime.fromtimestamp(end_s, self.zone).isoformat(),
        )


def weigh(
    config: SequentialConfig, baseline: Baseline, phi: float, per_minute: float, peers: int = 1
) -> Weights:
    """The CUSUMs' weights against ``baseline``, and their thresholds for the information they gather.

    Judged against the baseline less one standard error of it: a baseline of a few hundred events (a new
    channel) that happens to be high must not make ordinary minutes look like a drop. A CUSUM's
    information is the evidence it loses per stationary minute (its drift under the baseline: the
    Kullback-Leibler divergence of its design rate from the baseline, per unit of denominator, over φ),
    at ``per_minute`` units of denominator a minute. Its ``peers`` share the rate: the campaigns of a
    channel together page by chance as rarely as the channel (each as if it had ``peers`` times the
    information).
    """
    p0 = baseline.rate * (1.0 - math.sqrt(phi / max(baseline.events, 1.0)))
    terms = []
    for ratio in config.ratios:
        if baseline.binomial:
            c = math.log1p(-ratio * p0) - math.log1p(-p0)
            slope, offset = (math.log(ratio) - c) / phi, c / phi
        else:
            slope, offset = math.log(ratio) / phi, p0 * (1.0 - ratio) / phi
        information = -(slope * p0 + offset) * per_minute
        h = config.threshold
        if information > 0:
            wanted = math.log(information * config.alarm_minutes * peers)
            h = min(config.threshold, max(config.min_threshold, wanted))
        terms.append((slope, offset, h))
    return Weights(baseline, phi, per_minute, peers, p0, tuple(terms))


def _placed(finding: Finding, channel: str, campaign: str | None) -> Finding:
    """A finding of the judge, placed on its channel (and campaign)."""
    where = channel if campaign is None else f"{channel}/{campaign}"
    return replace(
        finding, channel=channel, campaign=campaign, description=finding.description.replace("{where}", where)
    )


def _summed(counts: Iterable[Counts]) -> dict[str, float]:
    whole: dict[str, float] = {}
    for one in counts:
        _add(whole, one, 1.0)
    return whole


def _add(into: dict[str, float], counts: Counts, sign: float) -> None:
    for name, value in counts.items():
        into[name] = into.get(name, 0.0) + sign * value


def _add_fields(into: dict[str, float], values: Iterable[float], sign: float) -> None:
    """``_add`` for a packed minute's ``FIELDS``."""
    for name, value in zip(FIELDS, values, strict=True):
        into[name] = into.get(name, 0.0) + sign * value


def _dispersion(kpi: Kpi, blocks: Iterable[tuple[float, float, float]]) -> float | None:
    """φ of a KPI's blocks: how much more their numerators scatter than counting noise allows (≥ 1).

    Measured against the variance the CUSUM assumes: binomial for a share below 1 (even where the
    numerator is not strictly a subset of the denominator: orders need not come from tracked carts, and
    φ then says how much more they scatter), Poisson for ROI (GMV in orders' worth, a compound Poisson
    count whose baskets vary). The mean squared Pearson residual, each capped at
    ``PEARSON_CAP`` (one odd block does not make a channel noisy), shrunk towards 1 by ``PRIOR_BLOCKS``
    blocks' worth of prior: a few blocks that scatter by chance must not blind the judge for hours.
    ``None`` with fewer than 3 blocks to go by.
    """
    rows = list(blocks)
    numerator, denominator = sum(b[0] for b in rows), sum(b[1] for b in rows)
    if len(rows) < 3 or numerator <= 0 or denominator <= 0:
        return None
    if kpi.money:
        orders = sum(b[2] for b in rows)
        if orders <= 0:
            return None
        unit, rate = numerator / orders, orders / denominator
        observed = [b[0] / unit for b in rows]
        expected = [b[1] * rate for b in rows]
        variance = expected
    else:
        rate = numerator / denominator
        observed = [b[0] for b in rows]
        expected = [b[1] * rate for b in rows]
        variance = [e * (1.0 - rate) for e in expected] if rate < 1.0 else expected
    squares = [
        min(PEARSON_CAP, (o - e) ** 2 / v)
        for o, e, v in zip(observed, expected, variance, strict=True)
        if v > 0
    ]
    return max(1.0, (sum(squares) + PRIOR_BLOCKS) / (len(squares) + PRIOR_BLOCKS))


def _wobble(kpi: Kpi, windows: Iterable[Counts], rate: float, prior: float) -> float:
    """τ²: the hour-to-hour relative variance of the KPI beyond counting noise.

    Each hour's squared relative deviation has the expectation τ² + its counting noise; the hours' mean
    excess over their counting noise estimates τ², with an hour beyond ``WINSOR`` standard deviations
    counted as that many (one odd hour, a drop nobody caught, does not set it; a median would, for hours
    of a few orders, mistake the lumpy counts for wobble). Where counting noise swamps the wobble, that
    estimate is mostly noise: it is weighed against the ``prior`` τ² (uncertain by ``PRIOR_WOBBLE``) by
    the precision of each, and raised by its standard error in the share the hours have in it (with a day
    of hours, a wobble underestimated by chance would let a busy channel page).
    """
    squares, noise = [], []
    for w in windows:
        expected = w.get(kpi.denominator, 0.0) * rate
        if expected > 0:
            squares.append(((w.get(kpi.numerator, 0.0) - expected) / expected) ** 2)
            noise.append((1.0 - rate if rate < 1.0 else 1.0) / expected)
    if len(squares) < 3:
        return prior
    estimate = 0.0
    for _ in range(8):  # the cap grows with τ²: from 0 up to its fixed point
        capped = [
            min(s, WINSOR**2 * (n + max(estimate, 0.0))) - n for s, n in zip(squares, noise, strict=True)
        ]
        estimate = sum(capped) / len(capped)
    error = math.sqrt(2.0 / len(squares)) * (sum(noise) / len(noise) + max(estimate, 0.0))
    share = PRIOR_WOBBLE**2 / (PRIOR_WOBBLE**2 + error**2)
    return share * (estimate + error) + (1.0 - share) * prior


def _shown(kpi: Kpi) -> Callable[[float], str]:
    if kpi.money:
        return lambda v: f"{v:.2f}"
    return lambda v: f"{v * 100:.2f} %"


def _span(seconds: int) -> str:
    minutes = seconds // MINUTE_S
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def _volume(value: float) -> str:
    if value >= 999_500:
        return f"{value / 1e6:.1f}M"
    if value >= 9_995:
        return f"{value / 1e3:.0f}k"
    if value >= 1_000:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _p(p_value: float) -> str:
    for bound in (0.0001, 0.001, 0.01):
        if p_value < bound:
            return f"p < {bound:g}"
    return f"p = {p_value:.3f}"
