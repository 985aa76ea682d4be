"""``ADPULSE_GROUP_SESSION_TIMEOUT_S`` reaches both consumer groups of the worker, within its bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adpulse.settings import Settings
from adpulse.worker import build_worker_app, fold_stage_config
from streams.metadata import GROUP_METADATA_MAX_AGE_MS


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(home=tmp_path, _env_file=None, **overrides)  # type: ignore[arg-type]


def test_the_default_session_is_ten_seconds_in_both_groups(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.group_session_timeout_s == 10.0
    assert fold_stage_config(settings).session_timeout_ms == 10_000
    assert build_worker_app(settings).conf.broker_session_timeout == 10.0


def test_a_shorter_session_reaches_faust_and_the_fold_stage(tmp_path: Path) -> None:
    settings = _settings(tmp_path, group_session_timeout_s=6.0)
    assert fold_stage_config(settings).session_timeout_ms == 6_000
    assert build_worker_app(settings).conf.broker_session_timeout == 6.0


@pytest.mark.parametrize("seconds", [0.0, 5.9, 60.1, float("inf"), float("nan")])
def test_a_session_out_of_bounds_is_refused(tmp_path: Path, seconds: float) -> None:
    with pytest.raises(ValidationError, match="group_session_timeout_s"):
        _settings(tmp_path, group_session_timeout_s=seconds)


def test_the_worker_refreshes_its_group_metadata_every_30_s_not_every_5_minutes(tmp_path: Path) -> None:
    # An assignment made from metadata that lacked a topic heals at the next refresh (streams/metadata.py).
    assert GROUP_METADATA_MAX_AGE_MS == 30_000
    assert (
        build_worker_app(_settings(tmp_path)).conf.consumer_metadata_max_age_ms == GROUP_METADATA_MAX_AGE_MS
    )
