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
  and minutes that belong to a detected drop are left out, so a long incident does not become the normal
  (and while a run of evidence looks like a drop, so are its own hours). The alert says which baseline it
  used.
- **The CUSUM** ``S = max(0, S + LLR / φ)``, where LLR is the binomial (Poisson for ROI: GMV in baseline
  order values per unit of spend) log-likelihood ratio of "the rate fell to ``design_ratio`` × p0" against
  "it is p0", for this minute's counts, and φ the over-dispersion measured on the subject's last six hours
  of 10-minute blocks (not every ratio is binomial: orders need not come from tracked carts, and GMV
  varies with the basket). The baseline is lowered by one standard error of it here (a baseline of a few
  hundred events that happens to be high must not make ordinary minutes look like a drop). ``S`` only
  grows while the observed rate is below the midpoint r* = (1 − r1) / −ln r1 of the two (0.78 for
  r1 = 0.6): wobbles smaller than a ~22 % dip pull it back to 0. The false-alarm rate is set by
  ``threshold`` h: for the exact likelihood the mean time between false alarms is at least e^h minutes
  (Lorden), e^11 ≈ 60,000 minutes, six weeks, per subject and KPI; the two gates below make it rarer.
- **Two gates on the run** (the minutes since ``S`` last left 0: the drop's likely start), checked when
  ``S`` reaches h: the run's rate must be at least ``min_drop`` below the baseline (big enough to matter)
  and its z-score must pass with a variance that includes the KPI's measured hour-to-hour wobble τ (real
  CTR moves with the hour beyond binomial noise) and the baseline's own uncertainty (few hours or minutes
  of history are less certain): ``Var = φE + τ²E² + E²φ/B``, E the expected numerator over the run and B
  the baseline's. The bar is ``z_min_counting`` (3) where counting noise dominates that variance (the
  CUSUM has weighed it already) and rises to ``z_min`` (4) where the wobble does: on a big channel, where
  every dip is "significant", only a dip well beyond the usual wobble passes.

Recovery is evidence too: while firing, ``S`` is capped at h, and the alert counts as recovered only once
good data has pulled ``S`` back to 0 (at least ``threshold`` nats of evidence for "the rate is back near
p0") and the ``recover_minutes`` since then have the rate back near p0 (within its counting noise, and
10 % at least); in between, neither finding nor recovery is reported, so the alert holds instead of
flapping, also when the hour's wobble masks a moderate drop for a while.

One cause, one alert: a campaign's drop is not reported while (or after) its channel's same KPI reports
the drop it is part of, and ROI not while the same subject's CVR explains it.

Cost: O(1) per subject, KPI and minute (running sums); the baseline is recomputed once per hour.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Final

from alerts.model import Finding, Fingerprint, Severity, fingerprint
from alerts.stats import CHI2_1_MEDIAN, median, norm_cdf
from streams.events import NO_CAMPAIGN

