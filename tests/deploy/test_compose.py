"""docker-compose.yml, its init script, the Dockerfile and the example files, checked without a Docker engine.

The compose file goes through what ``docker compose config`` does before it runs anything: interpolation
(with the values of ``.env.example``), validation against the Compose Specification's JSON schema (the very
file Docker Compose embeds, vendored under ``compose_spec/``), and the project checks compose-go makes after
the schema (services, volumes and secrets that are referred to exist, and so on). Running the stack needs a
Docker engine, which these machines do not have: see docs/operations.md.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import pytest
import yaml

from adpulse.kafka_server import KAFKA_VERSION
from streams.topics import topic_specs
from tests.deploy.queries import DEPLOY, ROOT

pytestmark = pytest.mark.deploy

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).parent / "compose_spec" / "compose-spec.json"
DOCKERFILE = DEPLOY / "Dockerfile"
CREATE_TOPICS = DEPLOY / "kafka" / "create-topics.sh"
ROUTES_EXAMPLE = DEPLOY / "routes.example.yml"

# -- interpolation, as the Compose Specification (12-interpolation.md) and compose-go define it ------------


class InterpolationError(ValueError):
    pass


_NAME = re.compile(r"[_A-Za-z][_A-Za-z0-9]*")


def interpolate(text: str, env: Mapping[str, str], warnings: list[str]) -> str:
    """``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``,
    ``${NAME?error}``, ``${NAME:+alt}``, ``${NAME+alt}`` (nested), ``$$`` for a literal ``$``. An unset
    variable without a default becomes "" with a warning, as compose does."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            value, i = _braced(text, i + 2, env, warnings)
            out.append(value)
            continue
        match = _NAME.match(text, i + 1)
        if match is None:
            out.append("$")
            i += 1
            continue
        out.append(_lookup(match.group(), env, warnings))
        i = match.end()
    return "".join(out)


def _lookup(name: str, env: Mapping[str, str], warnings: list[str]) -> str:
    if name not in env:
        warnings.append(f"the {name} variable is not set; defaulting to a blank string")
        return ""
    return env[name]


def _braced(text: str, i: int, env: Mapping[str, str], warnings: list[str]) -> tuple[str, int]:
    match = _NAME.match(text, i)
    if match is None:
        raise InterpolationError(f"invalid interpolation format in {text!r}")
    name, i = match.group(), match.end()
    if text[i] == "}":
        return _lookup(name, env, warnings), i + 1
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if text.startswith(operator, i):
            break
    else:
        raise InterpolationError(f"unsupported interpolation in {text!r} (only -, ?, + with or without :)")
    # The argument runs to the matching brace and may itself hold interpolations.
    depth, j = 1, i + len(operator)
    start = j
    while depth:
        if j >= len(text):
            raise InterpolationError(f"unterminated ${{ in {text!r}")
        if text.startswith("${", j):
            depth, j = depth + 1, j + 2
            continue
        depth -= text[j] == "}"
        j += 1
    argument = text[start : j - 1]
    value = env.get(name)
    empty_counts = operator.startswith(":")
    missing = value is None or (empty_counts and value == "")
    if operator.endswith("-"):
        return (interpolate(argument, env, warnings) if missing or value is None else value), j
    if operator.endswith("?"):
        if missing or value is None:
            raise InterpolationError(
                f"required variable {name} is missing a value: {interpolate(argument, env, warnings)}"
            )
        return value, j
    return ("" if missing else interpolate(argument, env, warnings)), j


def interpolated(node: Any, env: Mapping[str, str], warnings: list[str]) -> Any:
    """Every string value (not key) of the YAML tree interpolated."""
    if isinstance(node, str):
        return interpolate(node, env, warnings)
    if isinstance(node, list):
        return [interpolated(item, env, warnings) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env, warnings) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and _NAME.fullmatch(key), f"{path.name}: not KEY=VALUE: {line!r}"
            values[key] = value
    return values


