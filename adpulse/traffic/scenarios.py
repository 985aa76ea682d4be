"""What happens in a simulated run: scenarios (a CTR drop, a spend surge, a tracker outage, malformed,
late or duplicate records), their combined effect on a slice of traffic, and their command-line form.

``SpendSurgeScenario`` is named so to tell it from the detector that should catch it
(:class:`alerts.detectors.SpendSurge`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar


@dataclass(slots=True)
class Effects:
    """What the scenarios active during one slice do: factors per channel and fractions of faulty records."""

    ctr: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    volume: dict[str, float] = field(default_factory=dict)
    bad: float = 0.0
    #: Extra malformed fractions of single channels (``bad`` is for every channel).
    bad_by_channel: dict[str, float] = field(default_factory=dict)
    #: Channels whose site tracker is down: no clicks, visits or carts (impressions, spend, orders go on).
    site_down: set[str] = field(default_factory=set)
    late: float = 0.0
    late_beyond_share: float = 0.5
    duplicate: float = 0.0

    def scale(self, factors: dict[str, float], channel: str, factor: float) -> None:
        """Multiply ``channel``'s factor, so that two scenarios on one channel combine."""
        factors[channel] = factors.get(channel, 1.0) * factor

    @property
    def faulty(self) -> bool:
        """Whether any record of this slice may be made bad, late or duplicate."""
        return self.bad > 0 or bool(self.bad_by_channel) or self.late > 0 or self.duplicate > 0


@dataclass(frozen=True)
class Scenario:
    """Something that happens in a run, from ``at_s`` (seconds after the run's start) for ``for_s`` seconds.

    ``for_s`` None means until the end of the run. Subclasses override :meth:`apply`.
    """

    name: ClassVar[str] = ""

    at_s: float = 0.0
    for_s: float | None = None

    def active(self, offset_s: float) -> bool:
        """Whether the scenario is in effect ``offset_s`` seconds after the run's start."""
        return offset_s >= self.at_s and (self.for_s is None or offset_s < self.at_s + self.for_s)

    def phase(self, offset_s: float) -> str:
        """A short human description of where the scenario stands, for progress displays."""
        if offset_s < self.at_s:
            return f"{self.describe()}: starts in {self.at_s - offset_s:.0f}s"
        if self.active(offset_s):
            return f"{self.describe()}: ACTIVE"
        return f"{self.describe()}: over"

    def describe(self) -> str:
        """The scenario and its target in a few words."""
        return self.name

    def bind(self, channels: Sequence[str]) -> Scenario:
        """This scenario checked against the run's channels (and given its default channel)."""
        return self

    def apply(self, effects: Effects) -> None:
        """Add this scenario's effect to a slice's effects (called only while active)."""


@dataclass(frozen=True)
class ChannelScenario(Scenario):
    """A scenario that hits one channel."""

    channel: str | None = None
    #: The channel picked when none is named: an index into the run's channels (scenarios spread out).
    default_channel_index: ClassVar[int] = 0

    def describe(self) -> str:
        return f"{self.name} {self.channel}"

    def bind(self, channels: Sequence[str]) -> Scenario:
        if self.channel is None:
            return replace(self, channel=channels[self.default_channel_index % len(channels)])
        if self.channel not in channels:
            simulated = ", ".join(channels)
            raise ValueError(f"{self.name}: channel {self.channel!r} is not simulated (use {simulated})")
        return self

    @property
    def target(self) -> str:
        """The bound channel (``bind`` has filled it in)."""
        assert self.channel is not None, "bind() the scenario to the run's channels first"
        return self.channel


@dataclass(frozen=True)
class CtrDrop(ChannelScenario):
    """A channel's CTR falls to ``factor`` of normal (creative fatigue, a broken landing page link)."""

    name: ClassVar[str] = "ctr-drop"
    at_s: float = 60.0
    factor: float = 0.4

    def apply(self, effects: Effects) -> None:
        effects.scale(effects.ctr, self.target, self.factor)


@dataclass(frozen=True)
class SpendSurgeScenario(ChannelScenario):
    """A channel's spend per click multiplies by ``factor`` (a bidding war, a runaway bid)."""

    name: ClassVar[str] = "spend-surge"
    default_channel_index: ClassVar[int] = 1
    at_s: float = 60.0
    factor: float = 3.0

    def apply(self, effects: Effects) -> None:
        effects.scale(effects.cost, self.target, self.factor)