MINUTE_S: Final = 60
HOUR_S: Final = 3600
DAY_S: Final = 86_400
#: Over-dispersion is measured on 10-minute blocks (minutes are too lumpy: trackers report impressions in
#: batches), the last 36 of them (6 hours).
BLOCK_S: Final = 600
BLOCKS: Final = 36
PEARSON_CAP: Final = 25.0
PRIOR_BLOCKS: Final = 12.0
#: A run whose evidence reached this share of the threshold is a likely drop: its hours and minutes are
#: kept out of baselines and out of the over-dispersion (by chance, once in ~e^(0.75 h) minutes).
LIKELY: Final = 0.75
#: The hour-to-hour wobble is estimated from this many hours at least (fewer: ``tau_floor``), and shrunk
#: towards ``tau_floor`` as if that many more hours had shown it.
MIN_WOBBLE_HOURS: Final = 6

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
    #: Alarm threshold h in nats: at least e^h minutes between false alarms per subject and KPI.
    threshold: float = 11.0
    #: The run's rate must be at least this far below the baseline.
    min_drop: float = 0.25
    #: The run's z-score (hour-to-hour wobble and baseline uncertainty included) must be below −z_min
    #: where those dominate its variance, below −z_min_counting where counting noise does (the CUSUM has
    #: already weighed that), and in between in proportion.
    z_min: float = 4.0
    z_min_counting: float = 3.0
    #: Hour-to-hour relative wobble of a KPI assumed at least (estimated from the history above it).
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
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold!r}")
        if not 0.0 <= self.min_drop < 1.0:
            raise ValueError(f"min_drop must be in [0, 1), got {self.min_drop!r}")

    @property
    def midpoint(self) -> float:
        """The rate ratio below which the CUSUM grows: (1 − r1) / −ln r1."""
        return (1.0 - self.design_ratio) / -math.log(self.design_ratio)


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
class _Track:
    """The CUSUM of one subject and KPI, and the sums of its current run."""

    s: float = 0.0
    run_start: int | None = None
    x: float = 0.0
    e: float = 0.0
    n: float = 0.0
    alarmed: bool = False
    marked: bool = False
    last_alarmed: int | None = None  # the last minute this KPI was found dropped
    # After a drop, from when its evidence first fell back to 0: numerator seen, expected, minutes with data.
    recovery: list[float] | None = None
    # Hours of this KPI's alarms: left out of its hourly baselines, so a drop does not become the normal
    # (nor pass for the usual wobble); and its hourly baseline with what it was computed for.
    flagged: set[int] = field(default_factory=set)
    hourly: tuple[tuple[int, int, int | None], Baseline | None] | None = None
    # The measured over-dispersion φ: the last ``BLOCKS`` settled 10-minute blocks (numerator,
    # denominator, orders) outside drops, those still settling, the block being filled, the start of the
    # last drop found (its blocks never settle), and φ itself (None: fewer than 3 blocks yet).
    blocks: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=BLOCKS))
    waiting: deque[tuple[int, tuple[float, float, float]]] = field(default_factory=deque)
    block: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    alarmed_since: int | None = None
    phi: float | None = None


@dataclass(slots=True)
class _Subject:
    """One channel or campaign: its tracks, its settling and settled minutes (the cold-start baseline)."""

    tracks: dict[str, _Track] = field(default_factory=dict)
    pending: deque[tuple[int, dict[str, float], bool]] = field(default_factory=deque)
    settled: deque[tuple[int, dict[str, float]]] = field(default_factory=deque)
    sums: dict[str, float] = field(default_factory=dict)
    #: The last minute judged: a campaign is judged only in minutes it has data (see ``_catch_up``).
    last: int | None = None


@dataclass(slots=True)
class _Channel:
    last: int | None = None
    subjects: dict[str | None, _Subject] = field(default_factory=dict)
    hours: tuple[int, dict[int, Mapping[str, Counts]]] | None = None
    swept: int = 0


