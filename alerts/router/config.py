"""The routes file (CONTRACT.md §6): targets, routes and the router's policies, validated. Pure.

``${NAME}`` in a target's ``url`` or ``secret`` is replaced from the environment, so webhook URLs and signing
secrets stay out of the file. Nowhere else: a routes file that could pull any variable into any field (an
owner, a match, a locale) could also put one into a chat message. ``${NAME}`` elsewhere, and a missing
variable, are errors naming the field and the variable, never a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import time as clock_time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerts.router.targets import TARGET_TYPES, TargetSpec
from streams.events import validation_problems
from streams.windows import known_time_zone

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: The fields of a target where ``${NAME}`` is expanded: the ones that carry a credential.
SECRET_FIELDS = ("url", "secret")
_NEEDS_URL = frozenset(TARGET_TYPES) - {"console"}
SEVERITIES = ("info", "warning", "critical")
KINDS = ("budget", "threshold", "anomaly", "data_health")


class RoutesError(ValueError):
    """The routes file is wrong; the message says where and how to fix it (and never shows a secret)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TargetConfig(_Strict):
    type: Literal["feishu", "dingtalk", "wecom", "slack", "webhook", "console", "apprise"]
    url: str | None = Field(None, repr=False)
    secret: str | None = Field(None, repr=False)
    locale: Literal["zh-CN", "en"] = "zh-CN"
    timeout_s: float = Field(5.0, gt=0, le=120)
    rate_per_minute: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _url_where_needed(self) -> TargetConfig:
        if self.type in _NEEDS_URL and not self.url:
            raise ValueError(f"a {self.type} target needs a url (put it in the environment: url: ${{NAME}})")
        return self


class Match(_Strict):
    """Which alerts a route takes; an absent key matches everything."""

    channel: list[str] | None = None
    campaign: list[str] | None = None
    kind: list[Literal["budget", "threshold", "anomaly", "data_health"]] | None = None
    severity: list[Literal["info", "warning", "critical"]] | None = None

    @field_validator("channel", "campaign", "kind", "severity", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def matches(self, alert: Mapping[str, Any]) -> bool:
        for key in ("channel", "campaign", "kind", "severity"):
            wanted = getattr(self, key)
            if wanted is not None and (alert.get(key) or "-") not in wanted:
                return False
        return True


class Escalation(_Strict):
    """Who hears of a critical alert nobody acknowledged in time."""

    after_s: float = Field(900.0, gt=0)
    owners: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)


class QuietHours(_Strict):
    """Hold non-critical alerts between ``start`` and ``end`` (local time); deliver them when it ends."""

    start: clock_time
    end: clock_time
    tz: str = "Asia/Shanghai"

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, value: str) -> str:
        return known_time_zone(value)