@dataclass(frozen=True)
class TrackerOutage(ChannelScenario):
    """A channel's tracker sends nothing at all (no events, no spend reports).

    With ``spend="keep"`` only the site tracker is down (no clicks, visits or carts): the ad platform's
    impression and spend reports and the order system's orders keep arriving, as they would in reality.
    """

    name: ClassVar[str] = "tracker-outage"
    default_channel_index: ClassVar[int] = 2
    at_s: float = 60.0
    for_s: float | None = 120.0
    spend: str = "stop"

    def __post_init__(self) -> None:
        if self.spend not in ("stop", "keep"):
            raise ValueError(f"tracker-outage: spend must be stop or keep, got {self.spend!r}")

    def describe(self) -> str:
        return super().describe() + (" (spend keeps flowing)" if self.spend == "keep" else "")

    def apply(self, effects: Effects) -> None:
        if self.spend == "keep":
            effects.site_down.add(self.target)
        else:
            effects.volume[self.target] = 0.0


@dataclass(frozen=True)
class BadRecords(Scenario):
    """A ``fraction`` of records is malformed in one of the ways docs/events.md rejects."""

    name: ClassVar[str] = "bad-records"
    fraction: float = 0.01
    #: Only this channel's records (None: every channel's).
    channel: str | None = None

    def describe(self) -> str:
        return self.name + (f" {self.channel}" if self.channel else "")

    def bind(self, channels: Sequence[str]) -> Scenario:
        if self.channel is not None and self.channel not in channels:
            simulated = ", ".join(channels)
            raise ValueError(f"{self.name}: channel {self.channel!r} is not simulated (use {simulated})")
        return self

    def apply(self, effects: Effects) -> None:
        if self.channel is None:
            effects.bad = min(1.0, effects.bad + self.fraction)
        else:
            share = effects.bad_by_channel.get(self.channel, 0.0) + self.fraction
            effects.bad_by_channel[self.channel] = min(1.0, share)


@dataclass(frozen=True)
class LateEvents(Scenario):
    """A ``fraction`` of records arrives with an old ``ts``, ``beyond_share`` of them past the grace."""

    name: ClassVar[str] = "late-events"
    fraction: float = 0.01
    beyond_share: float = 0.5

    def apply(self, effects: Effects) -> None:
        effects.late = min(1.0, effects.late + self.fraction)
        effects.late_beyond_share = self.beyond_share


@dataclass(frozen=True)
class Duplicates(Scenario):
    """A ``fraction`` of records is sent twice, byte for byte (a tracker retrying after a timeout)."""

    name: ClassVar[str] = "duplicates"
    fraction: float = 0.01

    def apply(self, effects: Effects) -> None:
        effects.duplicate = min(1.0, effects.duplicate + self.fraction)


SCENARIOS: Mapping[str, type[Scenario]] = {
    cls.name: cls for cls in (CtrDrop, SpendSurgeScenario, TrackerOutage, BadRecords, LateEvents, Duplicates)
}
#: Short parameter names accepted by :func:`parse_scenario` → dataclass field.
_PARAM_ALIASES = {"at": "at_s", "for": "for_s", "beyond": "beyond_share"}


def parse_duration_s(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``2h`` or ``1d``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale is not None else text
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90, 90s, 5m, 2h)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be finite and ≥ 0, got {text!r}")
    return value


def parse_scenario(text: str) -> Scenario:
    """A scenario from ``name[:key=value,...]``, e.g. ``ctr-drop:channel=wechat,at=2m,for=5m,factor=0.3``.

    Keys: ``channel``, ``at``, ``for`` (durations), ``factor``, ``fraction``, ``beyond`` (share of late
    events past the grace period), as far as the scenario has them.
    """
    name, _, params = text.partition(":")
    cls = SCENARIOS.get(name.strip())
    if cls is None:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, sep, raw = item.partition("=")
        attr = _PARAM_ALIASES.get(key.strip(), key.strip())
        if not sep or attr not in known:
            takes = ", ".join(sorted(_param_names(cls)))
            raise ValueError(f"scenario {name}: bad parameter {item!r}; it takes {takes}")
        values[attr] = _parse_param(attr, raw.strip())
    return cls(**values)


def _param_names(cls: type[Scenario]) -> set[str]:
    reverse = {v: k for k, v in _PARAM_ALIASES.items()}
    return {reverse.get(f.name, f.name) for f in fields(cls)}


def _parse_param(attr: str, raw: str) -> Any:
    if attr in ("channel", "spend"):
        return raw
    if attr in ("at_s", "for_s"):
        return None if attr == "for_s" and raw in ("", "none", "end") else parse_duration_s(raw)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{attr} must be a number, got {raw!r}") from None
    if attr in ("fraction", "beyond_share") and not 0 <= value <= 1:
        raise ValueError(f"{attr} must be between 0 and 1, got {raw}")
    if value < 0:
        raise ValueError(f"{attr} must be ≥ 0, got {raw}")
    return value


def scenario_params(scenario: Scenario) -> dict[str, Any]:
    """The scenario's parameters by field name (for the ground truth's run metadata)."""
    return {f.name: getattr(scenario, f.name) for f in fields(scenario)}