class SequentialJudge:
    """Per channel and campaign, every minute: the CUSUM of every ratio KPI, its findings and recoveries."""

    def __init__(self, config: SequentialConfig | None = None, zone: tzinfo = UTC) -> None:
        self.config = config or SequentialConfig()
        self.zone = zone
        self._channels: dict[str, _Channel] = {}

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
            for kpi in KPIS:
                result = self._judge(subject, kpi, baselines.get(kpi.name), counts, start_s)
                if verdict is None or result is None:
                    continue
                fp = fingerprint("anomaly", kpi.name, channel, campaign)
                if isinstance(result, _Recovered):
                    verdict.recovered[fp] = result.value
                    continue
                cvr = subject.tracks.get("cvr")
                if kpi.money and cvr is not None and (cvr.alarmed or cvr.s >= LIKELY * self.config.threshold):
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
        self, subject: _Subject, kpi: Kpi, baseline: Baseline | None, counts: Counts, start_s: int
    ) -> Finding | _Recovered | None:
        """One KPI's minute: a finding (a drop detected), recovered (the statistic is back at 0), or
        ``None`` when the minute proves nothing either way (the alert, if any, holds)."""
        cfg = self.config
        track = subject.tracks.get(kpi.name)
        if track is None:
            track = subject.tracks[kpi.name] = _Track()
        self._measure(track, kpi, counts, start_s)
        if baseline is None or track.phi is None:
            return None
        phi = track.phi
        n = counts.get(kpi.denominator, 0.0)
        x = counts.get(kpi.numerator, 0.0) / baseline.unit
        e = 0.0
        if n > 0 or x > 0:
            # The quasi-likelihood ratio is linear in the counts, so a minute's clicks reported before its
            # impressions (trackers batch them) count the same as if they came together.
            # Judged against the baseline less one standard error of it: a baseline of a few hundred events
            # (a new channel) that happens to be high must not make ordinary minutes look like a drop.
            p0 = baseline.rate * (1.0 - math.sqrt(phi / max(baseline.events, 1.0)))
            r1 = cfg.design_ratio
            e = p0 * n
            if baseline.binomial:
                c = math.log1p(-r1 * p0) - math.log1p(-p0)
                llr = x * (math.log(r1) - c) + n * c
            else:
                llr = x * math.log(r1) + e * (1.0 - r1)
            track.s = max(0.0, track.s + llr / phi)
            if track.s > 0.0:
                if track.run_start is None:
                    track.run_start = start_s
                track.x, track.e, track.n = track.x + x, track.e + e, track.n + n
            if track.alarmed:
                track.s = min(track.s, cfg.threshold)
        if track.s <= 0.0:
            track.run_start, track.x, track.e, track.n = None, 0.0, 0.0, 0.0
            track.marked = False
            if track.alarmed and track.recovery is None:
                track.recovery = [0.0, 0.0, 0]
        if track.alarmed and track.recovery is not None and track.s < cfg.threshold:
            return self._recovering(track, x, e, phi, counts, kpi)
        track.recovery = None
        if track.s <= 0.0:
            n = counts.get(kpi.denominator, 0.0)
            return _Recovered(counts.get(kpi.numerator, 0.0) / n if n > 0 else None)
        if track.s < cfg.threshold or track.run_start is None or track.e <= 0:
            return None
        observed = track.x / track.e
        beyond = baseline.tau2 * track.e**2 + track.e**2 * phi / max(baseline.events, 1.0)
        variance = phi * track.e + beyond
        z = (track.x - track.e) / math.sqrt(variance)
        required = cfg.z_min_counting + (cfg.z_min - cfg.z_min_counting) * beyond / variance
        if 1.0 - observed < cfg.min_drop or z > -required:
            return None
        track.alarmed = True
        track.alarmed_since, track.last_alarmed = track.run_start, start_s
        # A drop: its hours leave this KPI's hourly baselines, its minutes the own-minutes one.
        track.flagged.update(range(track.run_start - track.run_start % HOUR_S, start_s + 1, HOUR_S))
        if not track.marked:
            track.marked = True
            for i, (minute, pending, _) in enumerate(subject.pending):
                if minute >= track.run_start:
                    subject.pending[i] = (minute, pending, True)
        return self._finding(kpi, track, baseline, z, start_s)

    def _recovering(
        self, track: _Track, x: float, e: float, phi: float, counts: Counts, kpi: Kpi
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
        if minutes < cfg.recover_minutes or expected <= 0 or track.s >= LIKELY * cfg.threshold:
            return None
        if seen / expected < 1.0 - max(0.1, 2.0 * math.sqrt(phi / expected)):
            return None
        track.alarmed, track.recovery = False, None
        n = counts.get(kpi.denominator, 0.0)
        return _Recovered(counts.get(kpi.numerator, 0.0) / n if n > 0 else None)

    def _measure(self, track: _Track, kpi: Kpi, counts: Counts, start_s: int) -> None:
        """Add the minute to its 10-minute block; blocks count towards φ once ``settle_minutes`` old.

        The delay keeps a drop from passing for noise: its blocks are still waiting when it is found,
        and a found drop's blocks never count (see ``_judge``).
        """
        block = track.block
        block[0] += counts.get(kpi.numerator, 0.0)
        block[1] += counts.get(kpi.denominator, 0.0)
        block[2] += counts.get("orders", 0.0)
        if (start_s + MINUTE_S) % BLOCK_S:
            return
        if block[1] > 0:
            track.waiting.append((start_s + MINUTE_S - BLOCK_S, (block[0], block[1], block[2])))
        track.block = [0.0, 0.0, 0.0]
        settled = False
        while track.waiting and track.waiting[0][0] <= start_s - self.config.settle_minutes * MINUTE_S:
            began, counted = track.waiting.popleft()
            if track.alarmed_since is None or began + BLOCK_S <= track.alarmed_since:
                track.blocks.append(counted)
                settled = True
        if settled or track.phi is None:
            track.phi = _dispersion(
                kpi, [*track.blocks, *(b for _, b in track.waiting)] if track.phi is None else track.blocks
            )

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
        hours of its past alarms, and while a run of evidence looks like a drop, that run's hours (a drop
        must not dilute its own baseline); the own-minutes one comes from running sums.
        """
        hour = start_s - start_s % HOUR_S
        result: dict[str, Baseline | None] = {}
        history: dict[int, Counts] | None = None
        for kpi in KPIS:
            track = subject.tracks.get(kpi.name)
            if track is None:
                track = subject.tracks[kpi.name] = _Track()
            running = (
                track.run_start - track.run_start % HOUR_S
                if track.run_start is not None and track.s >= LIKELY * self.config.threshold
                else None
            )
            key = (hour, len(track.flagged), running)
            if track.hourly is None or track.hourly[0] != key:
                if history is None:
                    history = {
                        start: _campaign_counts(counts, campaign)
                        for start, counts in self._hours(state, hour, hours).items()
                    }
                rows = {
                    start: counts
                    for start, counts in history.items()
                    if start not in track.flagged and (running is None or start < running)
                }
                track.hourly = (key, self._hourly(kpi, rows, hour))
            result[kpi.name] = track.hourly[1] or self._cold(kpi, subject)
        return result

    def _hours(self, state: _Channel, hour: int, hours: Source) -> dict[int, Mapping[str, Counts]]:
        """The channel's closed hours a baseline may use (per campaign), read once per hour."""
        if state.hours is not None and state.hours[0] == hour:
            return state.hours[1]
        cfg = self.config
        starts = {hour - k * HOUR_S for k in range(1, cfg.history_hours + 1)}
        starts |= {hour - d * DAY_S for d in range(1, cfg.seasonal_days + 1)}
        found = {s: v for s in starts if (v := hours(s))}
        state.hours = (hour, found)
        return found

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
        if len(subject.settled) < self.config.warmup_minutes:
            return None
        return self._pooled(
            kpi, [subject.sums], f"its own last {len(subject.settled)} min (no hourly history yet)"
        )

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
            measured = _wobble(kpi, windows, rate)
            tau2 = max(
                tau2, (len(windows) * measured + MIN_WOBBLE_HOURS * tau2) / (len(windows) + MIN_WOBBLE_HOURS)
            )
        return Baseline(rate, numerator, denominator, tau2, source)

    def _settle(self, subject: _Subject, counts: Counts, start_s: int) -> None:
        """Queue this minute for the own-minutes baseline; minutes older than the settle time join it."""
        cfg = self.config
        if any(counts.values()):  # a minute without any event says nothing about the rates
            subject.pending.append((start_s, dict(counts), False))
        while subject.pending and subject.pending[0][0] <= start_s - cfg.settle_minutes * MINUTE_S:
            minute, settled, suspect = subject.pending.popleft()
            if suspect:
                continue
            subject.settled.append((minute, settled))
            _add(subject.sums, settled, 1.0)
        # The last ``cold_minutes`` minutes, by time: a campaign with data now and then must not keep a
        # day's worth of scattered minutes.
        while subject.settled and (
            len(subject.settled) > cfg.cold_minutes
            or subject.settled[0][0] <= start_s - cfg.cold_minutes * MINUTE_S
        ):
            _, old = subject.settled.popleft()
            _add(subject.sums, old, -1.0)

    # -- wording -----------------------------------------------------------------------------------------

    def _finding(self, kpi: Kpi, track: _Track, baseline: Baseline, z: float, start_s: int) -> Finding:
        assert track.phi is not None
        cfg = self.config
        assert track.run_start is not None
        end_s = start_s + MINUTE_S
        span = end_s - track.run_start
        base_value = baseline.value
        value = track.x * baseline.unit / track.n if track.n > 0 else 0.0
        drop = 1.0 - value / base_value
        p_value = norm_cdf(z)
        severity: Severity = "critical" if drop >= cfg.critical_drop else "warning"
        if kpi.money and value < cfg.red_line:
            severity = "critical"
        shown = _shown(kpi)
        volume = _volume(track.n)
        summary = (
            f"{kpi.label} fell {drop * 100:.0f} % over the last {_span(span)} "
            f"({shown(base_value)} → {shown(value)}, {volume} {kpi.denominator}, {_p(p_value)})"
        )
        if kpi.money and value < cfg.red_line:
            summary += f"; below {cfg.red_line:g}: recommend pausing"
        numerator_name = "orders' worth of GMV" if kpi.money else kpi.numerator
        description = (
            f"{{where}}: {kpi.label} over the last {_span(span)} was {shown(value)} against a baseline of "
            f"{shown(base_value)} from {baseline.source}; {track.x:,.0f} {numerator_name} where "
            f"{track.e:,.0f} were expected ({track.n:,.0f} {kpi.denominator}). Sequential test (one-sided "
            f"CUSUM of log-likelihood ratios, minute by minute): evidence {track.s:.1f} ≥ {cfg.threshold:g}; "
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
                kpi.numerator: track.x * baseline.unit,
                kpi.denominator: track.n,
                f"expected_{kpi.numerator}": track.e * baseline.unit,
                f"baseline_{kpi.numerator}": baseline.value * baseline.denominator,
                f"baseline_{kpi.denominator}": baseline.denominator,
                "baseline_from": baseline.source,
                "run_minutes": span // MINUTE_S,
                "cusum": track.s,
                "cusum_threshold": cfg.threshold,
                "design_drop": 1.0 - cfg.design_ratio,
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
            window_start=datetime.fromtimestamp(track.run_start, self.zone).isoformat(),
            window_end=datetime.fromtimestamp(end_s, self.zone).isoformat(),
        )


