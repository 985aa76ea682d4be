"""Threshold rules: the marketing team's targets, judged on closed windows with enough volume. Pure.

A rules file (YAML) is validated by pydantic; without one, the seed targets of CONTRACT.md §2 apply:
CTR < 2 %, CVR < 5 %, AOV < 300 (warnings) and ROI < 1 (critical: recommend pausing the channel).

Example::

    rules:
      - metric: ctr
        below: 0.02
        windows: [1h]
        min_volume: {impressions: 5000}
      - metric: roi
        below: 1.0
        severity: critical
        match: {channel: [douyin, taobao]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alerts.kpi import RATIOS, kpis
from alerts.model import Finding, Fingerprint, Severity, fingerprint
from alerts.wording import format_value
from streams.events import validation_problems

Metric = Literal["ctr", "cvr", "roi", "aov", "cpc", "cpa"]
_LABEL = {"ctr": "CTR", "cvr": "CVR", "roi": "ROI", "aov": "AOV", "cpc": "CPC", "cpa": "CPA"}
_ADVICE = {
    "ctr": "Check creatives and placements (fatigue, a new audience, a broken landing link) and the tracker.",
    "cvr": "Check the landing page, stock and prices, the checkout, and whether the traffic mix changed.",
    "roi": "ROI below 1 loses money on every yuan spent: recommend pausing the channel and moving budget.",
    "aov": "Check promotions and discounts, the product mix and whether bundles stopped showing.",
    "cpc": "Check bids and competition for the placements.",
    "cpa": "Check bids, targeting and the conversion funnel.",
}


class Match(BaseModel):
    """Which channels and campaigns a rule applies to (absent = all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: tuple[str, ...] | None = None
    campaign: tuple[str, ...] | None = None

    def applies(self, channel: str, campaign: str | None) -> bool:
        return (self.channel is None or channel in self.channel) and (
            self.campaign is None or (campaign or "-") in self.campaign
        )


class ThresholdRule(BaseModel):
    """One target: fire when ``metric`` is below ``below`` (or above ``above``) with enough volume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Metric
    below: float | None = None
    above: float | None = None
    severity: Severity = "warning"
    windows: tuple[Literal["1m", "1h", "1d"], ...] = ("1h",)
    min_volume: dict[str, float] = Field(default_factory=dict)
    level: Literal["channel", "campaign", "both"] = "both"
    match: Match = Field(default_factory=Match)

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdRule:
        if (self.below is None) == (self.above is None):
            raise ValueError(f"rule for {self.metric}: give exactly one of 'below' or 'above'")
        unknown = set(self.min_volume) - {
            "impressions",
            "clicks",
            "visits",
            "carts",
            "orders",
            "gmv",
            "spend",
        }
        if unknown:
            raise ValueError(f"rule for {self.metric}: unknown min_volume keys {sorted(unknown)}")
        return self

    @property
    def threshold(self) -> float:
        return self.below if self.below is not None else self.above  # type: ignore[return-value]

    def breached(self, value: float) -> bool:
        return value < self.below if self.below is not None else value > self.above  # type: ignore[operator]


def default_rules() -> list[ThresholdRule]:
    """The seed targets: CTR ≥ 2 %, CVR ≥ 5 %, AOV ≥ 300, ROI ≥ 1 (critical)."""
    return [
        ThresholdRule(metric="ctr", below=0.02, min_volume={"impressions": 5000}),
        ThresholdRule(metric="cvr", below=0.05, min_volume={"clicks": 200}),
        ThresholdRule(metric="aov", below=300.0, min_volume={"orders": 20}),
        ThresholdRule(metric="roi", below=1.0, severity="critical", min_volume={"spend": 500.0}),
    ]


class RulesConfig(BaseModel):
    """A rules file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[ThresholdRule, ...] = Field(default_factory=lambda: tuple(default_rules()))


def load_rules(path: Path | None) -> RulesConfig:
    """Read and validate a rules file; ``None`` gives the seed targets. Errors name the file and the field."""
    if path is None:
        return RulesConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return RulesConfig.model_validate(raw)
    except FileNotFoundError as exc:
        raise ValueError(f"rules file {path} does not exist (ADPULSE_RULES_FILE)") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"rules file {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ValueError(f"rules file {path}: {validation_problems(exc, whole='')}") from exc


def evaluate_thresholds(
    rules: Iterable[ThresholdRule],
    channel: str,
    campaign: str | None,
    window: str,
    counts: Mapping[str, float],
    window_bounds: tuple[str, str],
) -> tuple[list[Finding], dict[Fingerprint, float | None]]:
    """Judge one closed window of one channel (``campaign=None``) or campaign against the rules.

    Returns the findings and every fingerprint judged (with its value), so that the lifecycle knows
    which conditions are fine now. A window without enough volume is not judged at all.
    """
    findings: list[Finding] = []
    judged: dict[Fingerprint, float | None] = {}
    values = kpis(counts)
    for rule in rules:
        level_ok = rule.level == "both" or (rule.level == "channel") == (campaign is None)
        if window not in rule.windows or not level_ok or not rule.match.applies(channel, campaign):
            continue
        if any(counts.get(name, 0) < need for name, need in rule.min_volume.items()):
            continue
        value = values[rule.metric]
        if value is None:
            continue
        fp = fingerprint("threshold", rule.metric, channel, campaign, window)
        judged[fp] = value
        if not rule.breached(value):
            continue
        label = _LABEL[rule.metric]
        who = channel if campaign is None else f"{channel}/{campaign}"
        relation = "below" if rule.below is not None else "above"
        numerator, denominator = RATIOS[rule.metric]
        findings.append(
            Finding(
                kind="threshold",
                metric=rule.metric,
                severity=rule.severity,
                channel=channel,
                campaign=campaign,
                value=value,
                threshold=rule.threshold,
                summary=f"{label} of {who} is {format_value(rule.metric, value)}, {relation} the target "
                f"{format_value(rule.metric, rule.threshold)} (last {window})",
                description=f"{label} = {numerator} / {denominator} = {counts[numerator]:,.2f} / "
                f"{counts[denominator]:,.2f} in the window {window_bounds[0]} – {window_bounds[1]}. "
                + _ADVICE[rule.metric],
                evidence={numerator: counts[numerator], denominator: counts[denominator]},
                window=window,
                window_start=window_bounds[0],
                window_end=window_bounds[1],
                extra_key=(window,),
            )
        )
    return findings, judged
