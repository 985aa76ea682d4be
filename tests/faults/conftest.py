"""Fixtures of the fault suite, and the fault table printed after the tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.table import ROWS, FaultRow, render


@pytest.fixture
def fault_row() -> Callable[[FaultRow], None]:
    """Record a scenario's row in the fault table (before its assertions, so failures show their numbers)."""
    return ROWS.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.section("fault table")
        for line in render(ROWS):
            terminalreporter.write_line(line)
