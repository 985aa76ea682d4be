"""docs/events.md and docs/schemas/ against the code: schemas current, examples valid, every reason listed,
every link inside the repository."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from streams.codec import Accepted, decode
from streams.events import BudgetSetting
from streams.schema import SCHEMA_MODELS, file_name, render, topic_schema

ROOT = Path(__file__).resolve().parents[2]
EVENTS_MD = ROOT / "docs" / "events.md"
SCHEMAS = ROOT / "docs" / "schemas"
#: Where the worker's code lives: every reason a record can be rejected with is written in one of these.
REJECTING_PACKAGES = ("streams", "agents")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file: its info string's words and its text."""

    line: int
    info: list[str]
    text: str

    def attribute(self, name: str) -> str | None:
        return next((w.split("=", 1)[1] for w in self.info if w.startswith(name + "=")), None)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i] != "```":
            start, info, body = i + 1, lines[i][3:].split(), []
            i += 1
            while lines[i] != "```":
                body.append(lines[i])
                i += 1
            found.append(Block(start, info, "\n".join(body)))
        i += 1
    return found


def example_blocks(kind: str) -> list[Block]:
    return [b for b in blocks(EVENTS_MD) if b.info and b.info[0] == kind and len(b.info) > 1]


def validator(topic: str) -> Draft202012Validator:
    schema = orjson.loads((SCHEMAS / file_name(topic)).read_bytes())
    return Draft202012Validator(schema)


# -- the schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", sorted(SCHEMA_MODELS))
def test_committed_schema_is_what_the_models_generate(topic: str) -> None:
    committed = SCHEMAS / file_name(topic)
    assert committed.exists(), f"run `adpulse schema --out docs/schemas` to add {committed.name}"
    assert committed.read_bytes() == render(topic_schema(topic)), (
        f"{committed.name} is stale: run `adpulse schema --out docs/schemas`"
    )


def test_no_schema_file_without_a_topic() -> None:
    assert sorted(p.name for p in SCHEMAS.iterdir()) == sorted(file_name(t) for t in SCHEMA_MODELS)


@pytest.mark.parametrize("topic", sorted(SCHEMA_MODELS))
def test_schema_is_valid_draft_2020_12(topic: str) -> None:
    schema = topic_schema(topic)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_schema_and_worker_agree_on_what_is_malformed() -> None:
    """A few records the schema rejects are the records the worker rejects as ``invalid``."""
    base: dict[str, Any] = {"event_id": "e", "ts": 1772431530000, "channel": "douyin"}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("clicks", {**base, "type": "hover"}),
        ("clicks", {**base, "type": "click", "count": 0}),
        ("clicks", {**base, "type": "click", "ts": 1772431530}),
        ("clicks", {**base, "type": "click", "ts": "2026-03-02T14:05:09"}),
        ("clicks", {**base, "type": "click", "channel": 42}),
        ("orders", {**base, "order_id": "1", "amount": -1}),
        ("orders", {**base, "order_id": "1", "amount": "12.50"}),
        ("orders", {**base, "amount": 1}),
        ("spend", {**base, "cost": 1e13}),
        ("spend", {**base, "cost": 1, "event_id": ""}),
    ]
    for topic, doc in cases:
        assert not validator(topic).is_valid(doc), (topic, doc)
        rejected = decode(topic, orjson.dumps(doc), "CNY", 65536)
        assert not isinstance(rejected, Accepted) and rejected.reason == "invalid", (topic, doc)


# -- the examples ---------------------------------------------------------------------------------------


def test_every_topic_has_a_valid_example() -> None:
    assert {b.info[1] for b in example_blocks("json")} == set(SCHEMA_MODELS) - {"dlq"}


@pytest.mark.parametrize("block", example_blocks("json"), ids=lambda b: f"line{b.line}")
def test_example_is_valid_by_the_schema_and_by_the_worker(block: Block) -> None:
    topic = block.info[1]
    doc = orjson.loads(block.text)
    errors = [e.message for e in validator(topic).iter_errors(doc)]
    assert errors == [], f"docs/events.md line {block.line}: {errors}"
    if topic == "budgets":
        BudgetSetting.model_validate(doc)
    else:
        decoded = decode(topic, block.text.encode(), "CNY", 65536)
        assert isinstance(decoded, Accepted), f"docs/events.md line {block.line}: {decoded}"