def _placed(finding: Finding, channel: str, campaign: str | None) -> Finding:
    """A finding of the judge, placed on its channel (and campaign)."""
    where = channel if campaign is None else f"{channel}/{campaign}"
    return replace(
        finding, channel=channel, campaign=campaign, description=finding.description.replace("{where}", where)
    )


def _campaign_counts(per_campaign: Mapping[str, Counts], campaign: str | None) -> Counts:
    if campaign is not None:
        return per_campaign.get(campaign, {})
    whole: dict[str, float] = {}
    for counts in per_campaign.values():
        _add(whole, counts, 1.0)
    return whole


def _add(into: dict[str, float], counts: Counts, sign: float) -> None:
    for name, value in counts.items():
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


def _wobble(kpi: Kpi, windows: Iterable[Counts], rate: float) -> float:
    """τ²: the hour-to-hour relative variance of the KPI beyond counting noise.

    Each hour's squared relative deviation is (τ² + its counting noise) × χ²₁; τ² is the value that
    makes the median of the standardised squares the median of χ²₁ (robust: one odd hour does not set it),
    raised by ~1.5 standard errors of that estimate (a median of k squares is uncertain to about
    1/√k in the log): with a day of hours, a wobble underestimated by chance would let it page.
    """
    squares, noise = [], []
    for w in windows:
        expected = w.get(kpi.denominator, 0.0) * rate
        if expected > 0:
            squares.append(((w.get(kpi.numerator, 0.0) - expected) / expected) ** 2)
            noise.append((1.0 - rate if rate < 1.0 else 1.0) / expected)
    if len(squares) < 3:
        return 0.0

    def standardised(tau2: float) -> float:
        return median([s / (n + tau2) for s, n in zip(squares, noise, strict=True)])

    if standardised(0.0) <= CHI2_1_MEDIAN:
        return 0.0
    low, high = 0.0, max(squares) / CHI2_1_MEDIAN
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if standardised(middle) > CHI2_1_MEDIAN else (low, middle)
    return high * (1.0 + 1.5 / math.sqrt(len(squares)))


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
