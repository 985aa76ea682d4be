"""Fixtures of the deploy tests: the real Prometheus tools, installed by ``deploy/setup-tools.sh``."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """``tool(name) -> path`` of promtool, prometheus or amtool; fails with the fix when it is missing."""

    def find(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            pytest.fail(
                f"{name} is not on PATH: run deploy/setup-tools.sh (make test runs it), or install the "
                "Debian packages prometheus and prometheus-alertmanager"
            )
        return path

    return find