# -- the reasons ----------------------------------------------------------------------------------------


def documented_reasons() -> dict[str, str]:
    """reason → the "which rule" cell, from the table under "## Rejects"."""
    text = EVENTS_MD.read_text()
    section = text.split("\n## Rejects\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {re.match(r"\| `([a-z_]+)`", row).group(1): row.rsplit("|", 2)[1] for row in rows}  # type: ignore[union-attr]


def coded_reasons() -> dict[str, list[str]]:
    """Every reason the worker's code can reject a record with: the string constants in the first argument
    of each ``Rejection(...)`` (where it was found, for the message)."""
    found: dict[str, list[str]] = {}
    for package in REJECTING_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if name != "Rejection":
                    continue
                reason = (
                    node.args[0] if node.args else next(k.value for k in node.keywords if k.arg == "reason")
                )
                constants = [n.value for n in ast.walk(reason) if isinstance(n, ast.Constant)]
                texts = [c for c in constants if isinstance(c, str)]
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                assert texts and texts == constants, (
                    f"{where}: a Rejection's reason must be written out (a string literal), so that this "
                    "test can hold it against docs/events.md"
                )
                for text in texts:
                    found.setdefault(text, []).append(where)
    return found


def test_the_documented_reasons_are_exactly_those_the_worker_can_produce() -> None:
    coded, documented = coded_reasons(), documented_reasons()
    assert set(coded) - set(documented) == set(), f"reasons missing from docs/events.md: {coded}"
    assert set(documented) - set(coded) == set(), "docs/events.md lists reasons no code produces"


def test_every_reason_names_the_rule_behind_it() -> None:
    anchors = {f"#{slug(h)}" for h in headings(EVENTS_MD)}
    for reason, rule in documented_reasons().items():
        links = re.findall(r"\]\((#[^)]+)\)", rule)
        assert links, f"{reason}: name the schema or semantic rule, as a link to its section"
        assert set(links) <= anchors, f"{reason}: {links} are not sections of docs/events.md"


def test_the_name_rule_is_quoted_from_the_code() -> None:
    from streams.events import NAME_RULE

    assert " ".join(NAME_RULE.split()) in " ".join(EVENTS_MD.read_text().split())


# -- links ----------------------------------------------------------------------------------------------


def headings(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not ``-``, ``_``), spaces to ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", ""))
    return text.replace(" ", "-")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links of ``path`` that leave ``root``, point at nothing, or at no section."""
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if resolved != root and root not in resolved.parents:
            problems.append(f"{target} points outside the repository")
        elif not resolved.exists():
            problems.append(f"{target} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in {slug(h) for h in headings(resolved)}:
            problems.append(f"{target}: no such section")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(path: Path) -> None:
    assert link_problems(path) == []


def test_the_link_check_finds_each_kind_of_bad_link(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "CONTRACT.md").write_text("# Contract\n")
    (root / "docs" / "a.md").write_text("# A\n\n## Part two\n")
    doc = root / "README.md"
    doc.write_text(
        "[ok](docs/a.md#part-two) [web](https://example.org/x) [out](../shared/CONTRACT.md) "
        "[gone](docs/b.md) [anchor](docs/a.md#part-three)\n```\n[in a block](../nowhere)\n```\n"
    )
    assert link_problems(doc, root.resolve()) == [
        "../shared/CONTRACT.md points outside the repository",
        "docs/b.md does not exist",
        "docs/a.md#part-three: no such section",
    ]


def test_adpulse_schema_writes_the_committed_files(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from adpulse.cli import cli

    runner = CliRunner()
    written = runner.invoke(cli, ["schema", "--out", str(tmp_path / "out")])
    assert written.exit_code == 0, written.output
    for path in SCHEMAS.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()
    printed = runner.invoke(cli, ["schema", "orders"])
    assert printed.exit_code == 0 and orjson.loads(printed.output) == topic_schema("orders")
    every = runner.invoke(cli, ["schema"])
    assert every.exit_code == 0 and sorted(orjson.loads(every.output)) == sorted(SCHEMA_MODELS)