def load_compose(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    raw = yaml.safe_load(COMPOSE.read_text())  # YAML anchors and merge keys (<<) resolved, as compose-go does
    return interpolated(raw, env, warnings), warnings


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    project, warnings = load_compose(read_env_file(ENV_EXAMPLE))
    assert not warnings, f"variables neither in .env.example nor defaulted: {warnings}"
    return project


def test_the_interpolation_follows_the_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    cases = {
        "$SET ${SET} $$SET": "x x $SET",
        "${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}": "d d  d",
        "${UNSET:-${SET}} ${UNSET:-${ALSO_UNSET:-deep}}": "x deep",
        "${SET:+alt} ${EMPTY:+alt}|${EMPTY+alt}": "alt |alt",
        "cost: $5": "cost: $5",
    }
    for text, expected in cases.items():
        assert interpolate(text, env, []) == expected, text
    with pytest.raises(InterpolationError, match="EMPTY is missing a value: set it"):
        interpolate("${EMPTY:?set it}", env, [])
    warnings: list[str] = []
    assert interpolate("a${UNSET}b", env, warnings) == "ab" and warnings


# -- the compose file ---------------------------------------------------------------------------------------


def test_the_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_catches_what_compose_would_reject(compose: dict[str, Any]) -> None:
    """The validator really validates: a typo'd key and a wrong type are errors."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["healthchek"] = {"test": ["CMD", "true"]}
    broken["services"]["redis"]["ports"] = "6379"
    messages = [error.message for error in validator.iter_errors(broken)]
    assert any("healthchek" in m for m in messages) and any("is not of type" in m for m in messages)


def test_without_a_dotenv_compose_refuses_to_start_and_says_which_secret_is_missing() -> None:
    with pytest.raises(InterpolationError, match=r"REDIS_PASSWORD .*set REDIS_PASSWORD in \.env"):
        load_compose({})


def test_references_between_services_volumes_and_secrets_resolve(compose: dict[str, Any]) -> None:
    """What compose-go checks after the schema when it loads the project."""
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            # A dependency switched off by a profile would stop `docker compose up` of the default profile.
            assert not services[dependency].get("profiles") or service.get("profiles"), (name, dependency)
            if spec["condition"] == "service_healthy":
                assert _healthcheck(services[dependency]), (
                    f"{name} waits for {dependency} to be healthy: it has no check"
                )
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name} uses undeclared secret {secret}"
        for port in service.get("ports", []):
            host_ip = port.split(":", 1)[0]
            assert ip_address(host_ip).is_loopback, f"{name} publishes {port} beyond this host"
        if service.get("deploy", {}).get("replicas", 1) > 1:
            assert "container_name" not in service and "ports" not in service, name
    for name, secret in compose["secrets"].items():
        sources = {"file", "environment", "content"} & secret.keys()
        assert len(sources) == 1, f"secret {name}: exactly one of file|environment|content"


def _healthcheck(service: Mapping[str, Any]) -> bool:
    """Whether a container of this service has a health check (its own, or the adpulse image's)."""
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    return str(service.get("image", "")).startswith("adpulse:")


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    assert any(instruction.cmd == "HEALTHCHECK" for instruction in dockerfile.parse_file(str(DOCKERFILE)))
    for name, service in compose["services"].items():
        one_shot = service.get("restart") == "no"
        assert one_shot or _healthcheck(service), f"{name} runs for good but has no health check"


def test_compose_runs_the_kafka_version_the_tests_run(compose: dict[str, Any]) -> None:
    """The Kafka tier of the test suite runs adpulse.kafka_server's version: users deploy the same one."""
    for name in ("kafka", "kafka-init"):
        assert compose["services"][name]["image"] == f"apache/kafka:{KAFKA_VERSION}", name


def test_the_services_the_issue_asks_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["command"] == ["worker"] and services["worker"]["deploy"]["replicas"] == 2
    # Real Kafka: the changelog in batches (one record per batch is the embedded broker's setting); no
    # static member name shared by the replicas (two live members of one name fence each other).
    assert int(services["worker"]["environment"]["ADPULSE_CHANGELOG_BATCH_BYTES"]) >= 65536
    assert "ADPULSE_INSTANCE_ID" not in services["worker"]["environment"]
    assert services["router"]["command"] == ["router", "--config", "/etc/adpulse/routes.yml"]
    assert "./deploy/routes.example.yml:/etc/adpulse/routes.yml:ro" in services["router"]["volumes"]
    assert services["simulator"]["profiles"] == ["demo"] and services["simulator"]["command"][0] == "simulate"
    assert services["alertmanager"]["profiles"] == ["alertmanager"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]
    for name in ("worker", "router", "simulator"):
        environment = services[name]["environment"]
        assert environment["ADPULSE_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert environment["ADPULSE_REDIS_URL"].startswith("redis://:") and environment[
            "ADPULSE_REDIS_URL"
        ].endswith("@redis:6379/0"), name
    for name, service in services.items():
        image = service["image"]
        assert not image.endswith(":latest") or image.startswith("adpulse:"), f"{name}: pin the image version"


# -- the topics init step -----------------------------------------------------------------------------------

_FAKE_KAFKA_TOPICS = """\
import json, os, sys
state_path = os.environ["FAKE_STATE"]
state = json.load(open(state_path)) if os.path.exists(state_path) else {}
args = sys.argv[1:]
topic = args[args.index("--topic") + 1]
if "--create" in args:
    configs = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--config")
    state.setdefault(topic, {"partitions": int(args[args.index("--partitions") + 1]),
                             "replication": int(args[args.index("--replication-factor") + 1]),
                             "configs": configs, "bootstrap": args[args.index("--bootstrap-server") + 1]})
    json.dump(state, open(state_path, "w"))
elif "--describe" in args:
    partitions = state[topic]["partitions"]
    print(f"Topic: {topic}\\tTopicId: x\\tPartitionCount: {partitions}\\tReplicationFactor: 1")
"""


def _run_create_topics(
    tmp_path: Path, env: Mapping[str, str], state: dict[str, Any] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(f"#!{sys.executable}\n{_FAKE_KAFKA_TOPICS}")
    fake.chmod(0o755)
    state_path = tmp_path / "state.json"
    if state is not None:
        state_path.write_text(json.dumps(state))
    result = subprocess.run(
        ["bash", str(CREATE_TOPICS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"], "KAFKA_TOPICS": str(fake), "FAKE_STATE": str(state_path), **env},
    )
    return result, json.loads(state_path.read_text()) if state_path.exists() else {}


def test_the_init_step_creates_the_topics_adpulse_declares(tmp_path: Path, compose: dict[str, Any]) -> None:
    """The script compose runs, against a stand-in kafka-topics.sh: the topics of streams/topics.py, with
    their partition counts and configs (budgets compacted)."""
    init = compose["services"]["kafka-init"]
    assert init["entrypoint"] == ["/bin/bash", "/opt/adpulse/create-topics.sh"]
    assert "./deploy/kafka/create-topics.sh:/opt/adpulse/create-topics.sh:ro" in init["volumes"]
    env = {k: str(v) for k, v in init["environment"].items()}
    result, created = _run_create_topics(tmp_path, env)
    assert result.returncode == 0, result.stderr
    partitions = int(env["ADPULSE_PARTITIONS"])
    expected = {
        f"adpulse.{spec.short}": (spec.partitions, spec.configs)
        for spec in topic_specs(partitions, retention_ms=int(env["TOPIC_RETENTION_MS"]))
    }
    assert {name: (t["partitions"], t["configs"]) for name, t in created.items()} == expected
    assert created["adpulse.budgets"]["configs"]["cleanup.policy"] == "compact"
    assert {t["bootstrap"] for t in created.values()} == {"kafka:9092"}
    # Idempotent: a second run changes nothing and succeeds.
    again, same = _run_create_topics(tmp_path, env)
    assert again.returncode == 0 and same == created


def test_the_init_step_refuses_a_topic_with_another_partition_count(tmp_path: Path) -> None:
    existing = {
        "adpulse.clicks": {"partitions": 2, "replication": 1, "configs": {}, "bootstrap": "kafka:9092"}
    }
    result, _ = _run_create_topics(tmp_path, {"ADPULSE_PARTITIONS": "4"}, existing)
    assert result.returncode == 1
    assert "adpulse.clicks has 2 partitions, adpulse is configured for 4" in result.stderr


# -- secrets ------------------------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|_URL$")
_NOT_SECRET = {"GRAFANA_URL", "ROUTER_PUBLIC_URL"}
#: Container settings named like secrets that are not (the Redis URL's password is checked on its own).
_PLAIN_ENVIRONMENT = {
    "ADPULSE_ROUTER_PUBLIC_URL",
    "ADPULSE_GRAFANA_URL",
    "GF_SERVER_ROOT_URL",
    "ADPULSE_REDIS_URL",
}
#: Shapes of real credentials: none may appear in a committed deploy file.
_CREDENTIALS = [
    re.compile(r"hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/\w+"),
    re.compile(r"open-apis/bot/v2/hook/[0-9a-f]{8}-[0-9a-f]{4}-"),
    re.compile(r"oapi\.dingtalk\.com/robot/send\?access_token=[0-9a-f]{16,}"),
    re.compile(r"qyapi\.weixin\.qq\.com/cgi-bin/webhook/send\?key=[0-9a-f-]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
]


def test_the_env_example_holds_placeholders_only() -> None:
    values = read_env_file(ENV_EXAMPLE)
    secrets = {k: v for k, v in values.items() if _SECRET_NAME.search(k) and k not in _NOT_SECRET}
    assert {"REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ROUTER_TOKEN_KEY"} <= secrets.keys()
    for key, value in secrets.items():
        assert "change-me" in value or re.match(r"https://[\w.-]*example\.com/", value), f"{key}={value}"


def test_no_secret_in_any_committed_deploy_file() -> None:
    files = [COMPOSE, ENV_EXAMPLE, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in _CREDENTIALS:
            assert not pattern.search(text), f"{path.relative_to(ROOT)} holds what looks like a credential"
    # Every secret the compose file hands to a container comes from the environment (.env), not the file.
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if _SECRET_NAME.search(key) and key not in _PLAIN_ENVIRONMENT:
                from_env = re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", str(value))
                assert from_env or str(value).startswith("/run/secrets/"), (
                    f"{name}.{key}: from .env or a secret"
                )
        redis_url = (service.get("environment") or {}).get("ADPULSE_REDIS_URL")
        assert redis_url is None or re.match(r"redis://:\$\{REDIS_PASSWORD[:?}]", redis_url), name
    # The routes example names its URLs and secrets, never holds them.
    for target in yaml.safe_load(ROUTES_EXAMPLE.read_text())["targets"].values():
        for field in ("url", "secret"):
            if field in target:
                assert re.fullmatch(r"\$\{\w+\}", target[field]), target


def test_the_routes_example_is_accepted_by_the_router_with_the_compose_environment(
    compose: dict[str, Any],
) -> None:
    environment = {k: str(v) for k, v in compose["services"]["router"]["environment"].items()}
    targets = yaml.safe_load(ROUTES_EXAMPLE.read_text())["targets"].values()
    used = {
        name
        for target in targets
        for value in target.values()
        for name in re.findall(r"\$\{(\w+)\}", str(value))
    }
    assert used
    assert used <= environment.keys(), f"the router's compose environment lacks {used - environment.keys()}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        **{k: v for k, v in environment.items() if not k.startswith("ADPULSE_")},
    }
    result = subprocess.run(
        [sys.executable, "-m", "adpulse", "router", "--config", str(ROUTES_EXAMPLE), "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


# -- the image ----------------------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore excludes ``path`` (the last matching pattern wins, ``!`` re-includes)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.replace("**/", "")):
            excluded = not negate
    return excluded


def test_the_image_is_multi_stage_slim_and_runs_as_a_user(tmp_path: Path) -> None:
    instructions = dockerfile.parse_file(str(DOCKERFILE))
    stages = [i for i in instructions if i.cmd == "FROM"]
    assert len(stages) >= 2 and all("slim" in stage.value[0] for stage in stages)
    final = instructions[instructions.index(stages[-1]) :]
    users = [i.value[0] for i in final if i.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must run as a user"
    assert not any(i.cmd == "COPY" for i in final), "the final stage installs wheels only, no sources"
    assert [i.value for i in final if i.cmd == "ENTRYPOINT"] == [("adpulse",)]
    # What the build stage copies is what the package needs, and the build context keeps it.
    copied = [
        src
        for i in instructions
        if i.cmd == "COPY" and "--from" not in " ".join(i.flags)
        for src in i.value[:-1]
    ]
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include is not None
    packages = include.group(1)
    assert {p.strip(' "*') for p in packages.split(",")} <= set(copied)
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied:
        assert not _ignored(source, ignore), (
            f"deploy/Dockerfile.dockerignore leaves {source} out of the context"
        )
    assert _ignored(".venv", ignore) and _ignored(".env", ignore) and _ignored(".git", ignore)


def test_the_build_stage_builds_the_package_from_what_it_copies(tmp_path: Path) -> None:
    """The build stage's `pip wheel` on exactly the files it COPYs: the wheel holds every package and the
    `adpulse` command (dependencies are not fetched here: this builds adpulse's own wheel only)."""
    context = tmp_path / "src"
    context.mkdir()
    for instruction in dockerfile.parse_file(str(DOCKERFILE)):
        if instruction.cmd == "COPY" and not instruction.flags:
            for source in instruction.value[:-1]:
                target = context / source
                if (ROOT / source).is_dir():
                    subprocess.run(["cp", "-r", str(ROOT / source), str(target)], check=True)
                else:
                    target.write_bytes((ROOT / source).read_bytes())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("adpulse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("adpulse", "streams", "agents", "alerts", "alerts/router"):
        assert f"{package}/__init__.py" in names, package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "adpulse = adpulse.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