class Route(_Strict):
    match: Match = Field(default_factory=Match)
    owners: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    continue_: bool = Field(False, alias="continue")
    escalate: Escalation | None = None
    quiet_hours: QuietHours | None = None


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Digest(_Strict):
    """A report posted to ``targets`` every day at ``at`` (local time, ``ADPULSE_TZ``): the daily sheet of the
    day before, or (``report: weekly``) the weekly review on the weekday ``day``.

    (Not ``on:``: YAML 1.1 reads that key as ``true``.)
    """

    report: Literal["daily", "weekly"] = "daily"
    at: clock_time
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = "friday"
    targets: list[str] = Field(min_length=1)

    @field_validator("at", mode="before")
    @classmethod
    def _clock(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 09:30 as the base-60 number 570: take it for the time it was written as.
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < 24 * 60:
                raise ValueError(f'{value} is not a time of day: write it quoted, e.g. at: "09:30"')
            return clock_time(value // 60, value % 60)
        return value

    def due_on(self, weekday: int) -> bool:
        """Whether the digest is posted on ``weekday`` (Monday = 0)."""
        return self.report == "daily" or WEEKDAYS.index(self.day) == weekday


class RoutesConfig(_Strict):
    targets: dict[str, TargetConfig] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    default_targets: list[str] = Field(default_factory=list)
    default_owners: list[str] = Field(default_factory=list)
    digests: list[Digest] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_targets(self) -> RoutesConfig:
        named = [("default_targets", t) for t in self.default_targets]
        for i, route in enumerate(self.routes):
            named += [(f"routes[{i}].targets", t) for t in route.targets]
            if route.escalate is not None:
                named += [(f"routes[{i}].escalate.targets", t) for t in route.escalate.targets]
        for i, digest in enumerate(self.digests):
            named += [(f"digests[{i}].targets", t) for t in digest.targets]
        unknown = [f"{where}: {name!r}" for where, name in named if name not in self.targets]
        if unknown:
            raise ValueError(
                f"unknown target(s) {', '.join(unknown)}; "
                f"define them under targets: ({', '.join(self.targets)})"
            )
        return self

    def spec(self, name: str) -> TargetSpec:
        """The delivery spec of the target called ``name``."""
        target = self.targets[name]
        return TargetSpec(
            name=name,
            type=target.type,
            url=target.url,
            secret=target.secret,
            locale=target.locale,
            timeout_s=target.timeout_s,
            rate_per_minute=target.rate_per_minute,
        )

    def secrets(self) -> list[str]:
        """Every secret-bearing value (URLs and signing secrets), for redaction."""
        return [v for t in self.targets.values() for v in (t.url, t.secret) if v]


def substitute(text: str, env: Mapping[str, str], where: str = "the routes file") -> str:
    """``${NAME}`` replaced from ``env``; RoutesError naming every missing variable (and ``where``)."""
    missing = sorted({name for name in _VARIABLE.findall(text) if name not in env})
    if missing:
        names = ", ".join(f"${{{name}}}" for name in missing)
        raise RoutesError(f"{where} uses {names}, not set in the environment")
    return _VARIABLE.sub(lambda m: env[m.group(1)], text)


def parse_routes(
    text: str, env: Mapping[str, str] | None = None, source: str = "routes file"
) -> RoutesConfig:
    """Validate a routes file's text. Errors name the place and problem, never a substituted value."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutesError(f"{source} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RoutesError(f"{source} must be a mapping with targets:, routes:, default_targets:")
    # Substitute inside the parsed values, so a secret with YAML syntax in it stays a plain string.
    problems: list[str] = []
    resolved = _substituted(raw, os.environ if env is None else env, (), problems)
    if problems:
        raise RoutesError(f"{source}: {'; '.join(problems)}")
    try:
        return RoutesConfig.model_validate(resolved)
    except ValidationError as exc:
        raise RoutesError(f"{source}: {validation_problems(exc, whole='(top)')}") from None


def load_routes(path: Path, env: Mapping[str, str] | None = None) -> RoutesConfig:
    """Read and validate the routes file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesError(f"cannot read the routes file {path}: {exc.strerror}") from None
    return parse_routes(text, env, source=str(path))


def console_routes() -> RoutesConfig:
    """Every alert to the console: the router's default without a routes file (and the demo's)."""
    return RoutesConfig(
        targets={"console": TargetConfig(type="console", locale="en")}, default_targets=["console"]
    )


def _substituted(value: Any, env: Mapping[str, str], path: tuple[object, ...], problems: list[str]) -> Any:
    """``value`` with ``${NAME}`` expanded where ``path`` is a target's secret field; what is wrong goes to
    ``problems``."""
    if isinstance(value, str):
        if not _VARIABLE.search(value):
            return value
        where = ".".join(str(p) for p in path) or "(top)"
        if not _expands(path):
            problems.append(
                f"{where}: ${{NAME}} is read from the environment only in a target's "
                f"{' or '.join(SECRET_FIELDS)}; write this value in the file"
            )
            return value
        try:
            return substitute(value, env, where)
        except RoutesError as exc:
            problems.append(str(exc))
            return value
    if isinstance(value, list):
        return [_substituted(v, env, (*path, i), problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substituted(v, env, (*path, k), problems) for k, v in value.items()}
    return value


def _expands(path: tuple[object, ...]) -> bool:
    """Whether ``path`` is ``targets.<name>.url`` or ``targets.<name>.secret``."""
    return len(path) == 3 and path[0] == "targets" and path[2] in SECRET_FIELDS
