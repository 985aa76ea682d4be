"""What every ``adpulse`` command shares: its help options and the settings it runs with."""

from __future__ import annotations

from typing import Any, Final

import click
from pydantic import ValidationError

from adpulse.settings import Settings, load_settings
from streams.events import validation_problems

#: ``context_settings`` of every command: ``-h`` works as ``--help``, and help text fills 110 columns.
CONTEXT: Final[dict[str, Any]] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def read_settings(**overrides: object) -> Settings:
    """The settings from the environment (and ``overrides``); a bad variable is a usage error naming it."""
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        problems = validation_problems(exc, spell=lambda loc: "ADPULSE_" + "_".join(map(str, loc)).upper())
        raise click.UsageError(f"invalid configuration: {problems}") from None


def settings_of(ctx: click.Context) -> Settings:
    """The settings the ``adpulse`` group read; a command run on its own reads them now."""
    settings = ctx.find_object(Settings)
    return settings if settings is not None else read_settings()
