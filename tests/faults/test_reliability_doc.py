"""docs/reliability.md names the test behind each promise: every test it names exists, and every fault
scenario is named there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"


def _tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_test_the_page_names_exists() -> None:
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", DOC.read_text())
    assert len(named) >= 15
    missing = [f"{path}::{name}" for path, name in named if name not in _tests(ROOT / path)]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_fault_scenario_is_on_the_page() -> None:
    text = DOC.read_text()
    scenarios = {
        f"tests/faults/{path.name}::{name}"
        for path in (ROOT / "tests" / "faults").glob("test_*.py")
        if path.name != Path(__file__).name
        for name in _tests(path)
    }
    assert scenarios
    absent = sorted(s for s in scenarios if f"`{s}`" not in text)
    assert not absent, f"fault scenarios docs/reliability.md does not name: {absent}"
