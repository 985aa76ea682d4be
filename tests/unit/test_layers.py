"""The layers of the product code, read from its imports (``ast``, nothing is imported or run).

``streams`` (events, codec, windows, keys) is the bottom; ``alerts`` decides on top of it; ``agents`` runs the
pipeline with both; ``adpulse`` is the shell (settings, CLIs, stack). An import may only point down. The pure
modules take their clients from the caller and import no I/O library, not even through another module.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "alerts", "agents", "adpulse")

#: package -> the packages it must never import.
FORBIDDEN = {
    "streams": {"alerts", "agents", "adpulse"},
    "alerts": {"agents", "adpulse"},
    "agents": {"adpulse"},
}

#: Modules that do no I/O: records, clocks and clients come in as arguments.
PURE = (
    "streams.codec",
    "streams.dlq",
    "streams.events",
    "streams.keys",
    "streams.redis_client",
    "streams.schema",
    "streams.topics",
    "streams.windows",
    "agents.closing",
    "agents.fold",
    "agents.outbox",
    "agents.partials",
    "agents.snapshot",
    "adpulse.traffic.malformed",
    "adpulse.traffic.profiles",
    "adpulse.traffic.sampling",
    "adpulse.traffic.scenarios",
    "adpulse.traffic.truth",
    "alerts.backtest",
    "alerts.budgets",
    "alerts.data_health",
    "alerts.detectors",
    "alerts.drivers",
    "alerts.kpi",
    "alerts.lifecycle",
    "alerts.model",
    "alerts.payload",
    "alerts.rules",
    "alerts.series",
    "alerts.stats",
    "alerts.wording",
    "alerts.report.daily",
    "alerts.report.episodes",
    "alerts.report.model",
    "alerts.report.render",
    "alerts.report.weekly",
    "alerts.router.config",
    "alerts.router.digest_cards",
    "alerts.router.messages",
    "alerts.router.routing",
    "alerts.router.targets",
    "alerts.router.tokens",
)

IO_LIBRARIES = (
    "faust",
    "redis",
    "prometheus_client",
    "aiokafka",
    "aiohttp",
    "httpx",
    "subprocess",
    "socket",
    "requests",
    "urllib.request",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
    }


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, anywhere in the file (functions and ``TYPE_CHECKING`` included).

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a module); relative imports are resolved
    against ``module``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_within(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


MODULES = product_modules()
IMPORTS = {
    name: imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
    for name, path in MODULES.items()
}


def violations(module: str) -> Iterator[str]:
    """The imports of ``module`` that break a rule, each with the rule it breaks."""
    top = module.split(".")[0]
    for name in sorted(IMPORTS[module]):
        if name.split(".")[0] in FORBIDDEN.get(top, ()):
            yield f"{module} imports {name}: {top} must not import {name.split('.')[0]}"
        if module in PURE:
            if any(is_within(name, library) for library in IO_LIBRARIES):
                yield f"{module} is pure but imports the I/O library {name}"
            if name in MODULES and name not in PURE and MODULES[name].name != "__init__.py":
                yield f"{module} is pure but imports {name}, which is not"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_pure_modules_stay_pure(module: str) -> None:
    found = list(violations(module))
    assert not found, "\n".join(found)


def test_every_pure_module_exists_and_the_packages_import_nothing() -> None:
    assert set(PURE) <= MODULES.keys()
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            # A package's __init__ is imported with each of its modules: it must not drag anything in.
            assert not any(n.split(".")[0] in PACKAGES for n in IMPORTS[name]), name


def test_no_pure_module_is_on_the_type_check_ratchet() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    relaxed = {
        module
        for override in config["tool"]["mypy"]["overrides"]
        if override.get("ignore_errors")
        for module in override["module"]
    }
    assert not relaxed & set(PURE)


def test_the_reader_sees_every_kind_of_import() -> None:
    source = (
        "import faust.tables\n"
        "from urllib import request\n"
        "from . import partials\n"
        "from ..streams.keys import Keys\n"
        "def later() -> None:\n"
        "    import subprocess\n"
    )
    found = imports_of(source, "agents.fold")
    assert {"faust.tables", "urllib.request", "agents.partials", "streams.keys", "subprocess"} <= found
    assert imports_of("from . import x\n", "alerts.router", is_package=True) >= {"alerts.router.x"}
